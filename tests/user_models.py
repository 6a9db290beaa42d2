"""User models "as exporters leave them", built with onnx.helper (no torch): the three kinds the Metis
export path must take (issue 20): an opset-18 per-pixel MLP over the 13 L1C bands with its normalisation
inside the graph, a one-channel sigmoid pixel model, and a 64-px patch classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cloudmask.models import ModelCard

L1C13 = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09", "cirrus",
         "swir16", "swir22")
#: Per-band reflectance mean / std the graphs subtract and divide by (about those of real L1C pixels).
MEAN = np.array([0.22, 0.20, 0.19, 0.19, 0.21, 0.23, 0.24, 0.23, 0.26, 0.08, 0.014, 0.20, 0.12], np.float32)
STD = np.array([0.14, 0.14, 0.15, 0.15, 0.15, 0.15, 0.16, 0.16, 0.17, 0.10, 0.016, 0.13, 0.08], np.float32)
IDENTITY = {"type": "scale", "multiply": 1.0, "add": 0.0}


def _save(nodes: list, inits: list, x: onnx.ValueInfoProto, y: onnx.ValueInfoProto, path: Path,
          opset: int) -> Path:
    graph = helper.make_graph(nodes, path.stem, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="pytorch")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _c(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def pixel_mlp(path: Path, *, outputs: int = 2, sigmoid: bool = False, nc11: bool = False, reshape: str = "flatten",
              softmax: bool = False, opset: int = 18, hidden: int = 32, seed: int = 0) -> Path:
    """``[N, 13]`` (or ``[N, 13, 1, 1]``) -> Sub(mean) -> Div(std) -> [Flatten | torch-style Reshape] -> Gemm ->
    Relu -> Gemm -> Relu -> Gemm -> [Softmax | Sigmoid]. The weights make a spectral cloud-ish decision."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (hidden, 13))
    w2 = rng.normal(0, 0.3, (hidden, hidden))
    w3 = rng.normal(0, 0.3, (outputs, hidden))
    shape_in = ["N", 13, 1, 1] if nc11 else ["N", 13]
    cshape = (1, 13, 1, 1) if nc11 else (13,)
    inits = [_c("mean", MEAN.reshape(cshape)), _c("std", STD.reshape(cshape)), _c("w1", w1),
             _c("b1", rng.normal(0, 0.1, hidden)), _c("w2", w2), _c("b2", rng.normal(0, 0.1, hidden)), _c("w3", w3),
             _c("b3", np.zeros(outputs))]
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centred"], name="/norm/Sub"),
             helper.make_node("Div", ["centred", "std"], ["normed"], name="/norm/Div")]
    flat = "normed"
    if nc11 and reshape == "flatten":
        nodes.append(helper.make_node("Flatten", ["normed"], ["flat"], name="/Flatten", axis=1))
        flat = "flat"
    elif nc11:  # what torch writes for x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat -> Reshape
        inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                  numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
                  numpy_helper.from_array(np.array([0], np.int64), "axes0")]
        nodes += [helper.make_node("Shape", ["normed"], ["shp"], name="/Shape"),
                  helper.make_node("Gather", ["shp", "zero"], ["n"], name="/Gather", axis=0),
                  helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="/Unsqueeze"),
                  helper.make_node("Concat", ["n1", "minus1"], ["newshape"], name="/Concat", axis=0),
                  helper.make_node("Reshape", ["normed", "newshape"], ["flat"], name="/Reshape")]
        flat = "flat"
    nodes += [helper.make_node("Gemm", [flat, "w1", "b1"], ["h1"], name="/fc1/Gemm", transB=1),
              helper.make_node("Relu", ["h1"], ["r1"], name="/Relu"),
              helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="/fc2/Gemm", transB=1),
              helper.make_node("Relu", ["h2"], ["r2"], name="/Relu_1"),
              helper.make_node("Gemm", ["r2", "w3", "b3"], ["logits" if (sigmoid or softmax) else "y"],
                               name="/fc3/Gemm", transB=1)]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["y"], name="/Sigmoid"))
    elif softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], name="/Softmax", axis=1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])
    return _save(nodes, inits, x, y, path, opset)


