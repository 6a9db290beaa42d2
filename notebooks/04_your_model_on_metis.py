# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Your own model on an Axelera Metis
#
# The whole path of `docs/metis.md`, on the real demo chips shipped with cloudmask (five Sentinel-2 L2A
# chips, 512 × 512 px at 10 m, blue/green/red/nir; On Cloud N, CC BY 4.0), for two models you might bring:
#
# - a **pixel MLP** (`[N, 4] → [N, 2]`: one spectrum per sample, Gemm + Relu, as an exporter leaves it);
# - a **scene filter**: a 64-px patch classifier (`[B, 4, 64, 64] → [B, 2]`, "is this patch cloudy").
#
# Steps: ONNX → card → `metis check` → `metis export` (fold, cores) → `metis calibration` on the real chips →
# compile → `run --backend metis` → compare with the CPU mask.
#
# **No Metis and no Voyager SDK here.** Compiling and running go through `cloudmask.metis.fake_sdk`, an
# emulation of the SDK's documented Python APIs (the low-level `axelera.runtime` of SDK 1.6 and the `op` API
# of SDK 1.8) that runs the exported float graph on int8-rounded tensors. It shows the plumbing works end to
# end; it says nothing about the real compiler's accuracy or speed. With the SDK installed, drop the
# `fake_sdk.installed(...)` blocks and the same calls use it.

# %%
import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import rasterio
import yaml
from onnx import TensorProto, helper, numpy_helper

from cloudmask import load_model, mask_scene, open_scene, search
from cloudmask.api import open_mask
from cloudmask.metis import calibration_set_from_stac, check, export, fake_sdk
from cloudmask.metis.memory import auto_fold
from cloudmask.quicklook import compare_masks, mask_agreement
from cloudmask.runtime.metis import sdk_info
from cloudmask.sample import demo_catalog

scratch = os.environ.get("CLOUDMASK_NOTEBOOK_OUT")  # set by the tests; default: the system temp dir
if scratch:
    Path(scratch).mkdir(parents=True, exist_ok=True)
work = Path(tempfile.mkdtemp(prefix="cloudmask-metis-", dir=scratch))
catalog = demo_catalog()
items = {it.id.split("_")[1]: it for it in search(catalog)}
print(sorted(items))

# %% [markdown]
# ## 1. Two models of your own
#
# Stand-ins for your `torch.onnx.export(...)`: both are fitted here in a few lines of numpy to the chips'
# ensemble cloud labels (asset `ensemble`), so that they make sensible masks, and written as ONNX the way
# exporters write them (Gemm layers, a dynamic batch dimension).

# %%
BANDS = ["blue", "green", "red", "nir"]
chips = {}
for name, item in items.items():
    ds = open_scene(item, bands=BANDS, resolution=10).compute()
    x = np.stack([ds[b].values for b in BANDS]).astype(np.float32)
    with rasterio.open(item.assets["ensemble"].get_absolute_href()) as src:
        label = src.read(1)
    chips[name] = (x, label)
pixels = np.concatenate([x.reshape(4, -1) for x, _ in chips.values()], axis=1)
labels = np.concatenate([lab.reshape(-1) for _, lab in chips.values()])
ok = np.isfinite(pixels).all(0) & (labels <= 1)
mean, std = pixels[:, ok].mean(1), pixels[:, ok].std(1)
print("pixels:", ok.sum(), "cloud share of the labels:", round(float(labels[ok].mean()), 3))


def fit_pixel_mlp(x: np.ndarray, y: np.ndarray, hidden: int = 16, seed: int = 0):
    """A 4 -> hidden -> 2 MLP: random ReLU features, output layer by least squares (fast, deterministic)."""
    rng = np.random.default_rng(seed)
    w0 = rng.normal(0, 1, (4, hidden)).astype(np.float32)
    b0 = rng.normal(0, 0.5, hidden).astype(np.float32)
    h = np.maximum(x @ w0 + b0, 0)
    a = np.c_[h, np.ones(len(h))]
    coef, *_ = np.linalg.lstsq(a, np.where(y > 0, 4.0, -4.0), rcond=None)
    w1 = np.zeros((hidden, 2), np.float32)
    w1[:, 1] = coef[:-1]
    b1 = np.array([0.0, coef[-1]], np.float32)
    return w0, b0, w1, b1


sample = np.random.default_rng(1).choice(np.flatnonzero(ok), 60_000, replace=False)
xn = ((pixels[:, sample].T - mean) / std).astype(np.float32)
w0, b0, w1, b1 = fit_pixel_mlp(xn, labels[sample])

