"""Graph rewrites that make exported models compile-ready: opset conversion, pre-processing folded into
the first layer, and patch stacking of patch classifiers (several patches per batch-1 call).

Pure functions on ``onnx.ModelProto`` (in place unless they say otherwise); each raises ``ValueError``
naming the node it cannot rewrite exactly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from . import graph as G

if TYPE_CHECKING:  # onnx is imported where used: importing it takes about a second
    import onnx

log = logging.getLogger(__name__)

#: Ops that only drop or add the 1 x 1 axes of an ``[N, C, 1, 1]`` / ``[N, C]`` tensor (checked on shapes).
_RESHAPES = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze"})
#: Layers pre-processing can be folded into.
_LAYERS = frozenset({"Gemm", "MatMul", "Conv"})


# ------------------------------------------------------------------------------------------- opset


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """``model`` converted to default-domain opset ``target`` (``onnx.version_converter``), re-checked.

    Returns the model unchanged when its opset is already ``<= target``. Raises ``ValueError`` naming
    the operators that changed after ``target`` when the converter fails.
    """
    import onnx
    from onnx import version_converter

    current = G.opset(model)
    if current <= target:
        return model
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
        onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    except Exception as err:  # the converter raises RuntimeError / onnx errors
        blockers = _ops_newer_than(model, target)
        what = ", ".join(blockers) if blockers else "an operator the converter has no adapter for"
        raise ValueError(
            f"opset {current} -> {target} conversion failed at {what} ({err}); re-export the model with "
            f"opset {target} (torch.onnx.export(..., opset_version={target}))"
        ) from err
    log.info("converted opset %d -> %d", current, target)
    return converted


def _ops_newer_than(model: onnx.ModelProto, target: int) -> list[str]:
    """``"Op (node name, changed in opset v)"`` for each node whose op has a version after ``target``."""
    import onnx

    current = G.opset(model)
    out = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            since = onnx.defs.get_schema(node.op_type, current).since_version
        except Exception:  # noqa: BLE001 - unknown op: the converter cannot take it either
            out.append(f"{node.op_type} (node {node.name!r}, not an ONNX operator)")
            continue
        if since > target:
            out.append(f"{node.op_type} (node {node.name!r}, changed in opset {since})")
    return out


# ------------------------------------------------------------------------------ pre-processing fold


def _per_channel(const: np.ndarray, shape: list[int]) -> np.ndarray | None:
    """A constant that broadcasts over a ``shape`` tensor (``[N, C, ...]``) per channel, as ``(C,)``; else None."""
    if len(shape) < 2 or const.ndim > len(shape):
        return None
    c = shape[1]
    full = (1,) * (len(shape) - const.ndim) + tuple(const.shape)
    if const.ndim == 0 or const.size == 1:
        return np.full(c, float(const.reshape(-1)[0]), np.float64)
    # the channel axis is axis 1, or the last axis of a 2-D [N, C] tensor
    if any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] != c:
        return None
    return const.reshape(-1).astype(np.float64)


def fold_input_affine(model: onnx.ModelProto) -> dict[str, int]:
    """Fold per-channel constant ``Sub``/``Div``/``Mul``/``Add`` and ``BatchNormalization`` between the
    graph input and the first ``Gemm``/``MatMul``/``Conv`` into that layer's weights and bias.

    The chain may hold ``Flatten``/``Reshape``/``Squeeze``/``Unsqueeze`` that only drop or add the 1 x 1
    axes of an ``[N, C, 1, 1]`` input. A ``Conv`` with zero padding pads the *normalised* input with
    zeros: there the scale is folded and the offset stays as an ``Add`` of a ``[1, C, 1, 1]`` constant
    (accelerated). Needs static shapes (run after simplification). Returns pass counts.
    """
    from onnx import helper, numpy_helper

    G.constants_to_initializers(model)
    g = model.graph
    shapes = G._static_shapes(model)
    consts = G.initializer_values(model)
    outputs = {o.name for o in g.output}
    counts = {"preprocessing_folded": 0, "preprocessing_kept_as_add": 0}
    cur = G.image_input(model).name
    shape = shapes.get(cur)
    if shape is None or len(shape) < 2:
        return counts
    c = shape[1]
    a, b = np.ones(c, np.float64), np.zeros(c, np.float64)
    affine: list[onnx.NodeProto] = []
    target = None
    while cur not in outputs:
        users = [n for n in g.node if cur in n.input]
        if len(users) != 1:
            break
        node = users[0]
        op = node.op_type
        if op in _RESHAPES and node.input[0] == cur:
            before, after = shapes.get(cur), shapes.get(node.output[0])
            if before is None or after is None or [v for v in before[1:] if v != 1] != [v for v in after[1:] if v != 1]:
                break
            cur = node.output[0]
            continue
        if op in ("Sub", "Div", "Mul", "Add") and len(node.input) == 2:
            i = list(node.input).index(cur)
            other = node.input[1 - i]
            if other not in consts or list(node.input).count(cur) != 1:
                break
            vec = _per_channel(consts[other].astype(np.float64), shapes.get(cur, []))
            if vec is None:
                break
            if op == "Add":
                b = b + vec
            elif op == "Mul":
                a, b = a * vec, b * vec
            elif op == "Sub":
                a, b = (a, b - vec) if i == 0 else (-a, vec - b)
            else:  # Div
                if i != 0 or np.any(vec == 0):
                    break
                a, b = a / vec, b / vec
        elif op == "BatchNormalization" and node.input[0] == cur and len(node.output) == 1:
            if not all(name in consts for name in node.input[1:5]):
                break
            eps = next((helper.get_attribute_value(x) for x in node.attribute if x.name == "epsilon"), 1e-5)
            scale, bias, mean, var = (consts[n].astype(np.float64).reshape(-1) for n in node.input[1:5])
            s = scale / np.sqrt(var + eps)
            a, b = a * s, (b - mean) * s + bias
        elif op in _LAYERS and node.input[0] == cur:
            target = node
            break
        else:
            break
        affine.append(node)
        cur = node.output[0]
    if not affine or target is None:
        return counts
    w_name = target.input[1]
    if w_name not in consts:
        return counts
    w = consts[w_name].astype(np.float64)
    attrs = {x.name: helper.get_attribute_value(x) for x in target.attribute}
    new_inits = []
    keep_add: np.ndarray | None = None

    def init(name: str, arr: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    base = target.name or target.output[0]
    if target.op_type == "Gemm":
        if attrs.get("transA", 0):
            return counts
        bm = w.T if attrs.get("transB", 0) else w  # [C, K]
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        if bm.shape[0] != c:
            return counts
        new_bm = alpha * a[:, None] * bm
        extra = alpha * (b @ bm)
        old = consts[target.input[2]].astype(np.float64) if len(target.input) > 2 and target.input[2] else None
        if len(target.input) > 2 and target.input[2] and old is None:
            return counts
        bias = extra + (beta * np.broadcast_to(old, (1, bm.shape[1])).reshape(-1) if old is not None else 0.0)
        target.input[1] = init(f"{base}_prep_W", new_bm.T if attrs.get("transB", 0) else new_bm)
        while len(target.input) < 3:
            target.input.append("")
        target.input[2] = init(f"{base}_prep_b", bias)
        for x in list(target.attribute):
            if x.name in ("alpha", "beta"):
                target.attribute.remove(x)
    elif target.op_type == "MatMul":
        if w.ndim != 2 or w.shape[0] != c:
            return counts
        target.input[1] = init(f"{base}_prep_W", a[:, None] * w)
        extra = b @ w
        if np.any(extra != 0):
            out = target.output[0]
            users = [n for n in g.node if out in n.input]
            add = users[0] if len(users) == 1 and users[0].op_type == "Add" and out not in outputs else None
            other = (add.input[1] if add.input[0] == out else add.input[0]) if add is not None else None
            if add is not None and other in consts and consts[other].size == w.shape[1]:
                j = list(add.input).index(other)
                add.input[j] = init(f"{base}_prep_b", consts[other].astype(np.float64).reshape(-1) + extra)
            else:
                tmp = f"{out}_prep"
                target.output[0] = tmp
                idx = list(g.node).index(target)
                g.node.insert(idx + 1, helper.make_node("Add", [tmp, init(f"{base}_prep_b", extra)], [out],
                                                        name=f"{base}_prep_add"))
    else:  # Conv
        group = int(attrs.get("group", 1))
        m, cg = w.shape[0], w.shape[1]
        if cg * group != c or m % group:
            return counts
        in_ch = (np.arange(m)[:, None] // (m // group)) * cg + np.arange(cg)[None, :]  # [M, C/g]
        scale = a[in_ch][:, :, None, None]
        target.input[1] = init(f"{base}_prep_W", w * scale)
        pads = attrs.get("pads") or [0] * (2 * (w.ndim - 2))
        auto = attrs.get("auto_pad", b"NOTSET")
        padded = any(int(p) for p in pads) or (auto.decode() if isinstance(auto, bytes) else str(auto)) not in (
            "NOTSET", "VALID")
        old = consts[target.input[2]].astype(np.float64) if len(target.input) > 2 and target.input[2] else None
        if len(target.input) > 2 and target.input[2] and old is None:
            return counts
        if padded and np.any(b != 0):
            if np.any(a == 0):
                return counts
            keep_add = b / a  # x + b/a, then the scaled weights: zero padding stays zero padding
            bias = old if old is not None else np.zeros(m)
        else:
            bias = (old if old is not None else 0.0) + (w * b[in_ch][:, :, None, None]).sum(axis=(1, 2, 3))
        while len(target.input) < 3:
            target.input.append("")
        target.input[2] = init(f"{base}_prep_b", np.broadcast_to(bias, (m,)))
    g.initializer.extend(new_inits)
    for node in affine:
        G.bypass(model, node)
    if keep_add is not None:
        rank = len(shapes.get(target.input[0], [0, 0, 0, 0]))
        cname = init(f"{base}_prep_offset", keep_add.reshape((1, c) + (1,) * (rank - 2)))
        g.initializer.append(new_inits[-1])
        src = target.input[0]
        tmp = f"{src}_prep_offset"
        idx = list(g.node).index(target)
        g.node.insert(idx, helper.make_node("Add", [src, cname], [tmp], name=f"{base}_prep_offset_add"))
        target.input[0] = tmp
        counts["preprocessing_kept_as_add"] = 1
    counts["preprocessing_folded"] = len(affine)
    G.remove_unused_initializers(model)
    del g.value_info[:]
    return counts


def divisions_to_multiplications(model: onnx.ModelProto) -> int:
    """``Div`` by a constant becomes ``Mul`` by its reciprocal (the compiler accelerates ``Mul``, not ``Div``)."""
    from onnx import numpy_helper

    g = model.graph
    consts = G.initializer_values(model)
    changed = 0
    for node in g.node:
        if node.op_type != "Div" or node.input[1] not in consts:
            continue
        value = consts[node.input[1]].astype(np.float64)
        if np.any(value == 0):
            continue
        name = f"{node.input[1]}_reciprocal"
        if name not in consts:
            g.initializer.append(numpy_helper.from_array((1.0 / value).astype(np.float32), name))
            consts[name] = value
        node.op_type = "Mul"
        node.input[1] = name
        changed += 1
    if changed:
        G.remove_unused_initializers(model)
    return changed


# ---------------------------------------------------------------------------------------- patch stacking

#: Per-element ops a stacked graph keeps unchanged.
_PER_ELEMENT = frozenset({"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Selu", "Elu",
                          "Identity", "Softplus"})
#: Per-channel spatial ops a stacked graph keeps unchanged (each channel plane holds one patch only).
_PER_PLANE = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
#: Most taps of a grouped Conv the compiler accelerates (onnx-ops.json: kernel area < 128).
_GROUPED_MAX_TAPS = 128


def stack_patch_classifier(model: onnx.ModelProto, k: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Patch stacking: a static ``[1, C, p, p] -> [1, K]`` classifier as ``[1, k*C, p, p] -> [1, k*K, 1, 1]``.

    Patch ``i`` of a call sits in input channels ``i*C .. (i+1)*C - 1`` (the memory layout of a
    ``[k, C, p, p]`` batch) and its scores come out in channels ``i*K .. (i+1)*K - 1``. Every ``Conv``
    becomes a grouped ``Conv`` (``group`` x k, weights tiled), so a patch's channels only ever mix with
    its own: each patch keeps its own spatial plane and its own zero padding, so no convolution or
    pooling window can see a neighbour. Global pooling is per channel, hence per patch; the
    ``Flatten``/``Reshape`` after it disappear and the final ``Gemm``/``MatMul`` becomes a grouped 1x1
    ``Conv``. Per-element activations, ``BatchNormalization`` and per-channel constants (tiled) stay.
    Raises ``ValueError`` naming the first node that cannot be stacked exactly (e.g. a ``Concat`` of
    channels, a ``Flatten`` of a whole feature map, a grouped Conv the compiler does not accelerate).
    """
    import onnx
    from onnx import helper, numpy_helper

    if k < 1:
        raise ValueError(f"patches per call must be >= 1, got {k}")
    G.constants_to_initializers(model)
    shapes = G._static_shapes(model)
    consts = G.initializer_values(model)
    g = model.graph
    inp = G.image_input(model)
    idims = G.dims(inp)
    if len(idims) != 4 or idims[0] != 1:
        raise ValueError(f"a patch classifier takes [1, C, p, p] here, got {idims}")
    outputs = {o.name for o in g.output}
    alias: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    counts = {"convs_grouped": 0, "gemms_to_grouped_conv": 0, "reshapes_removed": 0, "constants_tiled": 0,
              "reductions_to_global_pool": 0}

    def src(name: str) -> str:
        return alias.get(name, name)

    def const(name: str, arr: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    def tile_channels(name: str, like: str, where: str) -> str:
        """A constant per channel of the (original) tensor ``like``, tiled k times as ``[1, k*F, 1, 1]``."""
        value = consts[name]
        if value.size == 1:
            return name
        shp = shapes.get(like)
        try:
            full = np.broadcast_to(value, shp) if shp else None
        except ValueError:
            full = None
        if full is None or len(shp or []) not in (2, 4):
            raise ValueError(f"{where}: constant {name} of shape {list(value.shape)} is not per channel")
        vec = full[0] if full.ndim == 2 else full[0, :, 0, 0]
        if full.ndim == 4 and not np.array_equal(full[0], np.broadcast_to(vec[:, None, None], full.shape[1:])):
            raise ValueError(f"{where}: constant {name} of shape {list(value.shape)} varies over the patch")
        counts["constants_tiled"] += 1
        return const(f"{name}_x{k}", np.tile(vec, k).reshape(1, -1, 1, 1))

    def grouped_conv(node: onnx.NodeProto, x: str, w: np.ndarray, bias: np.ndarray | None, group: int,
                     attrs: dict[str, Any]) -> None:
        base = node.name or node.output[0]
        ins = [src(x), const(f"{base}_stack_W", np.tile(w, (k, 1, 1, 1)))]
        if bias is not None:
            ins.append(const(f"{base}_stack_b", np.tile(bias.reshape(-1), k)))
        kw = {key: v for key, v in attrs.items() if key != "group"}
        new_nodes.append(helper.make_node("Conv", ins, list(node.output), name=node.name, group=group * k, **kw))

    for node in g.node:
        op = node.op_type
        where = f"{op} node {node.name!r}"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x_shape = shapes.get(node.input[0]) if node.input else None
        if op == "Conv":
            w = consts.get(node.input[1])
            if w is None:
                raise ValueError(f"{where} has non-constant weights")
            kh, kwd = w.shape[2:]
            strides = list(attrs.get("strides", [1, 1]))  # type: ignore[call-overload]
            dil = list(attrs.get("dilations", [1, 1]))  # type: ignore[call-overload]
            taps = ((kh - 1) * dil[0] + 1) * ((kwd - 1) * dil[1] + 1)
            if k > 1 and (kh != kwd or strides[0] != strides[1] or dil[0] != dil[1] or taps >= _GROUPED_MAX_TAPS):
                raise ValueError(f"{where}: a {kh}x{kwd} kernel (strides {strides}, dilations {dil}) as a grouped "
                                 f"Conv is not accelerated (square kernels of < {_GROUPED_MAX_TAPS} taps only)")
            bias = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if len(node.input) > 2 and node.input[2] and bias is None:
                raise ValueError(f"{where} has a non-constant bias")
            grouped_conv(node, node.input[0], w, bias, int(attrs.get("group", 1)), attrs)  # type: ignore[call-overload]
            counts["convs_grouped"] += 1
        elif op in _PER_ELEMENT or op in _PER_PLANE:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for i, name in enumerate(new.input):
                new.input[i] = src(name)
            new_nodes.append(new)
        elif op in ("PRelu", "BatchNormalization"):
            ins = [src(node.input[0])]
            for name in node.input[1:]:
                if name not in consts:
                    raise ValueError(f"{where} has non-constant parameters")
                if op == "BatchNormalization":
                    ins.append(const(f"{name}_x{k}", np.tile(consts[name].reshape(-1), k)))
                else:
                    ins.append(tile_channels(name, node.input[0], where))
            new_nodes.append(helper.make_node(op, ins, list(node.output), name=node.name, **attrs))
        elif op in ("Add", "Sub", "Mul"):
            ins = []
            for name in node.input:
                if name in consts:
                    ins.append(tile_channels(name, node.output[0], where))
                else:
                    ins.append(src(name))
            if all(name in consts for name in node.input):
                raise ValueError(f"{where} has only constant inputs (fold constants first)")
            new_nodes.append(helper.make_node(op, ins, list(node.output), name=node.name))
        elif op in ("ReduceMean", "ReduceMax"):
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1] in consts:
                axes = consts[node.input[1]].tolist()
            rank = len(x_shape or [])
            if rank != 4 or sorted(int(a) % 4 for a in axes or []) != [2, 3]:  # type: ignore[union-attr]
                raise ValueError(f"{where} reduces axes {axes}: only a mean/max over the whole patch (axes 2, 3) "
                                 "stays within one patch")
            pool = "GlobalAveragePool" if op == "ReduceMean" else "GlobalMaxPool"
            new_nodes.append(helper.make_node(pool, [src(node.input[0])], list(node.output), name=node.name))
            counts["reductions_to_global_pool"] += 1
        elif op in _RESHAPES:
            before, after = x_shape, shapes.get(node.output[0])
            if before is None or after is None or len(before) != 4 or before[2:] != [1, 1] or \
                    [v for v in after if v != 1] != [v for v in before if v != 1]:
                raise ValueError(f"{where} reshapes {before} -> {after}: only dropping the 1x1 axes after global "
                                 "pooling keeps patches apart (pool globally before the classifier head)")
            if node.output[0] in outputs:
                raise ValueError(f"{where} makes the graph output: nothing to classify after it")
            alias[node.output[0]] = src(node.input[0])
            counts["reshapes_removed"] += 1
        elif op in ("Gemm", "MatMul"):
            if x_shape is None or len(x_shape) != 2:  # 2-D here: [1, k*F, 1, 1] after global pooling
                raise ValueError(f"{where} does not follow global pooling (its input is {x_shape})")
            b = consts.get(node.input[1])
            if b is None:
                raise ValueError(f"{where} has non-constant weights")
            if op == "Gemm":
                if attrs.get("transA", 0):
                    raise ValueError(f"{where} has transA = 1")
                wm = (b if attrs.get("transB", 0) else b.T) * float(attrs.get("alpha", 1.0))  # type: ignore[arg-type]
                bias = None
                if len(node.input) > 2 and node.input[2]:
                    if node.input[2] not in consts:
                        raise ValueError(f"{where} has a non-constant bias")
                    bias = np.broadcast_to(consts[node.input[2]].reshape(-1) * float(attrs.get("beta", 1.0)),  # type: ignore[arg-type]
                                           (wm.shape[0],))
            else:
                wm, bias = b.T, None
            grouped_conv(node, node.input[0], wm.reshape(wm.shape[0], wm.shape[1], 1, 1), bias, 1,
                         {"kernel_shape": [1, 1], "pads": [0, 0, 0, 0], "strides": [1, 1]})
            counts["gemms_to_grouped_conv"] += 1
        else:
            raise ValueError(f"cannot stack {where}: patch stacking handles Conv, pooling, per-element "
                             "activations, BatchNormalization, per-channel Add/Sub/Mul, global pooling + "
                             "Flatten/Reshape and Gemm/MatMul heads")
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    G.set_dims(inp, [1, int(idims[1]) * k, int(idims[2]), int(idims[3])])  # type: ignore[arg-type]
    for o in g.output:
        shp = shapes.get(o.name)
        if shp is None or len(shp) != 2 or shp[0] != 1:
            raise ValueError(f"a patch classifier outputs [1, K] scores, got {shp} for {o.name}")
        if o.name in alias:
            raise ValueError(f"graph output {o.name} is a removed reshape")
        G.set_dims(o, [1, shp[1] * k, 1, 1])
    del g.value_info[:]
    G.remove_unused_initializers(model)
    return model, counts


def strip_trailing_argmax(model: onnx.ModelProto) -> bool:
    """Remove an ``ArgMax`` over the channels that makes the (single) graph output: the host takes the argmax
    of the scores (the graph then outputs float scores, one channel per class)."""
    from onnx import TensorProto, helper

    g = model.graph
    if len(g.output) != 1:
        return False
    out = g.output[0]
    node = next((n for n in g.node if out.name in n.output), None)
    if node is None or node.op_type != "ArgMax":
        return False
    axis = next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "axis"), 0)
    if axis != 1:
        raise ValueError(f"the graph's final ArgMax (node {node.name!r}) is over axis {axis}, not the channels (1)")
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model).graph
    scores = next((v for v in list(inferred.value_info) + list(inferred.input) if v.name == node.input[0]), None)
    rank = len(G.dims(scores)) if scores is not None and scores.type.tensor_type.HasField("shape") else 2
    if not G.bypass(model, node):
        return False
    out.type.tensor_type.elem_type = TensorProto.FLOAT
    G.set_dims(out, [None] * rank)
    del g.value_info[:]
    return True