def patch_classifier(path: Path, *, patch: int = 64, bands: int = 13, classes: int = 2, maxpool: bool = True,
                     opset: int = 17, seed: int = 0, head: str = "gap") -> Path:
    """``[B, C, p, p]`` -> Conv3x3(pad 1) -> Relu -> [MaxPool 2] -> Conv3x3(pad 1, stride 2) -> Relu ->
    Conv1x1 -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> ``[B, K]`` (``head="mean"``: ReduceMean)."""
    rng = np.random.default_rng(seed)
    f1, f2 = 8, 12
    inits = [_c("c1w", rng.normal(0, 0.4, (f1, bands, 3, 3))), _c("c1b", rng.normal(0, 0.1, f1)),
             _c("c2w", rng.normal(0, 0.3, (f2, f1, 3, 3))), _c("c2b", rng.normal(0, 0.1, f2)),
             _c("c3w", rng.normal(0, 0.3, (f2, f2, 1, 1))), _c("c3b", rng.normal(0, 0.1, f2)),
             _c("fw", rng.normal(0, 1.0, (classes, f2))), _c("fb", np.zeros(classes))]
    nodes = [helper.make_node("Conv", ["x", "c1w", "c1b"], ["a1"], name="/c1/Conv", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a1"], ["r1"], name="/Relu")]
    last = "r1"
    if maxpool:
        nodes.append(helper.make_node("MaxPool", ["r1"], ["p1"], name="/MaxPool", kernel_shape=[2, 2],
                                      strides=[2, 2]))
        last = "p1"
    nodes += [helper.make_node("Conv", [last, "c2w", "c2b"], ["a2"], name="/c2/Conv", kernel_shape=[3, 3],
                               pads=[1, 1, 1, 1], strides=[2, 2]),
              helper.make_node("Relu", ["a2"], ["r2"], name="/Relu_1"),
              helper.make_node("Conv", ["r2", "c3w", "c3b"], ["a3"], name="/c3/Conv", kernel_shape=[1, 1]),
              helper.make_node("Relu", ["a3"], ["r3"], name="/Relu_2")]
    if head == "gap":
        nodes += [helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="/GlobalAveragePool"),
                  helper.make_node("Flatten", ["g"], ["f"], name="/Flatten", axis=1)]
    else:
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes23"))
        nodes.append(helper.make_node("ReduceMean", ["r3", "axes23"], ["f"], name="/ReduceMean", keepdims=0))
    nodes.append(helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="/fc/Gemm", transB=1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", bands, patch, patch])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", classes])
    return _save(nodes, inits, x, y, path, opset)


def card(onnx_path: Path, *, kind: str, classes: tuple[str, ...] = ("clear", "cloud"), patch_size: int = 64,
         output: str | None = None, **extra: object) -> Path:
    """The user's card beside ``onnx_path`` (normalisation inside the graph: the card's is the identity)."""
    import yaml

    doc = {"name": onnx_path.stem, "onnx": onnx_path.name, "bands": list(L1C13), "product_level": "l1c",
           "resolution": 10.0, "normalisation": IDENTITY, "kind": kind, "patch_size": patch_size,
           "classes": list(classes), **({"output": output} if output else {}), **extra}
    path = onnx_path.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


__all__ = ["L1C13", "MEAN", "STD", "ModelCard", "card", "patch_classifier", "pixel_mlp", "recentre"]


def recentre(onnx_path: Path, inputs: np.ndarray, bias: str) -> None:
    """Lower the last channel's bias (initializer ``bias``) so that about half of ``inputs`` (samples in the
    graph's input layout) fall on each side of the model's decision: a mask then compares decisions."""
    import onnxruntime as ort

    scores = ort.InferenceSession(str(onnx_path)).run(None, {"x": inputs})[0]
    margin = scores[:, -1] - (scores[:, 0] if scores.shape[1] > 1 else 0.0)
    if scores.shape[1] == 1 and np.all((scores >= 0) & (scores <= 1)):  # a sigmoid output: centre its logit
        margin = np.log(scores[:, 0] / (1 - scores[:, 0]))
    model = onnx.load(str(onnx_path))
    t = next(t for t in model.graph.initializer if t.name == bias)
    b = numpy_helper.to_array(t).copy()
    b[-1] -= float(np.median(margin))
    t.CopyFrom(numpy_helper.from_array(b, bias))
    onnx.save(model, str(onnx_path))