x_in = helper.make_tensor_value_info("reflectance", TensorProto.FLOAT, ["N", 4])
y_out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])
graph = helper.make_graph(
    [helper.make_node("Gemm", ["reflectance", "W0", "B0"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
     helper.make_node("Gemm", ["r", "W1", "B1"], ["logits"])],
    "pixel-mlp", [x_in], [y_out],
    [numpy_helper.from_array(a, n) for a, n in ((w0, "W0"), (b0, "B0"), (w1, "W1"), (b1, "B1"))])
mlp_dir = work / "my-mlp"
mlp_dir.mkdir()
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(mlp_dir / "model.onnx"))

# the scene filter: mean of each normalised band over the 64-px patch -> one Gemm -> [clear, cloud]
P = 64
feats, targets = [], []
for x, lab in chips.values():
    xn_chip = (x - mean[:, None, None]) / std[:, None, None]
    for i in range(0, 512, P):
        for j in range(0, 512, P):
            feats.append(np.nanmean(xn_chip[:, i : i + P, j : j + P].reshape(4, -1), axis=1))
            targets.append(float((lab[i : i + P, j : j + P] == 1).mean() > 0.5))
f = np.c_[np.array(feats), np.ones(len(feats))]
coef, *_ = np.linalg.lstsq(f, np.where(np.array(targets) > 0, 4.0, -4.0), rcond=None)
wf = np.zeros((4, 2), np.float32)
wf[:, 1] = coef[:4]
bf = np.array([0.0, coef[4]], np.float32)
x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, P, P])
y_out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 2])
graph = helper.make_graph(
    [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["v"]),
     helper.make_node("Gemm", ["v", "WF", "BF"], ["scores"])],
    "scene-filter", [x_in], [y_out], [numpy_helper.from_array(wf, "WF"), numpy_helper.from_array(bf, "BF")])
filter_dir = work / "my-filter"
filter_dir.mkdir()
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(filter_dir / "model.onnx"))
print(mlp_dir / "model.onnx", filter_dir / "model.onnx")

# %% [markdown]
# ## 2. Their model cards
#
# The card says which bands the model takes, how reflectance is normalised and what its outputs mean
# (README, "Bring your own model"). `kind: pixel` for one spectrum per sample; `kind: patch-classifier` for
# one label per patch (the mask is then at patch resolution: one pixel per 64 × 64 px).

# %%
common = {"bands": BANDS, "product_level": "l2a", "resolution": 10.0, "classes": ["clear", "cloud"],
          "normalisation": {"type": "standardize", "mean": [float(v) for v in mean], "std": [float(v) for v in std]}}
(mlp_dir / "card.yaml").write_text(yaml.safe_dump({"name": "my-mlp", "onnx": "model.onnx", "kind": "pixel", **common}))
(filter_dir / "card.yaml").write_text(yaml.safe_dump(
    {"name": "my-filter", "onnx": "model.onnx", "kind": "patch-classifier", "patch_size": P, **common}))
mlp, scene_filter = load_model(mlp_dir / "card.yaml"), load_model(filter_dir / "card.yaml")
print(mlp.name, mlp.kind, "|", scene_filter.name, scene_filter.kind, scene_filter.patch_size)

# %% [markdown]
# ## 3. `metis check` on the graphs as exported
#
# The Metis compiler takes static batch-1 graphs. As exported, the MLP would classify **one pixel per
# call** and both graphs have a dynamic batch: `check` says why they would not compile as they are.

# %%
for card in (mlp, scene_filter):
    report = check(card.onnx_path)
    print(f"{card.name}: compilable as exported: {report.compilable}")
    print("  " + "\n  ".join(line for line in report.format().splitlines() if line.lstrip().startswith("MODEL")))

# %% [markdown]
# ## 4. `metis export`: fold and cores
#
# The MLP is **batch-folded**: every Gemm becomes a 1 × 1 Conv over `[1, 4, H, W]`, so one call classifies
# H × W pixels with the same weights. `auto_fold` picks the largest fold whose memory estimate (int8
# weights + the largest pair of live activations, `cloudmask.metis.memory`) fits the budget given; here a
# deliberately small 0.75 MiB, to show the choice. `cores="4"` compiles one batch-1 instance over all four
# cores (for a model that fits only once). The filter takes **four patches per call**
# (`patches_per_call=4`): they are stacked along the channels of one `[1, 16, 64, 64]` input, its global
# pooling becomes per-patch pooling and its Gemm a grouped 1 × 1 Conv, so one call returns the four patches'
# scores, each what the patch gets alone; it runs as four one-core replicas (`cores="single"`).
# On the command line: `cloudmask metis export --model my-mlp/card.yaml --out exp-mlp --fold auto
# --memory-mb 0.75 --cores 4` and `cloudmask metis export --model my-filter/card.yaml --out exp-filter
# --cores 1 --patches-per-call 4`.

