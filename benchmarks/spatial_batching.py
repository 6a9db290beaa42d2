"""Spatial batching: a segmentation model compiled at 1, 4 and 9 patches per call (256², 512², 768² input).

    python benchmarks/spatial_batching.py [--tile benchmarks/work/full-10980/tile/tile.json] [--crop 1536]

For each ``k`` the model is exported as ``cloudmask metis export --patches-per-call k`` would (static
graph at ``sqrt(k) * 256`` px, same weights) and run with ONNX Runtime through the engine (halo 26 px,
raised-cosine blending). Measured: cloud/shadow IoU against the human labels of the real patch
(``../shared/data/real/ukis-csmask-patch``), agreement with the ``k = 1`` mask, seam index (1.0 =
invisible core borders) and model calls. The ukis U-Nets' EfficientNet encoders hold 32
squeeze-and-excitation blocks (``GlobalAveragePool``): on a larger input each block averages over
more of the scene, so the output changes. 9 patches (768²) stays under the 1504² input that failed Metis's L1
tiling (METIS.md). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cloudmask.engine import StreamConfig
from cloudmask.grid import PatchLayout, seam_index
from cloudmask.inference import predict_array
from cloudmask.metis.export import export
from cloudmask.models import load_model

HERE = Path(__file__).resolve().parent


def real(shared: Path) -> tuple[np.ndarray, np.ndarray, str]:
    d = np.load(shared / "data/real/ukis-csmask-patch/sentinel2.npz")
    msk = d["msk"][..., 0]
    truth = np.zeros(msk.shape, np.uint8)
    truth[msk == 4], truth[msk == 0] = 1, 2
    return np.moveaxis(d["img"], -1, 0).copy(), truth, "ukis-6b-l1c"


def synthetic(tile: Path, crop: int) -> tuple[np.ndarray, None, str]:
    import pystac

    from cloudmask.profiles import scene_spec
    from cloudmask.reader import RasterSource

    spec = scene_spec(pystac.Item.from_file(str(tile)))
    card = load_model("ukis-6b-l2a")
    src = RasterSource(spec, card.bands, spec.geobox(30.0))
    refl = src.read_rows(0, min(crop, src.shape[0]))[:, :, :crop]
    src.close()
    return refl, None, "ukis-6b-l2a"


def rows_for(name: str, refl: np.ndarray, truth: np.ndarray | None, model: str, work: Path) -> list[str]:
    out, base = [], None
    for k in (1, 4, 9):
        card = export(model, work / f"{model}-{k}", patches_per_call=k).card if k > 1 else load_model(model)
        t0 = time.perf_counter()
        mask, _, stats = predict_array(refl, card, config=StreamConfig(margin=26, blend="tukey"))
        dt = time.perf_counter() - t0
        base = mask if base is None else base
        lay = PatchLayout(refl.shape[1], refl.shape[2], card.patch_size, 26)
        si = seam_index(mask, lay, valid=mask != 255)
        iou = "–"
        if truth is not None:
            ious = [((mask == c) & (truth == c)).sum() / ((mask == c) | (truth == c)).sum() for c in (1, 2)]
            iou = f"{ious[0]:.3f} / {ious[1]:.3f}"
        out.append(f"| {name} | {k} | {card.patch_size}² | {iou} | {100 * (mask == base).mean():.2f} % | {si:.2f} | "
                   f"{stats.calls} | {dt:.1f} |")
        print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=HERE.parents[1] / "shared")
    ap.add_argument("--tile", type=Path, default=HERE / "work/full-10980/tile/tile.json")
    ap.add_argument("--crop", type=int, default=1536, help="synthetic: top-left crop, pixels at 30 m")
    args = ap.parse_args()
    print("| data | patches per call | model input | cloud / shadow IoU | agreement with 1 | seam index | calls | s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        rows_for("real ukis patch 512²", *real(args.shared), Path(tmp))
        if args.tile.exists():
            rows_for(f"synthetic {args.crop}² px", *synthetic(args.tile, args.crop), Path(tmp))
        else:
            print(f"(no synthetic tile at {args.tile}: run benchmarks/run.py first)")


if __name__ == "__main__":
    main()
