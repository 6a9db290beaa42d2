"""Halo and blending vs seam index vs redundant compute, on the synthetic tile and the real patch.

    python benchmarks/seams.py [--tile benchmarks/work/full-10980/tile/tile.json] [--crop 1536]

Seam index (cloudmask.grid.seam_index): rate of class changes across patch-core borders divided by the
rate across lines through patch centres; 1.0 = invisible borders. Redundancy = pixels sent to the model
per scene pixel. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cloudmask.engine import StreamConfig
from cloudmask.grid import PatchLayout, seam_index
from cloudmask.inference import predict_array
from cloudmask.models import load_model

SETTINGS = [(0, "hard"), (16, "hard"), (16, "tukey"), (26, "tukey"), (32, "hard"), (32, "tukey"),
            (48, "tukey"), (64, "tukey")]


def synthetic(tile: Path, crop: int) -> tuple[np.ndarray, str]:
    import pystac

    from cloudmask.profiles import scene_spec
    from cloudmask.reader import RasterSource

    spec = scene_spec(pystac.Item.from_file(str(tile)))
    card = load_model("ukis-6b-l2a")
    src = RasterSource(spec, card.bands, spec.geobox(30.0))
    refl = src.read_rows(0, min(crop, src.shape[0]))[:, :, :crop]
    src.close()
    return refl, "ukis-6b-l2a"


def real(shared: Path) -> tuple[np.ndarray, str]:
    img = np.load(shared / "data/real/ukis-csmask-patch/sentinel2.npz")["img"]
    return np.moveaxis(img, -1, 0).copy(), "ukis-6b-l1c"


def table(name: str, refl: np.ndarray, model: str) -> list[str]:
    card = load_model(model)
    rows = []
    for margin, blend in SETTINGS:
        t0 = time.perf_counter()
        mask, _, stats = predict_array(refl, card, config=StreamConfig(margin=margin, blend=blend))  # type: ignore[arg-type]
        dt = time.perf_counter() - t0
        lay = PatchLayout(refl.shape[1], refl.shape[2], card.patch_size, margin)
        si = seam_index(mask, lay, valid=mask != 255)
        rows.append(f"| {name} | {margin} | {blend} | {lay.stride} | {si:.3f} | {lay.redundancy():.2f} | "
                    f"{stats.patches} | {dt:.1f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tile", type=Path, default=Path(__file__).parent / "work/full-10980/tile/tile.json")
    ap.add_argument("--crop", type=int, default=1536, help="pixels at 30 m of the tile's top-left corner")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = ap.parse_args()
    print("| scene | margin px | blend | stride px | seam index | redundancy | patches | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    table(f"synthetic {args.crop}² px", *synthetic(args.tile, args.crop))
    if args.shared.exists():
        table("real ukis patch 512²", *real(args.shared))


if __name__ == "__main__":
    main()