# %%
fold, estimate, budget = auto_fold(mlp, cores=4, memory_mb=0.75)  # what --fold auto --memory-mb 0.75 does
exp_mlp = export(mlp_dir / "card.yaml", work / "exp-mlp", "4", fold=fold)
exp_filter = export(filter_dir / "card.yaml", work / "exp-filter", "single", patches_per_call=4)
print("MLP exported:", list(exp_mlp.input_shape), "fold", fold, "|", estimate.format())
print("filter exported:", list(exp_filter.input_shape))
for res in (exp_mlp, exp_filter):
    print(f"{res.card.name}: compilable after export: {check(res.onnx_path).compilable}")

# %% [markdown]
# ## 5. `metis calibration` on the real chips
#
# INT8 post-training quantization needs 100–400 representative inputs, normalised float32 NCHW batch 1:
# windows of the real chips, stratified by what the model predicts. (CLI: `cloudmask metis calibration
# --stac CATALOG --model exp-mlp/card.yaml --out calib-mlp --samples 40`.) The folded MLP's windows are its
# fold; the stacked filter's set is made with the original card (64-px patches), and `compile.py` stacks
# four of them per input.

# %%
calib_mlp = calibration_set_from_stac(str(catalog), work / "calib-mlp", exp_mlp.card_path, samples=40)
calib_filter = calibration_set_from_stac(str(catalog), work / "calib-filter", filter_dir / "card.yaml", samples=40)
print(calib_mlp, "\n", calib_filter)

# %% [markdown]
# ## 6. Compile
#
# `export` wrote `compile.py` beside each graph; on a machine with the Voyager SDK you run
# `python exp-mlp/compile.py --calibration calib-mlp` (add `--axm` for SDK 1.8's single-file archive). It
# passes the multicore settings in the keyword names the installed SDK's `CompilerConfig` declares (1.6:
# `aipu_cores_used`, `resources_used`, `multicore_mode`; the 1.8 docs' example: `aipu_cores`, `resources`)
# and writes `card-metis.json`: the exported card plus `metis_model`, relative to the card. Here the
# emulated compilers of SDK 1.6 (MLP, `model.json`) and SDK 1.8 (filter, `.axm`) stand in.


# %%
def run_compile_script(res, calibration: Path, generation: str, *extra: str) -> Path:
    spec = importlib.util.spec_from_file_location(f"compile_{res.card.name}", res.compile_script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with fake_sdk.installed(generation):
        assert module.main(["--calibration", str(calibration), *extra]) == 0
    return res.out_dir / "card-metis.json"


mlp_metis = load_model(run_compile_script(exp_mlp, calib_mlp.parent, "1.6"))
filter_metis = load_model(run_compile_script(exp_filter, calib_filter.parent, "1.8", "--axm"))
print(mlp_metis.extra["metis_model"], "\n", filter_metis.extra["metis_model"])

# %% [markdown]
# ## 7. `run --backend metis`, and the CPU mask beside it
#
# `cloudmask metis info` says which SDK and API are in use and which devices it finds. Then each chip is
# masked twice: by your original ONNX on the CPU (ONNX Runtime) and by the compiled model through the
# (emulated) Metis runtime: the MLP through the low-level API (one `Connection` + `ModelInstance` over all
# four cores, int8 NHWC tensors quantized and padded on the host), the filter through SDK 1.8's
# `op.load(<model>.axm).optimized()`, one call per four stacked patches.

# %%
with fake_sdk.installed("1.6"):
    print(sdk_info().format())
agree = {}
for card_cpu, card_metis, generation in ((mlp, mlp_metis, "1.6"), (scene_filter, filter_metis, "1.8")):
    for name, item in items.items():
        cpu = mask_scene(item, work / "cpu" / card_cpu.name, card_cpu, quicklook=False)
        with fake_sdk.installed(generation):
            dev = mask_scene(item, work / "metis" / card_cpu.name, card_metis, backend="metis", quicklook=False)
        m_cpu, m_dev = open_mask(cpu), open_mask(dev)
        a = mask_agreement(m_cpu, m_dev)
        agree[(card_cpu.name, name)] = (m_cpu, m_dev, a["agreement"])
        print(f"{card_cpu.name} on {name}: {dev.stats.calls} device calls ({dev.stats.per_call} per call; "
              f"the original on the CPU: {cpu.stats.calls}), metis vs CPU agreement {a['agreement']:.2f} %")

# %%
cpu_mask, metis_mask, _ = agree[("my-mlp", "adwp")]
compare_masks(cpu_mask, metis_mask, titles=("my-mlp on the CPU", "my-mlp, compiled (emulated Metis)"))

# %% [markdown]
# The differences are pixels whose logits sit within one int8 step of the decision boundary: the emulated
# device rounds input and output to int8 with the scales calibration chose. On a real Metis the compiler
# also quantizes every internal layer; measure that with `cloudmask metis int8-preview` before trusting a
# compiled model, and on the device with the steps above.
