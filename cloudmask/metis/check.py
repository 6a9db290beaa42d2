"""Check an ONNX graph against the Metis compiler's rules, node by node.

Each node is evaluated against :mod:`cloudmask.metis.rules` (op support, opset, per-op attribute and
shape conditions); the model as a whole against the opset range, batch 1 and static shapes. A node that
would not be accelerated is placed by data flow: ``head`` (no accelerated op upstream: the compiler can
leave it to the host before the device), ``tail`` (no accelerated op downstream: host after the device),
``middle`` (accelerated ops on both sides: compilation is expected to fail). Nodes that depend only on
constants are marked ``foldable`` (constant folding, as ``cloudmask metis export`` does, removes them).
"""

from __future__ import annotations

import ast
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from . import graph as G
from .rules import OpRule, Rules, load_rules

if TYPE_CHECKING:  # onnx is imported where used: importing it takes about a second
    import onnx

log = logging.getLogger(__name__)

#: Inputs bound as tensors (shape, is_constant, size); all other constant inputs are bound by value.
TENSOR_INPUTS = frozenset({"A", "B", "X", "W", "data", "input", "slope", "inputs", "Y"})
#: Ops that carry data only; never reported.
DATA_OPS = frozenset({"Constant"})


@dataclass(frozen=True)
class Tensor:
    """What a rule condition may ask of a tensor: its shape, whether it is constant, its size."""

    shape: tuple[Any, ...] | None
    is_constant: bool
    value: np.ndarray | None = None

    @property
    def size(self) -> int:
        if self.value is not None:
            return int(self.value.size)
        return int(np.prod([d for d in self.shape or () if isinstance(d, int)]))

    @property
    def ndim(self) -> int:
        return len(self.shape or ())


@dataclass(frozen=True)
class Violation:
    """A failed rule: ``rule`` names it (e.g. ``unsupported_op``, ``all_of``), ``detail`` says which."""

    rule: str
    detail: str


