"""ONNX Runtime f32 vs OpenVINO (auto, f32, bf16, int8) on a full tile, side by side in one run (issue 26).

Each case masks the full synthetic tile of ``run.py`` (10,980² px at 10 m, seed 7, 30 % cloud) at each
``--res`` with ``ukis-6b-l2a`` through ``mask_scene_spec``, in its own process (peak RSS = its VmHWM after
the tile), then masks the real labelled patch (``../shared/data/real/ukis-csmask-patch``, ``ukis-6b-l1c``)
with the same backend and precision for cloud/shadow IoU. Cases alternate over ``--repeat`` rounds.
int8 calibrates on the project's calibration set (``cloudmask.metis.calibration``) of the real labelled
patch's 256² windows; a first step quantises each model once (timed; cached on disk like a user's run).
``int8`` is the shipped gate (refused below 99.5 % agreement with f32); ``int8-forced`` runs the quantised
model whatever its agreement, to show what int8 would give. Usage::

    flock /work/coord/bench.lock .venv/bin/python benchmarks/ov_backend.py --work benchmarks/work --res 30 10

Writes ``--json`` (default ``benchmarks/ov_backend.json``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from childproc import call, serve, vm_hwm_mib
from run import compare_masks, make_tile

HERE = Path(__file__).resolve().parent
TILE_MODEL, PATCH_MODEL = "ukis-6b-l2a", "ukis-6b-l1c"
#: case -> (backend, precision, int8 acceptance bar)
CASES: dict[str, tuple[str, str, float]] = {
    "onnxruntime": ("onnxruntime", "auto", 0.995),
    "openvino-auto": ("openvino", "auto", 0.995),
    "openvino-f32": ("openvino", "f32", 0.995),
    "openvino-bf16": ("openvino", "bf16", 0.995),
    "openvino-int8": ("openvino", "int8", 0.995),
    "openvino-int8-forced": ("openvino", "int8", 0.0),
}


def _runners(card: Any, backend: str, precision: str, min_agreement: float, calib: str | None) -> Any:
    from cloudmask.runtime import OvConfig, make_runners

    if backend != "openvino":
        return make_runners(card, backend)
    return make_runners(card, backend, ov=OvConfig(precision=precision, calibration=calib,
                                                   min_agreement=min_agreement))


def child(kind: str, kw: dict[str, Any]) -> dict[str, Any]:
    if kind == "prepare":
        return _prepare(**kw)
    return _case(**kw)


def _prepare(calib: dict[str, str]) -> dict[str, Any]:
    """Quantise each model once (the disk cache keeps it); seconds and agreement with f32."""
    from cloudmask.models import load_model

    out = {}
    for name, directory in calib.items():
        t0 = time.perf_counter()
        (r, *_) = _runners(load_model(name), "openvino", "int8", 0.0, directory)
        out[name] = {"quantise_s": time.perf_counter() - t0, "agreement": r.agreement, "precision": r.precision}
    return out


def _case(item_json: str, out_dir: str, backend: str, precision: str, min_agreement: float, resolution: float,
          calib: dict[str, str], shared: str) -> dict[str, Any]:
    import numpy as np
    import pystac

    from cloudmask.inference import predict_array
    from cloudmask.models import load_model
    from cloudmask.pipeline import mask_scene_spec
    from cloudmask.profiles import scene_spec

    t0 = time.perf_counter()
    card = load_model(TILE_MODEL)
    runners = _runners(card, backend, precision, min_agreement, calib.get(TILE_MODEL))
    load_s = time.perf_counter() - t0
    spec = scene_spec(pystac.Item.from_file(item_json))
    t1 = time.perf_counter()
    res = mask_scene_spec(spec, Path(out_dir), card, runners=runners, resolution=resolution)
    mask_s = time.perf_counter() - t1
    hwm = vm_hwm_mib()
    for r in runners:
        r.close()
    # the real labelled patch (L1C): its own model, same backend and precision
    d = np.load(Path(shared) / "data/real/ukis-csmask-patch/sentinel2.npz")
    truth = np.zeros(d["msk"].shape[:2], np.uint8)
    truth[d["msk"][..., 0] == 4], truth[d["msk"][..., 0] == 0] = 1, 2
    pcard = load_model(PATCH_MODEL)
    pruns = _runners(pcard, backend, precision, min_agreement, calib.get(PATCH_MODEL))
    mask, _, _ = predict_array(np.ascontiguousarray(d["img"].transpose(2, 0, 1)), pcard, runners=pruns)
    iou = [float(((mask == k) & (truth == k)).sum() / ((mask == k) | (truth == k)).sum()) for k in (1, 2)]
    return {"mask": str(res.mask), "mask_s": mask_s, "load_s": load_s, "peak_rss_mib": hwm,
            "precision": getattr(runners[0], "precision", "f32"), "patch_precision": getattr(pruns[0], "precision", "f32"),
            "cloud_iou": iou[0], "shadow_iou": iou[1],
            "stats": res.stats.as_dict()}


def _calibration_sets(work: Path, shared: Path) -> dict[str, str]:
    """The project's calibration set (stratified by class mix) of the labelled patch's real 256² windows."""
    import numpy as np

    from cloudmask.metis.calibration import array_patches, calibration_set
    from cloudmask.models import load_model

    img = np.load(shared / "data/real/ukis-csmask-patch/sentinel2.npz")["img"]
    refl = np.ascontiguousarray(img.transpose(2, 0, 1))
    out = {}
    for name in (TILE_MODEL, PATCH_MODEL):
        d = work / f"calib-{name}"
        if not (d / "manifest.json").exists():
            card = load_model(name)
            calibration_set(array_patches("ukis-csmask-patch", refl, card, stride=128), d, card, samples=9)
        out[name] = str(d)
    return out


def main() -> None:
    if serve(child):
        return
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    ap.add_argument("--size", type=int, default=10980, help="tile size, pixels at 10 m")
    ap.add_argument("--res", type=float, nargs="+", default=[30.0, 10.0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--cases-10m", default=None, help="cases at 10 m (default: --cases)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds at 30 m (cases alternate); 1 at 10 m")
    ap.add_argument("--shared", type=Path, default=HERE.parents[1] / "shared")
    ap.add_argument("--json", type=Path, default=HERE / "ov_backend.json")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CLOUDMASK_CACHE_DIR": str(work / "cache")}  # warm caches, the same for every case
    full = make_tile(work, args.size, 0.0, f"full-{args.size}")
    calib = _calibration_sets(work, args.shared)
    script = str(Path(__file__).resolve())
    t0 = time.perf_counter()
    prep = call(script, ["prepare", {"calib": calib}], env=env)
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "prepare": prep, "prepare_s": time.perf_counter() - t0,
                               "runs": {}}
    import openvino as ov

    results["cpu"] = {"capabilities": list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
                      "openvino": ov.__version__}
    print(json.dumps(results), file=sys.stderr, flush=True)
    for res in args.res:
        names = (args.cases_10m if res < 30 and args.cases_10m else args.cases).split(",")
        rounds = args.repeat if res >= 30 else 1
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for k in range(rounds):
            for name in names:
                backend, precision, bar = CASES[name]
                out = work / "ov-out" / f"{int(res)}m" / name
                t = time.perf_counter()
                r = call(script, ["case", {"item_json": str(full), "out_dir": str(out), "backend": backend,
                                           "precision": precision, "min_agreement": bar, "resolution": res,
                                           "calib": calib, "shared": str(args.shared)}], env=env)
                r["process_s"] = time.perf_counter() - t
                r["round"] = k
                runs[name].append(r)
                print(f"{res:g} m {name}: {r['mask_s']:.1f} s, {r['precision']}", file=sys.stderr, flush=True)
        base = runs.get("onnxruntime")
        rows = []
        for name in names:
            rr = runs[name]
            row = {"case": name, "precision": rr[-1]["precision"],
                   "mask_s": statistics.median(r["mask_s"] for r in rr),
                   "peak_rss_mib": max(r["peak_rss_mib"] for r in rr),
                   "cloud_iou": rr[-1]["cloud_iou"], "shadow_iou": rr[-1]["shadow_iou"],
                   "patch_precision": rr[-1]["patch_precision"]}
            if base:
                row["time_ratio"] = statistics.median(r["mask_s"] / b["mask_s"] for r, b in zip(rr, base, strict=False))
                row["agreement"] = compare_masks(rr[-1]["mask"], base[-1]["mask"])["agreement"]
            rows.append(row)
        results["runs"][f"{res:g}m"] = {"rows": rows, "raw": runs}
        args.json.write_text(json.dumps(results, indent=1))
        print(f"\n{res:g} m, {TILE_MODEL} on the full {args.size}² tile; IoU: {PATCH_MODEL} on the real labelled patch")
        print("| case | precision run | mask s (median) | time / ORT | peak RSS MiB | mask = ORT | cloud IoU | shadow IoU |")
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['case']} | {row['precision']} | {row['mask_s']:.1f} | {row.get('time_ratio', 1.0):.3f} | "
                  f"{row['peak_rss_mib']:.0f} | {100 * row.get('agreement', 1.0):.2f} % | {row['cloud_iou']:.3f} | "
                  f"{row['shadow_iou']:.3f} |", flush=True)
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
