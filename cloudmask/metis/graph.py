"""Small ONNX graph passes used by the Metis export (pure functions on ``ModelProto``, in place)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
    types = _elem_types(model)
    removed = 0
    for node in [n for n in model.graph.node if n.op_type == "Cast"]:
        to = helper.get_attribute_value(node.attribute[0]) if node.attribute else None
        if to is not None and types.get(node.input[0]) == to and bypass(model, node):
            removed += 1
    return removed


def initializer_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer by name, as numpy arrays."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def fold_pads_into_convs(model: onnx.ModelProto) -> int:
    """Merge a zero-value constant ``Pad`` of H/W only into the ``Conv`` nodes that consume it.

    The Pad must pad only the spatial axes of a 4-D tensor, with non-negative constant pads and
    value 0, and feed only Convs (as their data input) whose ``auto_pad`` is NOTSET.
    """
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
    for a in node.attribute:
        if a.name == name:
            return list(helper.get_attribute_value(a))
    return None


def _auto_pad(node: onnx.NodeProto) -> str:
    for a in node.attribute:
        if a.name == "auto_pad":
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else str(v)
    return "NOTSET"


def _set_attr(node: onnx.NodeProto, name: str, value: list[int]) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))
