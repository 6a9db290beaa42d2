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
# # Bring your own model
#
# Any ONNX segmentation model runs through cloudmask once it has a **model card**: a small YAML file
# saying which bands it takes (STAC common names, in input order), the product level it was trained
# on, its resolution (metres), the normalisation `(reflectance - mean) / std`, the patch size, and
# what its output channels mean.
#
# To stay offline this notebook "brings" a copy of a built-in ukis-csmask graph, writes a card for
# it, runs it, compares it with another model, and checks whether the Metis AI accelerator's
# compiler could take it.

# %%
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from cloudmask import load_model, open_scene, predict, search
from cloudmask.console import table
from cloudmask.quicklook import compare_masks, fractions_table, mask_agreement
from cloudmask.sample import default_catalog_dir, make_catalog

SIZE = int(os.environ.get("CLOUDMASK_NOTEBOOK_SIZE", "600"))
catalog = make_catalog(default_catalog_dir() / f"notebooks-{SIZE}", n_scenes=3, size=SIZE)
items = search(catalog)
scratch = os.environ.get("CLOUDMASK_NOTEBOOK_OUT")  # set by the tests; default: the system temp dir
if scratch:
    Path(scratch).mkdir(parents=True, exist_ok=True)
work = Path(tempfile.mkdtemp(prefix="cloudmask-byom-", dir=scratch))

# %% [markdown]
# ## An ONNX file
#
# Stand-in for your own export (`torch.onnx.export(...)`): the graph of `ukis-6b-l2a`, copied.

# %%
builtin = load_model("ukis-6b-l2a")
onnx_path = work / "my_model.onnx"
shutil.copyfile(builtin.onnx_path, onnx_path)
print(onnx_path, f"{onnx_path.stat().st_size / 1e6:.1f} MB")

# %% [markdown]
# ## Its model card
#
# `onnx` is relative to the card. Normalisation statistics are in reflectance units (0–1).

# %%
def fmt(values):
    return "[" + ", ".join(f"{v:.6f}" for v in values) + "]"


card_text = f"""\
name: my-cloud-model
description: my U-Net for Sentinel-2 L2A clouds and shadows
version: "0.1"
onnx: my_model.onnx
bands: [blue, green, red, nir, swir16, swir22]   # STAC common names, model input order
product_level: l2a
resolution: 30                                    # metres
patch_size: 256                                   # pixels
normalisation:
  type: standardize
  mean: {fmt(builtin.mean)}
  std: {fmt(builtin.std)}
classes: [clear, cloud, shadow]                   # meaning of each output channel
output: logits                                    # or: probabilities
"""
card_path = work / "my_model.yaml"
card_path.write_text(card_text)
print(card_text)

# %%
card = load_model(card_path)  # also: load_model(onnx_path) finds my_model.yaml beside it
print(card.name, card.bands, card.product_level, card.resolution, "m,", card.patch_size, "px")
assert yaml.safe_load(card_path.read_text())["bands"] == list(card.bands)

# %% [markdown]
# ## Run it
#
# `open_scene(item, model=card)` loads the bands the card names at its resolution; `predict` runs it.
# On the command line the same is `cloudmask run --model my_model.yaml ...`.

# %%
ds = open_scene(items[0], model=card)
mine = predict(ds, model=card)
reference = predict(ds, model="ukis-6b-l2a")
print("model:", mine.attrs["model"], "| agreement with ukis-6b-l2a:",
      f"{mask_agreement(mine, reference)['agreement']:.2f} %")

# %% [markdown]
# ## Compare two models
#
# A different model — the 4-band `ukis-4b-l2a` (blue, green, red, nir) — side by side with ours.
# The difference panel colours each disagreeing pixel by the second model's class.

# %%
other = predict(open_scene(items[0], model="ukis-4b-l2a"), model="ukis-4b-l2a")
fig = compare_masks(mine, other, ds, titles=(card.name, "ukis-4b-l2a"))
print(table(fractions_table({card.name: mine, "ukis-4b-l2a": other})))
agreement = mask_agreement(mine, other)
print("confusion (rows: mine, columns: ukis-4b-l2a;", agreement["classes"], "):", agreement["confusion"])

# %% [markdown]
# ## Will it compile for Metis?
#
# `cloudmask.metis.check.check` evaluates every node of the graph against the Metis compiler's
# operator rules (same as `cloudmask metis check my_model.onnx`). A graph exported for training
# usually has a dynamic batch and run-time shapes; `cloudmask metis export` pins batch 1 and static
# shapes and writes a card for the result, which is checked again.

# %%
try:
    from cloudmask.metis.check import check
    from cloudmask.metis.export import export
except ImportError as err:  # the Metis tooling is optional
    check = export = None
    print(f"Metis op check unavailable ({err}); install cloudmask with its metis module to run it")

# %%
if check is not None:
    report = check(onnx_path)
    print(report.format(max_rule_chars=70))
    print("\ncompilable as is:", report.compilable)

# %%
if export is not None and check is not None:
    exported = export(card_path, work / "metis")
    report_static = check(exported.onnx_path)
    print(report_static.format(max_rule_chars=70))
    print("\ncompilable after export:", report_static.compilable, "| card:", exported.card_path)
    # the exported graph still gives the same mask on the CPU
    same = predict(ds, model=exported.card_path)
    print(f"exported graph agreement with the original: {mask_agreement(same, mine)['agreement']:.2f} %")
