"""Pixels per second for a pixel model at one pixel per device call vs folded (65,536 per call).

The example spectral MLP (``cloudmask/data/models/spectral-mlp``) on real L1C pixels (the s2cloudless
test array, 856 x 512 px, 10 bands), through the streaming engine (read from memory, normalise, pack
valid pixels, device, scatter back) with an **emulated device** of fixed latency per call (default
1 ms): only the host pipeline and the per-call latency count, as on a device whose compute is
negligible next to its call overhead.

* one pixel per call (``[1, 10]``, batch 1 as the Metis compiler takes it): measured on a sample of
  ``--sample`` pixels (a window of the array) and extrapolated to a 10,980² tile;
* folded ``[1, 10, 256, 256]``: measured on the whole array, tiled ``--repeat`` times down the rows.

Both with 1 and 4 device instances (a Metis has four cores). Prints a Markdown table.
Run: ``.venv/bin/python benchmarks/pixel_fold.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cloudmask.engine import ArraySink, ArraySource, StreamConfig, stream_scene
from cloudmask.models import load_model
from cloudmask.runtime import EmulatedRunner

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "real" / "s2cloudless-l1c-arrays" / "input_arrays.npz"
CARD = ROOT / "cloudmask" / "data" / "models" / "spectral-mlp" / "card.yaml"
BANDS = [0, 1, 3, 4, 7, 8, 9, 10, 11, 12]
TILE = 10_980 * 10_980


def measure(refl: np.ndarray, card, shape_card, block: int | None, instances: int, latency: float) -> dict:
    runners = [EmulatedRunner.for_card(shape_card, latency_s=latency, block=block) for _ in range(instances)]
    h, w = refl.shape[1:]
    t0 = time.perf_counter()
    stats = stream_scene(ArraySource(refl), card, runners, ArraySink(h, w), StreamConfig(queue_batches=8))
    wall = time.perf_counter() - t0
    return {"pixels": stats.pixels, "calls": stats.calls, "seconds": wall, "pps": stats.pixels / wall,
            "per_call": stats.per_call, "stats": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=1.0)
    ap.add_argument("--sample", type=int, default=2_000, help="pixels measured at one pixel per call")
    ap.add_argument("--repeat", type=int, default=4, help="copies of the array stacked for the folded run")
    args = ap.parse_args()
    lat = args.latency_ms / 1000.0
    card = load_model(CARD)
    folded = card.with_onnx(card.onnx_path, extra={**card.extra, "fold": [256, 256]})
    img = np.load(DATA)["s2_im"][0][:, :, BANDS]  # (856, 512, 10)
    refl = np.ascontiguousarray(np.moveaxis(img, -1, 0))
    sample = refl[:, : max(1, args.sample // 50), :50].copy()
    big = np.concatenate([refl] * args.repeat, axis=1)
    rows = []
    for instances in (1, 4):
        one = measure(sample, card, card, 1, instances, lat)
        fold = measure(big, card, folded, None, instances, lat)
        rows.append((instances, one, fold))
    print(f"emulated device {args.latency_ms:g} ms/call; sample {sample.shape[1] * sample.shape[2]:,} px at 1 px/call, "
          f"folded run {big.shape[1] * big.shape[2]:,} px\n")
    print("| instances | pixels per call | calls | pixels | seconds | pixels/s | 10,980² tile (extrapolated) |")
    print("|---|---|---|---|---|---|---|")
    for instances, one, fold in rows:
        for r in (one, fold):
            tile_s = TILE / r["pps"]
            tile = f"{tile_s / 3600:.1f} h" if tile_s > 3600 else f"{tile_s:.0f} s"
            print(f"| {instances} | {r['per_call']:,} | {r['calls']:,} | {r['pixels']:,} | {r['seconds']:.2f} | "
                  f"{r['pps']:,.0f} | {tile} |")
    for instances, _, fold in rows:
        print(f"\nfolded, {instances} instance(s):\n{fold['stats'].table()}")


if __name__ == "__main__":
    main()
