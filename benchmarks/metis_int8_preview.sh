#!/usr/bin/env bash
# Reproduces the README's "Metis INT8 preview" table (real data from ../shared; ~2 min on 2 cores).
#   bash benchmarks/metis_int8_preview.sh [WORKDIR]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
shared="${CLOUDMASK_SHARED:-$repo/../shared}"
work="${1:-$repo/benchmarks/work/int8}"
py="$repo/.venv/bin/python"
mkdir -p "$work" && cd "$work"
SHARED="$shared" "$py" - <<'PY'
"""Calibration: 50 patches of the real 13-band s2cloudless L1C array; held out: the labelled ukis patch."""
import os

import numpy as np

from cloudmask.metis import export
from cloudmask.metis.calibration import array_patches, calibration_set, write_patch_set

shared = os.environ["SHARED"]
card = export("ukis-6b-l1c", "export-6b-l1c").card
s2 = np.load(f"{shared}/data/real/s2cloudless-l1c-arrays/input_arrays.npz")["s2_im"][0]
refl = s2[..., [1, 2, 3, 7, 11, 12]].transpose(2, 0, 1)  # blue green red nir swir16 swir22
calibration_set(array_patches("s2cloudless", refl, card, stride=64), "calib", card, samples=50)
d = np.load(f"{shared}/data/real/ukis-csmask-patch/sentinel2.npz")
msk = d["msk"][..., 0]
lab = np.zeros(msk.shape, np.uint8)
lab[msk == 4] = 1
lab[msk == 0] = 2
write_patch_set("heldout", ((p, lab[p.window[0]:p.window[0] + 256, p.window[1]:p.window[1] + 256])
                            for p in array_patches("ukis-csmask-test", d["img"].transpose(2, 0, 1), card)), card.name)
PY
"$repo/.venv/bin/cloudmask" metis int8-preview --model export-6b-l1c/card.yaml --calibration calib --held-out heldout --out int8
"$repo/.venv/bin/cloudmask" metis int8-preview --model export-6b-l1c/card.yaml --calibration calib --held-out heldout --per-channel --out int8-per-channel
