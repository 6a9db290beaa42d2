"""The Metis compiler's ONNX rules, as package data in cloudmask's own schema.

``cloudmask/data/metis_ops.json`` is *derived* from the facts file ``shared/metis/onnx-ops.json``
(gathered from the Axelera Voyager SDK docs) by :func:`derive_rules`: conditions are parsed and
written back in canonical Python form, levels become ``always``/``conditional``/``undocumented``, the
opset range and batch rule become model-level rules, and the "not accelerated" examples become a
``host_only`` map with their qualifier. A test re-derives the file from the shared facts so the two
cannot drift. Regenerate with ``python -m cloudmask.metis.rules PATH/TO/onnx-ops.json``.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ModelError

SCHEMA = "cloudmask.metis-ops/1"
DATA_FILE = "metis_ops.json"
SHARED_ORIGIN = (
    "shared/metis/onnx-ops.json (Axelera Voyager SDK docs v1.6-v1.8, see shared/metis/METIS.md): "
)


@dataclass(frozen=True)
class OpRule:
    """How the compiler treats one operator.

    ``when``: ``always`` (accelerated unconditionally), ``conditional`` (accelerated when every
    ``all_of`` and at least one ``any_of`` condition holds), ``undocumented`` (accelerated under
    conditions the docs do not spell out). ``min_opset``: lowest model opset the support applies to.
    """

    op: str
    when: str
    min_opset: int
    all_of: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rules:
    """Model-level rules plus one :class:`OpRule` per accelerated operator."""

    opset_min: int
    opset_max: int
    batch: int
    static_shapes: bool
    ops: Mapping[str, OpRule]
    host_only: Mapping[str, str] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)


def canonical(expr: str) -> str:
    """A condition in canonical Python form (parsed and unparsed), so formatting cannot matter."""
    tree = ast.parse(expr.strip(), mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            raise ValueError(f"condition may not use dunder attributes: {expr!r}")
    return ast.unparse(tree)


def derive_rules(shared: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the shared ``onnx-ops.json`` facts into cloudmask's rule schema (a JSON-able dict)."""
    what = str(shared.get("what", ""))
    m = re.search(r"opsets?\s+(\d+)\s*-\s*(\d+)", what)
    opset_min, opset_max = (int(m.group(1)), int(m.group(2))) if m else (1, 17)
    ops: dict[str, Any] = {}
    for name, spec in sorted(shared["ops"].items()):
        all_of = [canonical(c) for c in spec.get("all_of", [])]
        any_of = [canonical(c) for c in spec.get("any_of", [])]
        if spec["level"] == "supported":
            when = "always"
        elif all_of or any_of:
            when = "conditional"
        else:
            when = "undocumented"
        rule: dict[str, Any] = {"when": when, "min_opset": int(spec.get("since_opset", opset_min))}
        if all_of:
            rule["all_of"] = all_of
        if any_of:
            rule["any_of"] = any_of
        ops[name] = rule
    host_only: dict[str, str] = {}
    for item in shared.get("not_accelerated_examples", []):
        m2 = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", item)
        if m2:
            host_only[m2.group(1)] = (m2.group(2) or "always").strip()
    return {
        "schema": SCHEMA,
        "source": {
            "facts": SHARED_ORIGIN + str(shared.get("source", "")),
            "docs": str(shared.get("source", "")),
        },
        "semantics": (
            "ops[op].when: always = accelerated; conditional = accelerated when all of all_of and one of "
            "any_of (if given) hold; undocumented = accelerated under conditions the docs leave open. "
            "Conditions are Python expressions over the node's attributes (ONNX defaults applied) and "
            "inputs by ONNX schema name (A, B, X, W, data: tensors with .shape/.is_constant/.size; "
            "constant inputs such as pads, axes, roi, min, max: values; Y: first output; inputs: all). "
            "An op not in ops is not accelerated: the compiler may move it to the host at the head or "
            "tail of the graph; in the middle it fails compilation. host_only lists ops the docs name "
            "as not accelerated, with the qualifier the docs give."
        ),
        "model": {"opset_min": opset_min, "opset_max": opset_max, "batch": 1, "static_shapes": True},
        "ops": ops,
        "host_only": host_only,
    }


def rules_from_dict(raw: Mapping[str, Any]) -> Rules:
    """Build :class:`Rules` from the schema :func:`derive_rules` writes."""
    if raw.get("schema") != SCHEMA:
        raise ModelError(f"Metis rules file has schema {raw.get('schema')!r}, expected {SCHEMA!r}")
    model = raw["model"]
    ops = {
        name: OpRule(
            op=name,
            when=spec["when"],
            min_opset=int(spec["min_opset"]),
            all_of=tuple(spec.get("all_of", ())),
            any_of=tuple(spec.get("any_of", ())),
        )
        for name, spec in raw["ops"].items()
    }
    return Rules(
        opset_min=int(model["opset_min"]),
        opset_max=int(model["opset_max"]),
        batch=int(model["batch"]),
        static_shapes=bool(model["static_shapes"]),
        ops=ops,
        host_only=dict(raw.get("host_only", {})),
        source=dict(raw.get("source", {})),
    )


def packaged_rules_dict() -> dict[str, Any]:
    """The raw JSON of the rules shipped in ``cloudmask/data``."""
    text = resources.files("cloudmask").joinpath("data", DATA_FILE).read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def load_rules(path: Path | None = None) -> Rules:
    """The packaged rules, or those in ``path`` (a file in this schema)."""
    raw = json.loads(Path(path).read_text()) if path is not None else packaged_rules_dict()
    return rules_from_dict(raw)


def main(argv: list[str] | None = None) -> int:
    """Regenerate the package data from a shared ``onnx-ops.json``: ``python -m cloudmask.metis.rules F``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m cloudmask.metis.rules PATH/TO/onnx-ops.json\n")
        return 2
    derived = derive_rules(json.loads(Path(args[0]).read_text()))
    out = Path(str(resources.files("cloudmask").joinpath("data", DATA_FILE)))
    out.write_text(json.dumps(derived, indent=1) + "\n")
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
