"""Accuracy on the real labelled patch (../shared/data/real/ukis-csmask-patch) and agreement with CSmask.

    python benchmarks/real_patch.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ukis_csmask.mask import CSmask

from cloudmask.inference import predict

BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = ap.parse_args()
    d = np.load(args.shared / "data/real/ukis-csmask-patch/sentinel2.npz")
    img, msk = d["img"], d["msk"][..., 0]
    truth = np.zeros(msk.shape, np.uint8)
    truth[msk == 4], truth[msk == 0] = 1, 2
    ours = predict(img, model="ukis-6b-l1c")
    ref = CSmask(img, band_order=BANDS, product_level="l1c").csm[..., 0]
    for name, m in (("cloudmask", ours), ("CSmask", ref)):
        iou = [((m == k) & (truth == k)).sum() / ((m == k) | (truth == k)).sum() for k in (1, 2)]
        print(f"{name:10s} cloud IoU {iou[0]:.3f}  shadow IoU {iou[1]:.3f}")
    print(f"agreement cloudmask vs CSmask {100 * (ours == ref).mean():.2f} %")


if __name__ == "__main__":
    main()
