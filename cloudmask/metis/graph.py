"""Small ONNX graph passes used by the Metis export (pure functions on ``ModelProto``, in place)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # onnx is imported where used: importing it takes about a second
    import onnx
    from onnx import TensorProto

log = logging.getLogger(__name__)


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The single non-initializer graph input."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"expected one image input, found {[i.name for i in inputs]}")
    return inputs[0]


def dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """Dims of a tensor value: ints when static, the symbol (str) or None when not."""
    out: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def set_dims(value: onnx.ValueInfoProto, shape: Iterable[int | None]) -> None:
    """Overwrite a value's dims (None leaves a dim unknown)."""
    tdims = value.type.tensor_type.shape.dim
    shape = list(shape)
    del tdims[:]
    for v in shape:
        d = tdims.add()
        if v is not None:
            d.dim_value = int(v)


def float16_to_float32(model: onnx.ModelProto) -> int:
    """Make a graph that computes in float16 compute in float32; returns the number of changes.

    Converts float16 initializers and ``Constant``/``ConstantOfShape`` values, retargets ``Cast`` to
    float16 as ``Cast`` to float32 (identity casts are removed later), and drops stale value_info.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    g = model.graph
    changed = 0
    f16 = TensorProto.FLOAT16

    def to32(t: TensorProto) -> None:
        nonlocal changed
        arr = numpy_helper.to_array(t).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
        changed += 1

    for t in g.initializer:
        if t.data_type == f16:
            to32(t)
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f16:
                to32(a.t)
            elif node.op_type == "Cast" and a.name == "to" and a.i == f16:
                a.i = TensorProto.FLOAT
                changed += 1
    for v in list(g.input) + list(g.output):
        if v.type.tensor_type.elem_type == f16:
            v.type.tensor_type.elem_type = TensorProto.FLOAT
            changed += 1
    del g.value_info[:]
    return changed


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Move ``Constant`` nodes carrying a tensor into initializers."""
    import onnx

    g = model.graph
    keep, moved = [], 0
    for node in g.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            g.initializer.append(t)
            moved += 1
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    return moved


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def bypass(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Remove a one-in/one-out node whose output equals its input, rewiring its consumers.

    When the node's output is a graph output, the producer of its input is renamed instead.
    Returns False (and leaves the graph alone) when that is not possible.
    """
    g = model.graph
    src, dst = node.input[0], node.output[0]
    outputs = {o.name for o in g.output}
    if dst in outputs:
        producers = [n for n in g.node if src in n.output]
        if len(producers) != 1 or src in outputs or src in {i.name for i in g.input}:
            return False
        for n in g.node:
            for i, name in enumerate(n.input):
                if name == src:
                    n.input[i] = dst
        prod = producers[0]
        for i, name in enumerate(prod.output):
            if name == src:
                prod.output[i] = dst
    else:
        for n in g.node:
            for i, name in enumerate(n.input):
                if name == dst:
                    n.input[i] = src
    g.node.remove(node)
    return True


def remove_identity_casts(model: onnx.ModelProto) -> int:
    """Drop ``Cast`` nodes whose input already has the target type."""
    from onnx import helper

    types = _elem_types(model)
    removed = 0
    for node in [n for n in model.graph.node if n.op_type == "Cast"]:
        to = helper.get_attribute_value(node.attribute[0]) if node.attribute else None
        if to is not None and types.get(node.input[0]) == to and bypass(model, node):
            removed += 1
    return removed


def initializer_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer by name, as numpy arrays."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def fold_pads_into_convs(model: onnx.ModelProto) -> int:
    """Merge a zero-value constant ``Pad`` of H/W only into the ``Conv`` nodes that consume it.

    The Pad must pad only the spatial axes of a 4-D tensor, with non-negative constant pads and
    value 0, and feed only Convs (as their data input) whose ``auto_pad`` is NOTSET.
    """
    from onnx import helper

    g = model.graph
    consts = initializer_values(model)
    outputs = {o.name for o in g.output}
    folded = 0
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        mode = attrs.get("mode", b"constant")
        if (mode.decode() if isinstance(mode, bytes) else str(mode)) != "constant":
            continue
        if len(pad.input) < 2 or pad.input[1] not in consts:
            continue
        if len(pad.input) > 3 and pad.input[3]:
            continue  # explicit axes (opset 18+)
        if len(pad.input) > 2 and pad.input[2]:
            value = consts.get(pad.input[2])
            if value is None or value.size != 1 or float(value.reshape(-1)[0]) != 0.0:
                continue
        p = [int(v) for v in consts[pad.input[1]].reshape(-1)]
        if len(p) != 8 or p[0] or p[1] or p[4] or p[5] or min(p) < 0 or pad.output[0] in outputs:
            continue
        users = [n for n in g.node if pad.output[0] in n.input]
        if not users or any(
            u.op_type != "Conv" or list(u.input).index(pad.output[0]) != 0 or list(u.input).count(pad.output[0]) != 1
            for u in users
        ):
            continue
        if any(_auto_pad(u) != "NOTSET" for u in users):
            continue
        extra = [p[2], p[3], p[6], p[7]]  # top, left, bottom, right
        for conv in users:
            existing = _attr(conv, "pads") or [0, 0, 0, 0]
            new = [int(a) + b for a, b in zip(existing, extra, strict=True)]
            _set_attr(conv, "pads", new)
            conv.input[0] = pad.input[0]
        g.node.remove(pad)
        folded += 1
    return folded


def strip_trailing_softmax(model: onnx.ModelProto) -> bool:
    """Remove a ``Softmax`` that produces the (single) graph output; the host applies it instead."""
    g = model.graph
    if len(g.output) != 1:
        return False
    out = g.output[0].name
    for node in g.node:
        if node.op_type == "Softmax" and node.output[0] == out:
            return bypass(model, node)
    return False


def remove_unused_initializers(model: onnx.ModelProto) -> int:
    """Drop initializers no node reads."""
    g = model.graph
    used = {name for n in g.node for name in n.input} | {o.name for o in g.output}
    gone = {t.name for t in g.initializer} - used
    if gone:
        keep = [t for t in g.initializer if t.name not in gone]
        del g.initializer[:]
        g.initializer.extend(keep)
        inputs = [i for i in g.input if i.name not in gone]
        del g.input[:]
        g.input.extend(inputs)
    return len(gone)


def opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def _attr(node: onnx.NodeProto, name: str) -> list[int] | None:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return list(helper.get_attribute_value(a))
    return None


def _auto_pad(node: onnx.NodeProto) -> str:
    from onnx import helper

    for a in node.attribute:
        if a.name == "auto_pad":
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else str(v)
    return "NOTSET"


def _set_attr(node: onnx.NodeProto, name: str, value: list[int]) -> None:
    from onnx import helper

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


# ------------------------------------------------------------------------------ batch folding

#: Element-wise ops a folded pixel graph keeps unchanged (they act per value, whatever the layout).
ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu",
    "Softplus", "Gelu", "Mish", "Identity", "Neg", "Abs", "Exp", "Sqrt", "Erf",
})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})
_SHAPE_ONLY = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze"})


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out: dict[str, list[int]] = {}
    for v in list(g.value_info) + list(g.input) + list(g.output):
        d = dims(v)
        if all(isinstance(x, int) for x in d):
            out[v.name] = [int(x) for x in d]  # type: ignore[arg-type]
    for t in g.initializer:
        out[t.name] = list(t.dims)
    return out


def fold_pixel_model(model: onnx.ModelProto, height: int, width: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Batch folding: a per-pixel graph ``[N, C] -> [N, K]`` as ``[1, C, H, W] -> [1, K, H, W]``.

    Every ``Gemm`` (``transA = 0``, constant weights) and every ``MatMul`` with a constant right-hand
    side (with the ``Add`` of a constant bias that follows it) becomes a 1x1 ``Conv`` with the same
    weights; element-wise activations stay; constants broadcast over features become ``[1, F, 1, 1]``;
    ``Flatten``/``Reshape``/``Squeeze`` that only drop the 1x1 axes of an ``[N, C, 1, 1]`` input go.
    Pixel ``i`` of a block sits at row ``i // W``, column ``i % W``. A trailing ``Softmax`` over the
    features stays a ``Softmax`` over channels (axis 1). Returns the new model and pass counts;
    raises ``ValueError`` naming an op it cannot fold.
    """
    import onnx
    from onnx import helper, numpy_helper

    constants_to_initializers(model)
    inp = image_input(model)
    idims = dims(inp)
    if len(idims) not in (2, 4) or (len(idims) == 4 and idims[2:] != [1, 1]):
        raise ValueError(f"a pixel model takes [N, C] or [N, C, 1, 1], got {idims}")
    channels = idims[1]
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"the pixel model's channel count must be static, got {idims}")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    set_dims(image_input(probe), [1, channels, 1, 1] if len(idims) == 4 else [1, channels])
    for o in probe.graph.output:
        set_dims(o, [None] * len(dims(o)))
    shapes = _static_shapes(probe)
    consts = initializer_values(model)
    g = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    alias: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[TensorProto] = []
    skip: set[int] = set()
    counts = {"gemm_to_conv": 0, "matmul_to_conv": 0, "bias_adds_merged": 0, "shape_ops_removed": 0,
              "constants_reshaped": 0}

    def src(name: str) -> str:
        return alias.get(name, name)

    def conv(node_name: str, x: str, weight: np.ndarray, bias: np.ndarray | None, y: str) -> None:
        k, f = weight.shape
        wname = f"{node_name}_fold_W"
        new_inits.append(numpy_helper.from_array(weight.reshape(k, f, 1, 1).astype(np.float32), wname))
        ins = [src(x), wname]
        if bias is not None:
            bname = f"{node_name}_fold_b"
            new_inits.append(numpy_helper.from_array(np.broadcast_to(bias, (k,)).astype(np.float32).copy(), bname))
            ins.append(bname)
        new_nodes.append(helper.make_node("Conv", ins, [y], name=f"{node_name}_conv", kernel_shape=[1, 1],
                                          pads=[0, 0, 0, 0], strides=[1, 1], dilations=[1, 1], group=1))

    for idx, node in enumerate(g.node):
        if idx in skip:
            continue
        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op in _SHAPE_ONLY:
            before, after = shapes.get(node.input[0]), shapes.get(node.output[0])
            if before is None or after is None or [v for v in before if v != 1] != [v for v in after if v != 1]:
                raise ValueError(f"{op} node {node.name!r} changes more than the 1x1 axes ({before} -> {after})")
            alias[node.output[0]] = src(node.input[0])
            counts["shape_ops_removed"] += 1
        elif op == "Gemm":
            if attrs.get("transA", 0):
                raise ValueError(f"Gemm node {node.name!r} has transA = 1")
            if node.input[1] not in consts:
                raise ValueError(f"Gemm node {node.name!r} has non-constant weights")
            b = consts[node.input[1]].astype(np.float32)
            w = (b if attrs.get("transB", 0) else b.T) * np.float32(attrs.get("alpha", 1.0))
            bias = None
            if len(node.input) > 2 and node.input[2]:
                if node.input[2] not in consts:
                    raise ValueError(f"Gemm node {node.name!r} has a non-constant bias")
                bias = consts[node.input[2]].astype(np.float32).reshape(-1) * np.float32(attrs.get("beta", 1.0))
            conv(node.name or f"gemm{idx}", node.input[0], w, bias, node.output[0])
            counts["gemm_to_conv"] += 1
        elif op == "MatMul":
            if node.input[1] not in consts or consts[node.input[1]].ndim != 2:
                raise ValueError(f"MatMul node {node.name!r} needs a constant 2-D right-hand side")
            w = consts[node.input[1]].astype(np.float32).T
            out, bias = node.output[0], None
            users = consumers.get(out, [])
            if len(users) == 1 and users[0].op_type == "Add" and out not in {o.name for o in g.output}:
                add = users[0]
                other = add.input[1] if add.input[0] == out else add.input[0]
                if other in consts and consts[other].size == w.shape[0]:
                    bias = consts[other].astype(np.float32).reshape(-1)
                    out = add.output[0]
                    skip.add(list(g.node).index(add))
                    counts["bias_adds_merged"] += 1
            conv(node.name or f"matmul{idx}", node.input[0], w, bias, out)
            counts["matmul_to_conv"] += 1
        elif op in _BINARY:
            ins = []
            for name in node.input:
                if name in consts and consts[name].size > 1:
                    c = consts[name].astype(np.float32)
                    cname = f"{name}_fold"
                    new_inits.append(numpy_helper.from_array(c.reshape(1, -1, 1, 1), cname))
                    counts["constants_reshaped"] += 1
                    ins.append(cname)
                else:
                    ins.append(src(name))
            new_nodes.append(helper.make_node(op, ins, list(node.output), name=node.name))
        elif op == "Conv":  # a 1x1 Conv over [N, C, 1, 1] acts per pixel: it stays as it is
            cw = consts.get(node.input[1])
            if (cw is None or cw.ndim != 4 or tuple(cw.shape[2:]) != (1, 1) or int(attrs.get("group", 1)) != 1
                    or any(int(v) for v in attrs.get("pads", [])) or any(int(v) != 1 for v in attrs.get("strides", []))):
                raise ValueError(f"Conv node {node.name!r} is not a 1x1 Conv without padding or stride")
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for i, name in enumerate(new.input):
                new.input[i] = src(name)
            new_nodes.append(new)
            counts["convs_kept"] = counts.get("convs_kept", 0) + 1
        elif op in ("Softmax", "LogSoftmax"):
            axis = int(attrs.get("axis", -1))
            rank = len(shapes.get(node.input[0], [0, 0]))
            if axis not in (1, -1, rank - 1):
                raise ValueError(f"{op} node {node.name!r} is not over the features (axis {axis})")
            new_nodes.append(helper.make_node(op, [src(node.input[0])], list(node.output), name=node.name, axis=1))
        elif op == "PRelu" or op in ELEMENTWISE or op == "BatchNormalization":
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for i, name in enumerate(new.input):
                if op == "PRelu" and i == 1 and name in consts and consts[name].size > 1:
                    cname = f"{name}_fold"
                    new_inits.append(numpy_helper.from_array(consts[name].astype(np.float32).reshape(1, -1, 1, 1),
                                                             cname))
                    new.input[i] = cname
                else:
                    new.input[i] = src(name)
            new_nodes.append(new)
        elif op.startswith("TreeEnsemble") or node.domain == "ai.onnx.ml":
            raise ValueError(f"cannot fold op {op} (node {node.name!r}): a tree ensemble is not a Metis operator; "
                             "run this model on the CPU (--backend onnxruntime)")
        else:
            raise ValueError(f"cannot fold op {op} (node {node.name!r}): batch folding handles Gemm, MatMul(+Add), "
                             f"element-wise activations, Softmax and 1x1 reshapes")
    outputs = list(g.output)
    for o in outputs:
        if o.name in alias:  # a final Flatten/Reshape went: its input takes the output's name
            target = src(o.name)
            if target == inp.name or target in {x.name for x in outputs}:
                raise ValueError(f"graph output {o.name} is a removed reshape")
            for n in new_nodes:
                for i, name in enumerate(n.output):
                    if name == target:
                        n.output[i] = o.name
                for i, name in enumerate(n.input):
                    if name == target:
                        n.input[i] = o.name
    k_out = {o.name: shapes.get(o.name) for o in outputs}
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    set_dims(inp, [1, channels, height, width])
    for o in outputs:
        shp = k_out[o.name]
        set_dims(o, [1, shp[1] if shp and len(shp) >= 2 else None, height, width])
    del g.value_info[:]
    remove_unused_initializers(model)
    return model, counts
