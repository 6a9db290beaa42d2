"""What made a mask: the options that decide its pixels and outputs, and their fingerprint.

A finished mask is kept (``run --skip-existing``, a job's next run) only when it was made the way it
would be made now. The **recipe** of a scene names everything that decides its outputs: the model
(name, card, and a checksum of its ONNX graph), the class table (``--classes``), the effective
post-processing (the card's defaults plus the user's), the resolution (metres), the patch halo and
blending, and whether probabilities are written. Its **fingerprint** (16 hex digits of a SHA-256 of
the recipe as canonical JSON) is recorded in the output item (``cloudmask:recipe``) and compared by
:func:`cloudmask.jobs.state.check_done`, the one done rule of ``run --skip-existing`` and jobs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from .classes import collapse_names
from .models import ModelCard

__all__ = ["ITEM_KEY", "fingerprint", "graph_digest", "mask_recipe"]

#: The output item's property holding the fingerprint.
ITEM_KEY = "cloudmask:recipe"

_digests: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def graph_digest(path: Path) -> str:
    """SHA-256 (16 hex digits) of a model graph file, cached per path, size and modification time;
    ``""`` when there is no such file (a model without a graph on disk)."""
    try:
        st = Path(path).stat()
    except OSError:
        return ""
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        found = _digests.get(key)
    if found is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        found = h.hexdigest()[:16]
        with _lock:
            _digests[key] = found
    return found


def mask_recipe(card: ModelCard, *, classes: str = "all", postprocess: dict[str, Any] | None = None,
                resolution: float, probabilities: bool = False, margin: int | None = None,
                blend: str = "tukey") -> dict[str, Any]:
    """The recipe of a mask (see the module docstring); ``card`` before ``classes`` folds it;
    ``postprocess`` the effective options (``PostProcess.as_dict()``); ``resolution`` in metres."""
    if classes != "all":
        card = replace(card, classes=collapse_names(card.classes, classes))
    described = card.to_dict()
    described.pop("onnx", None)  # where the graph is does not matter, what it is does
    return {
        "model": card.name,
        "card": described,
        "graph": graph_digest(card.onnx_path),
        "classes": card.class_table.summary(),
        "postprocess": postprocess or {},
        "resolution": round(float(resolution), 6),
        "probabilities": bool(probabilities),
        "margin": margin if card.kind == "segmentation" else None,
        "blend": blend if card.kind == "segmentation" else None,
    }


def fingerprint(recipe: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``recipe`` as canonical JSON."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
