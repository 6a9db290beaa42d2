"""Runner input/output shapes per model kind (the contract in :class:`~cloudmask.runtime.base.Runner`)."""

from __future__ import annotations

from ..errors import ModelCardError
from ..models import ModelCard

#: Pixels per call of a pixel model whose graph has a dynamic ``N`` (ONNX Runtime; a 256 x 256 fold).
PIXEL_BLOCK = 65_536


def fold_of(card: ModelCard) -> tuple[int, int] | None:
    """``(H, W)`` of a folded pixel model (card field ``fold``, written by ``cloudmask metis export``), else None."""
    fold = card.extra.get("fold")
    if fold is None:
        return None
    try:
        h, w = (int(v) for v in fold)
    except (TypeError, ValueError) as err:
        raise ModelCardError(f"model card '{card.name}': fold must be [height, width], got {fold!r}") from err
    if card.kind != "pixel" or h < 1 or w < 1:
        raise ModelCardError(f"model card '{card.name}': fold [{h}, {w}] needs kind: pixel and positive sizes")
    return h, w


def stack_of(card: ModelCard) -> int | None:
    """Patches per call of a patch-stacked classifier (card field ``patches_per_call``, written by
    ``cloudmask metis export --patches-per-call k``), else None.

    Its runner takes ``[1, k*C, p, p]`` (patch ``i`` in channels ``i*C .. (i+1)*C - 1``: the memory of a
    ``[k, C, p, p]`` batch) and returns ``[1, k*K, 1, 1]`` (patch ``i``'s scores in channels ``i*K ..``).
    """
    k = card.extra.get("patches_per_call")
    if k is None:
        return None
    try:
        k = int(k)
    except (TypeError, ValueError) as err:
        raise ModelCardError(f"model card '{card.name}': patches_per_call must be a whole number, got {k!r}") from err
    if card.kind != "patch-classifier" or k < 1:
        raise ModelCardError(f"model card '{card.name}': patches_per_call {k} needs kind: patch-classifier and k >= 1 "
                             "(segmentation models exported with --patches-per-call have a larger patch_size instead)")
    return k


def runner_shapes(card: ModelCard, batch: int = 1, block: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(input shape, output shape)`` of a runner for ``card``: ``batch`` patches, or ``block`` pixels."""
    c, k, p = card.n_bands, len(card.classes), card.patch_size
    if card.kind == "pixel":
        fold = fold_of(card)
        if fold is not None:
            return (1, c, *fold), (1, k, *fold)
        n = block or PIXEL_BLOCK
        return (n, c), (n, k)
    if card.kind == "patch-classifier":
        stack = stack_of(card)
        if stack is not None:
            return (1, stack * c, p, p), (1, stack * k, 1, 1)
        return (batch, c, p, p), (batch, k)
    return (batch, c, p, p), (batch, k, p, p)
