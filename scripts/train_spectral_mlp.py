"""Train the example per-pixel spectral MLP (10 bands -> 32 -> 32 -> clear/cloud) and export it as ONNX.

Data: the real 13-band Sentinel-2 L1C patch that ships with s2cloudless's tests
(``../shared/data/real/s2cloudless-l1c-arrays/input_arrays.npz``, 856 x 512 px, TOA reflectance 0-1).
Labels: the ``s2cloudless`` package's own LightGBM pixel model (inside the installed package; nothing is
downloaded), per pixel, thresholded at 0.4 (its default) without the spatial averaging/dilation a
per-pixel model cannot see. These are *model* labels: the MLP learns to imitate s2cloudless.
Inputs: s2cloudless's 10 bands (B01, B02, B04, B05, B08, B8A, B09, B10, B11, B12).

Split: rows 0-599 train, rows 650-855 held out (a 50-row gap against spatial leakage); the held-out
agreement with s2cloudless is printed and written into the card.

Writes (``--out``, default ``cloudmask/data/models/spectral-mlp``): ``model.onnx`` (every layer a
``Gemm``), ``model-matmul.onnx`` (the same weights as ``MatMul`` + ``Add``), ``card.yaml`` and
``card-matmul.yaml``. Input ``reflectance`` ``[N, 10]`` (N dynamic), output ``logits`` ``[N, 2]``.

Run: ``.venv/bin/python scripts/train_spectral_mlp.py`` (a few minutes on two busy CPU cores; needs
``pip install "s2-cloudmask[train]"``: scikit-learn and s2cloudless).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger("train_spectral_mlp")

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "s2cloudless-l1c-arrays"
OUT = Path(__file__).resolve().parents[1] / "cloudmask" / "data" / "models" / "spectral-mlp"
#: s2cloudless's bands (indices into the all-bands order B01..B12 incl. B10) and their STAC common names.
BAND_IDS = [0, 1, 3, 4, 7, 8, 9, 10, 11, 12]
BANDS = ["coastal", "blue", "red", "rededge1", "nir", "nir08", "nir09", "cirrus", "swir16", "swir22"]
TRAIN_ROWS, TEST_ROWS = (0, 600), (650, 856)
THRESHOLD = 0.4
OPSET = 17


def s2cloudless_labels(image: np.ndarray) -> np.ndarray:
    """Per-pixel cloud probability of the s2cloudless LightGBM model for ``(H, W, 13)`` reflectance."""
    from s2cloudless import S2PixelCloudDetector

    det = S2PixelCloudDetector(threshold=THRESHOLD, all_bands=True, average_over=None, dilation_size=None)
    return np.asarray(det.get_cloud_probability_maps(image[np.newaxis]))[0]


def mlp_layers(weights: list[np.ndarray], biases: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(W (in, out) float32, b (out,) float32), ...]``."""
    return [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in zip(weights, biases, strict=True)]