@dataclass(frozen=True)
class NodeResult:
    """The verdict for one node."""

    index: int
    name: str
    op: str
    accelerated: bool
    position: str = ""  # head | middle | tail, for nodes that are not accelerated
    foldable: bool = False
    violations: tuple[Violation, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableRow:
    """One line of the summary table: an op, how many nodes, how many accelerated, what fails."""

    op: str
    count: int
    accelerated: int
    violations: int
    positions: dict[str, int]
    rules: tuple[str, ...]


@dataclass
class CheckReport:
    """Everything :func:`check` found; ``compilable`` is the verdict."""

    path: Path
    opset: int
    input_shapes: dict[str, list[Any]]
    nodes: list[NodeResult]
    model_violations: list[Violation] = field(default_factory=list)

    @property
    def violations(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.violations]

    @property
    def middle_violations(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.violations and n.position == "middle"]

    @property
    def ok(self) -> bool:
        """No violation at all: every node accelerated and the model-level rules hold."""
        return not self.model_violations and not self.violations

    @property
    def compilable(self) -> bool:
        """Model-level rules hold and no node in the middle of the graph falls off the device."""
        return not self.model_violations and not self.middle_violations

    def table(self) -> list[TableRow]:
        by_op: dict[str, list[NodeResult]] = defaultdict(list)
        for n in self.nodes:
            by_op[n.op].append(n)
        rows = []
        for op, nodes in sorted(by_op.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            bad = [n for n in nodes if n.violations]
            counts = Counter(v.rule for n in bad for v in n.violations)
            example = {v.rule: v.detail for n in reversed(bad) for v in n.violations}
            # most frequent rule first, each with one example of its detail
            rules = [f"{r} ({k}x): {example[r]}" for r, k in counts.most_common()]
            rows.append(
                TableRow(
                    op=op,
                    count=len(nodes),
                    accelerated=sum(n.accelerated for n in nodes),
                    violations=len(bad),
                    positions=dict(Counter(n.position for n in bad)),
                    rules=tuple(rules),
                )
            )
        return rows

    def format(self, max_rule_chars: int = 100) -> str:
        """The table as text (what ``cloudmask metis check`` prints)."""
        lines = [f"{self.path}: opset {self.opset}, inputs {self.input_shapes}"]
        for v in self.model_violations:
            lines.append(f"MODEL {v.rule}: {v.detail}")
        head = f"{'op':<20} {'count':>5} {'accel':>5} {'viol':>5}  {'where':<22} failing rule"
        lines += [head, "-" * len(head)]
        for r in self.table():
            where = " ".join(f"{k}:{v}" for k, v in sorted(r.positions.items()))
            rule = r.rules[0] if r.rules else ""
            if len(rule) > max_rule_chars:
                rule = rule[: max_rule_chars - 3] + "..."
            extra = f" (+{len(r.rules) - 1} more)" if len(r.rules) > 1 else ""
            lines.append(f"{r.op:<20} {r.count:>5} {r.accelerated:>5} {r.violations:>5}  {where:<22} {rule}{extra}")
        n_mid = len(self.middle_violations)
        verdict = "OK" if self.ok else ("compilable (host ops at head/tail)" if self.compilable else "NOT compilable")
        lines.append(
            f"{len(self.nodes)} nodes, {sum(n.accelerated for n in self.nodes)} accelerated, "
            f"{len(self.violations)} with violations ({n_mid} in the middle): {verdict}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "opset": self.opset,
            "input_shapes": self.input_shapes,
            "ok": self.ok,
            "compilable": self.compilable,
            "model_violations": [v.__dict__ for v in self.model_violations],
            "table": [r.__dict__ for r in self.table()],
            "violations": [
                {"node": n.name, "op": n.op, "position": n.position, "foldable": n.foldable,
                 "violations": [v.__dict__ for v in n.violations]}
                for n in self.violations
            ],
        }


# ------------------------------------------------------------------------------------------- evaluation


def _attr_value(a: onnx.AttributeProto) -> Any:
    import onnx
    from onnx import helper, numpy_helper

    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list | tuple):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    return v


def _schema(op: str, domain: str, opset: int) -> Any:
    import onnx

    try:
        return onnx.defs.get_schema(op, max(opset, 1), domain)
    except Exception:
        return None


def _attributes(node: onnx.NodeProto, schema: Any) -> dict[str, Any]:
    import onnx

    env: dict[str, Any] = {}
    if schema is not None:
        for name, a in schema.attributes.items():
            default = a.default_value
            env[name] = _attr_value(default) if default.type != onnx.AttributeProto.UNDEFINED else None
    for a in node.attribute:
        env[a.name] = _attr_value(a)
    return env


def _bind_value(t: Tensor) -> Any:
    if t.value is None:
        return t
    if t.value.size == 0:
        return None
    if t.value.ndim == 0:
        return t.value.item()
    return t.value.tolist()


class _Graph:
    """Shapes, constants and data flow of a model (after shape inference)."""

    def __init__(self, model: onnx.ModelProto, batch: int = 1) -> None:
        import onnx
        from onnx import numpy_helper

        pinned = _pin_batch(model, batch)
        try:
            inferred = onnx.shape_inference.infer_shapes(pinned, data_prop=True)
        except Exception as err:
            log.warning("shape inference failed (%s); shapes will be unknown", err)
            inferred = model
        g = inferred.graph
        self.model = inferred
        self.opset = G.opset(model)
        self.shapes: dict[str, tuple[Any, ...] | None] = {}
        for v in list(g.input) + list(g.value_info) + list(g.output):
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
                self.shapes[v.name] = tuple(G.dims(v))
            else:
                self.shapes.setdefault(v.name, None)
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        for name, arr in self.consts.items():
            self.shapes[name] = tuple(arr.shape)
        self.nodes = list(g.node)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for name in n.input:
                if name:
                    self.consumers[name].append(i)
        inits = {t.name for t in g.initializer}
        self.graph_inputs = [v for v in g.input if v.name not in inits]
        # a tensor is "dynamic" when it depends on a graph input
        self.dynamic: set[str] = {v.name for v in self.graph_inputs}
        for n in self.nodes:  # graph nodes are topologically sorted (checked by onnx)
            if any(i in self.dynamic for i in n.input if i):
                self.dynamic.update(o for o in n.output if o)

    def tensor(self, name: str) -> Tensor:
        value = self.consts.get(name)
        return Tensor(self.shapes.get(name), value is not None, value)


def _unjudgeable(env: dict[str, Any], rule: OpRule) -> list[str]:
    """Inputs the rule's conditions read that are not static (dynamic shapes, run-time values)."""
    names: set[str] = set()
    for cond in rule.all_of + rule.any_of:
        names.update(n.id for n in ast.walk(ast.parse(cond, mode="eval")) if isinstance(n, ast.Name))
    out = []
    for name in sorted(names):
        value = env.get(name)
        for t in value if isinstance(value, list) else [value]:
            if not isinstance(t, Tensor) or t.is_constant:
                continue
            if name not in TENSOR_INPUTS:
                out.append(f"{name} is computed at run time, not a constant")
            elif not _static(t.shape):
                out.append(f"{name}{t.shape}")
    return out


def _static(shape: tuple[Any, ...] | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _pin_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose symbolic input batch dims are ``batch``, so op conditions see the shapes an export gives.

    The dynamic batch itself is reported as a model-level violation.
    """
    import onnx

    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if not any(G.dims(v) and not isinstance(G.dims(v)[0], int) for v in inputs):
        return model
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    del pinned.graph.value_info[:]
    for v in pinned.graph.input:
        d = G.dims(v)
        if v.name not in inits and d and not isinstance(d[0], int):
            dim0 = v.type.tensor_type.shape.dim[0]
            dim0.ClearField("dim_param")
            dim0.dim_value = batch
    for v in pinned.graph.output:
        G.set_dims(v, [None] * len(G.dims(v)))
    return pinned


def _evaluate(cond: str, env: dict[str, Any]) -> tuple[bool, str]:
    try:
        # names go in globals so that comprehensions inside a condition see them too
        return bool(eval(cond, {**env, "__builtins__": {}})), ""  # noqa: S307 - packaged rules, no dunders
    except Exception as err:
        return False, f"{type(err).__name__}: {err}"


def _node_env(gr: _Graph, node: onnx.NodeProto, schema: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"np": np, "len": len, "all": all, "any": any, "abs": abs, "True": True,
                           "False": False, "None": None, "tuple": tuple, "list": list}
    env.update(_attributes(node, schema))
    in_names = [p.name for p in schema.inputs] if schema is not None else []
    inputs = [gr.tensor(n) if n else None for n in node.input]
    for i, formal in enumerate(in_names):
        if i >= len(inputs) or inputs[i] is None:
            env.setdefault(formal, None)
            continue
        t = inputs[i]
        assert t is not None
        env[formal] = t if formal in TENSOR_INPUTS else _bind_value(t)
    # variadic tail (e.g. Concat's inputs) and the conventional aliases the rules use
    env["inputs"] = [t for t in inputs if t is not None]
    if inputs and inputs[0] is not None:
        env.setdefault("X", inputs[0])
        env.setdefault("A", inputs[0])
        env.setdefault("data", inputs[0])
    if len(inputs) > 1 and inputs[1] is not None:
        env.setdefault("B", inputs[1])
    if node.output:
        env["Y"] = gr.tensor(node.output[0])
    return env


def _check_node(gr: _Graph, node: onnx.NodeProto, rules: Rules) -> tuple[bool, list[Violation], list[str]]:
    op = node.op_type
    if node.domain == "ai.onnx.ml" and op.startswith("TreeEnsemble"):
        return False, [Violation("unsupported_op", f"{op}: tree ensembles (LightGBM, XGBoost, random forests, "
                                 "e.g. s2cloudless) are not Metis operators; run this model on the CPU "
                                 "(--backend onnxruntime)")], []
    if node.domain not in ("", "ai.onnx"):
        return False, [Violation("unsupported_op", f"custom domain {node.domain}::{op} is not accelerated")], []
    rule: OpRule | None = rules.ops.get(op)
    if rule is None:
        why = rules.host_only.get(op)
        detail = f"{op} is not accelerated" + (" (the docs list it as host-only)" if why else "")
        return False, [Violation("unsupported_op", detail)], []
    violations: list[Violation] = []
    notes: list[str] = []
    if gr.opset < rule.min_opset:
        violations.append(Violation("op_opset", f"{op} is supported from opset {rule.min_opset}, model has {gr.opset}"))
    qualifier = rules.host_only.get(op)
    if rule.when == "undocumented":
        if qualifier:
            violations.append(Violation("host_only", f"{op} is not accelerated {qualifier}"))
        else:
            notes.append(f"{op}: accelerated under conditions the docs do not spell out")
    elif rule.when == "conditional":
        env = _node_env(gr, node, _schema(op, node.domain, gr.opset))
        unknown = _unjudgeable(env, rule)
        if unknown:
            violations.append(Violation("static_shapes", "not static: " + ", ".join(unknown[:2])))
            return False, violations, notes
        for cond in rule.all_of:
            ok, err = _evaluate(cond, env)
            if not ok:
                violations.append(Violation("all_of", cond + (f" [{err}]" if err else "")))
        if rule.any_of:
            results = [_evaluate(c, env) for c in rule.any_of]
            if not any(ok for ok, _ in results):
                errs = sorted({e for _, e in results if e})
                violations.append(
                    Violation("any_of", "none of " + " | ".join(rule.any_of) + (f" [{'; '.join(errs)}]" if errs else ""))
                )
    return not violations, violations, notes


def _positions(gr: _Graph, accelerated: list[bool]) -> tuple[list[bool], list[bool]]:
    """For each node: is an accelerated node upstream, is one downstream (through data flow)."""
    n = len(gr.nodes)
    up = [False] * n
    for i, node in enumerate(gr.nodes):
        for name in node.input:
            j = gr.producer.get(name)
            if j is not None and (accelerated[j] or up[j]):
                up[i] = True
                break
    down = [False] * n
    for i in range(n - 1, -1, -1):
        for name in gr.nodes[i].output:
            if any(accelerated[j] or down[j] for j in gr.consumers.get(name, ())):
                down[i] = True
                break
    return up, down


def check_model(model: onnx.ModelProto, rules: Rules | None = None, path: Path | str = "<model>") -> CheckReport:
    """Check an in-memory model; see :func:`check`."""
    rules = rules or load_rules()
    gr = _Graph(model)
    model_violations: list[Violation] = []
    if not rules.opset_min <= gr.opset <= rules.opset_max:
        model_violations.append(
            Violation("opset", f"model opset {gr.opset}, Metis takes {rules.opset_min}-{rules.opset_max}")
        )
    input_shapes: dict[str, list[Any]] = {}
    inits = {t.name for t in model.graph.initializer}
    for v in [v for v in model.graph.input if v.name not in inits]:
        d = G.dims(v)
        input_shapes[v.name] = d
        if not d or d[0] != rules.batch:
            model_violations.append(Violation("batch", f"input {v.name} has batch dim {d[0] if d else None}, must be 1"))
        if rules.static_shapes and not all(isinstance(x, int) and x > 0 for x in d):
            model_violations.append(Violation("static_shapes", f"input {v.name} has dynamic dims {d}"))
    if rules.static_shapes:
        dynamic = sorted(
            name for name, s in gr.shapes.items()
            if name in gr.producer and (s is None or not all(isinstance(x, int) for x in s))
        )
        if dynamic:
            model_violations.append(
                Violation("static_shapes", f"{len(dynamic)} tensors without static shape, e.g. {dynamic[:3]}")
            )

    graph_nodes = [(i, nd) for i, nd in enumerate(gr.nodes)]
    verdicts: list[tuple[bool, list[Violation], list[str]]] = []
    for _, node in graph_nodes:
        if node.op_type in DATA_OPS:
            verdicts.append((False, [], []))
        else:
            verdicts.append(_check_node(gr, node, rules))
    accelerated = [v[0] for v in verdicts]
    up, down = _positions(gr, accelerated)
    results: list[NodeResult] = []
    for (i, node), (acc, viol, notes) in zip(graph_nodes, verdicts, strict=True):
        if node.op_type in DATA_OPS:
            continue
        position = ""
        if not acc:
            position = "middle" if up[i] and down[i] else ("tail" if up[i] else "head")
        foldable = not any(name in gr.dynamic for name in node.input if name)
        results.append(
            NodeResult(
                index=i,
                name=node.name or node.output[0],
                op=node.op_type,
                accelerated=acc,
                position=position,
                foldable=foldable,
                violations=tuple(viol),
                notes=tuple(notes),
            )
        )
    report = CheckReport(Path(path), gr.opset, input_shapes, results, model_violations)
    log.info(
        "checked %s: %d nodes, %d violations (%d middle), %d model-level",
        path, len(results), len(report.violations), len(report.middle_violations), len(model_violations),
    )
    return report


def check(onnx_path: str | Path, rules: Rules | None = None) -> CheckReport:
    """Evaluate every node of ``onnx_path`` against the Metis rules (packaged ``metis_ops.json``)."""
    import onnx

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise ModelError(f"cannot load ONNX model {path}: {err}") from err
    return check_model(model, rules, path)
