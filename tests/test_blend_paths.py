"""The blender's fast paths give what the plain numpy forms give."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cloudmask.engine.blender import PatchBlender, argmax0
from cloudmask.engine.messages import PatchTask, RowCut
from cloudmask.engine.stats import StreamStats
from cloudmask.grid import PatchLayout, blend_weights
from cloudmask.models import load_model


def test_argmax0_equals_numpy_with_ties_to_the_lower_index():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, (4, 30, 40)).astype(np.float32)  # many ties
    assert np.array_equal(argmax0(a), np.argmax(a, axis=0).astype(np.uint8))
    assert argmax0(a).dtype == np.uint8


def _blend(card, probabilities: bool, scores: np.ndarray) -> list:
    lay = PatchLayout(64, 64, 32, 4)
    b = PatchBlender(lay, card, blend_weights(32, 4), probabilities, StreamStats())
    blocks = []
    for i in range(lay.n_rows):
        r0, r1 = lay.block_rows(i)
        blocks += b.cut(RowCut(i, lay.n_cols, tuple(range(lay.n_cols)), np.ones((r1 - r0, 64), bool)))
    k = 0
    for i in range(lay.n_rows):
        for j in range(lay.n_cols):
            blocks += b.feed([PatchTask(i, j)], scores[k : k + 1])
            k += 1
    return blocks


def test_fused_softmax_blend_equals_softmax_then_weights():
    logits = load_model("ukis-6b-l2a")
    assert logits.output == "logits"
    rng = np.random.default_rng(2)
    lay = PatchLayout(64, 64, 32, 4)
    scores = rng.normal(0, 3, (lay.n_patches, 3, 32, 32)).astype(np.float32)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    as_probs = replace(logits, output="probabilities")  # the plain path on the same probabilities
    for want in (False, True):
        fused, plain = _blend(logits, want, scores), _blend(as_probs, want, probs)
        assert len(fused) == len(plain) == lay.n_rows
        for f, p in zip(fused, plain, strict=True):
            assert np.array_equal(f.classes, p.classes)
            if want:
                assert np.abs(f.probabilities.astype(int) - p.probabilities.astype(int)).max() <= 1