def to_onnx(layers: list[tuple[np.ndarray, np.ndarray]], form: str, name: str) -> onnx.ModelProto:
    """An MLP graph ``[N, C] -> [N, K]`` with ReLU between layers: ``form`` ``gemm`` or ``matmul`` (MatMul + Add)."""
    nodes, inits = [], []
    x = "reflectance"
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        y = "logits" if last else f"h{i}"
        pre = y if last else f"z{i}"
        if form == "gemm":  # y = x @ W^T + b with W stored (out, in), transB=1 as torch exports it
            inits += [numpy_helper.from_array(w.T.copy(), f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [pre], transB=1, name=f"fc{i}"))
        else:
            inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"], name=f"matmul{i}"))
            nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [pre], name=f"add{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [pre], [y], name=f"relu{i}"))
        x = y
    k = layers[-1][0].shape[1]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("reflectance", TensorProto.FLOAT, ["N", layers[0][0].shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cloudmask")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA / "input_arrays.npz")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--samples", type=int, default=120_000, help="training pixels (random, of the train rows)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from sklearn.neural_network import MLPClassifier

    image = np.load(args.data)["s2_im"][0].astype(np.float32)  # (856, 512, 13)
    prob = s2cloudless_labels(image)
    labels = (prob >= THRESHOLD).astype(np.int64)
    x = image[:, :, BAND_IDS]
    rng = np.random.default_rng(args.seed)
    xtr = x[TRAIN_ROWS[0] : TRAIN_ROWS[1]].reshape(-1, len(BANDS))
    ytr = labels[TRAIN_ROWS[0] : TRAIN_ROWS[1]].reshape(-1)
    pick = rng.choice(len(xtr), size=min(args.samples, len(xtr)), replace=False)
    xtr, ytr = xtr[pick], ytr[pick]
    mean, std = xtr.mean(axis=0), xtr.std(axis=0) + 1e-6
    clf = MLPClassifier(hidden_layer_sizes=(32, 32), activation="relu", solver="adam", alpha=1e-4,
                        batch_size=512, learning_rate_init=2e-3, max_iter=60, random_state=args.seed,
                        early_stopping=True, validation_fraction=0.1, n_iter_no_change=8)
    clf.fit((xtr - mean) / std, ytr)
    xte = x[TEST_ROWS[0] : TEST_ROWS[1]].reshape(-1, len(BANDS))
    yte = labels[TEST_ROWS[0] : TEST_ROWS[1]].reshape(-1)
    pred = clf.predict((xte - mean) / std)
    agree = float((pred == yte).mean())
    inter, union = int(((pred == 1) & (yte == 1)).sum()), int(((pred == 1) | (yte == 1)).sum())
    iou = inter / union if union else float("nan")
    log.info("held-out rows %s: agreement with s2cloudless %.4f, cloud IoU %.4f, cloud share %.3f (labels %.3f)",
             TEST_ROWS, agree, iou, float(pred.mean()), float(yte.mean()))

    # sklearn's binary MLP has one logistic output; expand it to two logits [0, z] (softmax == sigmoid).
    weights, biases = list(clf.coefs_), list(clf.intercepts_)
    if weights[-1].shape[1] == 1:
        weights[-1] = np.concatenate([np.zeros_like(weights[-1]), weights[-1]], axis=1)
        biases[-1] = np.concatenate([np.zeros_like(biases[-1]), biases[-1]])
    layers = mlp_layers(weights, biases)
    args.out.mkdir(parents=True, exist_ok=True)
    evaluation = {"data": "s2cloudless TestInputs/input_arrays.npz", "labels": f"s2cloudless pixel probability >= {THRESHOLD}",
                  "train_rows": list(TRAIN_ROWS), "held_out_rows": list(TEST_ROWS),
                  "held_out_agreement": round(agree, 4), "held_out_cloud_iou": round(iou, 4)}
    for form, onnx_name, card_name in (("gemm", "model.onnx", "card.yaml"),
                                       ("matmul", "model-matmul.onnx", "card-matmul.yaml")):
        model = to_onnx(layers, form, f"spectral-mlp-{form}")
        onnx.save(model, str(args.out / onnx_name))
        card = {
            "name": "spectral-mlp" if form == "gemm" else "spectral-mlp-matmul",
            "onnx": onnx_name,
            "kind": "pixel",
            "bands": BANDS,
            "product_level": "l1c",
            "resolution": 10.0,
            "normalisation": {"type": "standardize", "mean": [round(float(v), 6) for v in mean],
                              "std": [round(float(v), 6) for v in std]},
            "classes": ["clear", "cloud"],
            "output": "logits",
            "version": "0.1.0",
            "description": (f"Example per-pixel spectral MLP (10 bands -> 32 -> 32 -> 2, {form}), trained by "
                            "scripts/train_spectral_mlp.py to imitate s2cloudless's pixel model on real L1C pixels"),
            "evaluation": evaluation,
        }
        (args.out / card_name).write_text(yaml.safe_dump(card, sort_keys=False))
    log.info("wrote %s", json.dumps(sorted(p.name for p in args.out.iterdir())))


if __name__ == "__main__":
    main()
