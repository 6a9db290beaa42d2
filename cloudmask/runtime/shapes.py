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
        return (batch, c, p, p), (batch, k)
    return (batch, c, p, p), (batch, k, p, p)
