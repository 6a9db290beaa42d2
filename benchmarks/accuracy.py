"""Accuracy of every built-in model on every real labelled set in ../shared, fp32 and int8 (Metis preview).

    .venv/bin/python benchmarks/accuracy.py [--shared ../shared] [--work benchmarks/work/accuracy]
                                             [--models a,b] [--no-int8] [--json benchmarks/accuracy.json]

Reference sets (all real Sentinel-2):

* ``ukis patch``: 512 x 512 px L1C with human cloud + shadow labels (ukis-csmask test patch; 6 bands).
* ``s2cloudless array``: 856 x 512 px, 13-band L1C; reference = s2cloudless's own cloud mask (a model
  output: a consistency check, cloud vs not).
* ``On Cloud N chips``: the five L2A demo chips (4 bands); reference = the chips' model-ensemble cloud
  prediction (a model output, cloud vs not). Masked through the full pipeline at the model's resolution
  and scored on the chips' 10 m grid with :func:`cloudmask.evaluate.evaluate` (pooled over the chips).

The array sets run at their own pixel size through :func:`cloudmask.inference.predict`. Scores come
from :mod:`cloudmask.evaluate` (classes a reference lacks are folded: shadow counts as not cloud).
int8: ``cloudmask metis int8-preview``'s machinery (Metis export, static QDQ INT8 with ONNX Runtime,
per-tensor weights, minmax), calibrated on 50 patches of the s2cloudless array -- so that set's int8
row is not independent of the calibration. Models without a quantizable graph (s2cloudless is a tree
ensemble) have no int8 row. Prints a markdown table; writes every number to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cloudmask.evaluate import Scores, evaluate, score_arrays
from cloudmask.inference import predict
from cloudmask.models import ModelCard, list_models, load_model
from cloudmask.sample import demo_catalog

ROOT = Path(__file__).resolve().parents[1]
S2_BANDS = ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09",
            "cirrus", "swir16", "swir22"]
UKIS_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
log = logging.getLogger("accuracy")


def _ukis(shared: Path) -> dict[str, Any]:
    d = np.load(shared / "data/real/ukis-csmask-patch/sentinel2.npz")
    return {"name": "ukis patch", "level": "l1c", "reference": "human labels", "data": d["img"],
            "bands": UKIS_BANDS, "ref": d["msk"][..., 0], "classes": "0=shadow,1=clear,2=clear,3=clear,4=cloud"}


def _s2cloudless(shared: Path) -> dict[str, Any]:
    d = np.load(shared / "data/real/s2cloudless-l1c-arrays/input_arrays.npz")
    return {"name": "s2cloudless array", "level": "l1c", "reference": "s2cloudless mask (model output)",
            "data": d["s2_im"][0], "bands": S2_BANDS, "ref": d["cl_mask"][0].astype(np.uint8),
            "classes": "0=clear,1=cloud"}


def _int8_card(card: ModelCard, shared: Path, work: Path) -> ModelCard | None:
    """The int8 QDQ model of ``card`` (cached in ``work``), or None when it has no quantizable graph."""
    if card.kind != "segmentation":
        log.info("%s: %s model, no int8 graph", card.name, card.kind)
        return None
    from cloudmask.metis import export
    from cloudmask.metis.calibration import array_patches, calibration_set
    from cloudmask.metis.int8 import int8_preview

    out = work / card.name
    card_path = out / "int8" / "card.yaml"
    if not card_path.is_file():
        fp32 = export(card, out / "fp32").card
        s2 = np.load(shared / "data/real/s2cloudless-l1c-arrays/input_arrays.npz")["s2_im"][0]
        refl = s2[..., [S2_BANDS.index(b) for b in fp32.bands]].transpose(2, 0, 1)
        calibration_set(array_patches("s2cloudless", refl, fp32, stride=64), out / "calib", fp32, samples=50)
        int8_preview(fp32, out / "calib", out_dir=out / "int8")
    return load_model(card_path)


def _array_scores(card: ModelCard, ds: dict[str, Any]) -> Scores:
    data = ds["data"][..., [ds["bands"].index(b) for b in card.bands]]
    pred = predict(np.ascontiguousarray(data, np.float32), card)
    return score_arrays(pred, ds["ref"], reference_classes=ds["classes"], name=ds["name"])


def _chip_scores(card: ModelCard, work: Path) -> Scores:
    from cloudmask.api import mask_scene
    from cloudmask.profiles import scene_spec
    from cloudmask.stac import search

    total: Scores | None = None
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for item in search(str(demo_catalog())):
            res = mask_scene(scene_spec(item), Path(tmp), card, quicklook=False, catalog=False)
            s = evaluate(res.mask, item.assets["ensemble"].get_absolute_href() or "", reference_classes="0=clear,1=cloud")
            total = s if total is None else total + s
    assert total is not None
    total.name = "On Cloud N chips"
    return total


def _row(model: str, precision: str, ds_name: str, reference: str, s: Scores | None, note: str = "",
         seconds: float = 0.0) -> dict[str, Any]:
    row: dict[str, Any] = {"set": ds_name, "reference": reference, "model": model, "precision": precision}
    if s is None:
        return {**row, "note": note}
    pc = s.per_class()
    row.update({
        "cloud_iou": pc["cloud"]["iou"], "cloud_f1": pc["cloud"]["f1"],
        "shadow_iou": pc["shadow"]["iou"] if "shadow" in pc else None,
        "accuracy": s.overall_accuracy, "pixels": s.pixels, "seconds": round(seconds, 1), "note": note,
        "scores": s.to_dict(),
    })
    return row


def run(shared: Path, work: Path, models: list[str] | None, int8: bool) -> list[dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    arrays = [_ukis(shared), _s2cloudless(shared)]
    chips = {"name": "On Cloud N chips", "level": "l2a", "reference": "ensemble prediction (model output)",
             "bands": ["blue", "green", "red", "nir"]}
    rows: list[dict[str, Any]] = []
    for card in list_models():
        if models and card.name not in models:
            continue
        variants: list[tuple[str, ModelCard | None, str]] = [("fp32", card, "")]
        if int8:
            q = _int8_card(card, shared, work)
            variants.append(("int8", q, "" if q is not None else f"no int8 graph ({card.kind} model)"))
        for ds in [*arrays, chips]:
            missing = [b for b in card.bands if b not in ds["bands"]]
            level = "" if card.product_level == ds["level"] else f"{card.product_level.upper()} model on " \
                                                                 f"{ds['level'].upper()} data"
            for precision, c, why in variants:
                if missing:
                    rows.append(_row(card.name, precision, ds["name"], ds["reference"], None,
                                     f"n/a: the set lacks {', '.join(missing)}"))
                    continue
                if c is None:
                    rows.append(_row(card.name, precision, ds["name"], ds["reference"], None, why))
                    continue
                t0 = time.perf_counter()
                fn: Callable[[], Scores] = (lambda c=c: _chip_scores(c, work)) if ds is chips else \
                    (lambda c=c, ds=ds: _array_scores(c, ds))
                s = fn()
                note = level + ("; int8 calibrated on this set" if precision == "int8" and ds is arrays[1] else "")
                rows.append(_row(card.name, precision, ds["name"], ds["reference"], s, note.strip("; "),
                                 time.perf_counter() - t0))
                log.info("%s %s on %s: %s", card.name, precision, ds["name"], rows[-1].get("cloud_iou"))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    out = ["| set | reference | model | precision | cloud IoU | cloud F1 | shadow IoU | accuracy | note |",
           "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "cloud_iou" not in r:
            if r["note"].startswith("n/a") and r["precision"] == "int8":
                continue  # one n/a line per model and set is enough
            out.append(f"| {r['set']} | {r['reference']} | {r['model']} | {r['precision']} | – | – | – | – | "
                       f"{r['note']} |")
            continue
        out.append(f"| {r['set']} | {r['reference']} | {r['model']} | {r['precision']} | {pct(r['cloud_iou'])} | "
                   f"{pct(r['cloud_f1'])} | {pct(r['shadow_iou'])} | {pct(r['accuracy'])} | {r['note']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "accuracy")
    ap.add_argument("--models", default=None, help="comma-separated model names (default: every built-in)")
    ap.add_argument("--no-int8", dest="int8", action="store_false", help="fp32 only")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "accuracy.json")
    ap.add_argument("--table-only", action="store_true", help="print the table of an existing --json, run nothing")
    args = ap.parse_args()
    if args.table_only:
        print(markdown(json.loads(args.json.read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("cloudmask").setLevel(logging.ERROR)  # level-mismatch warnings are in the notes
    rows = run(args.shared.resolve(), args.work.resolve(), args.models.split(",") if args.models else None,
               args.int8)
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
