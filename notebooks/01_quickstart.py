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
# # cloudmask quickstart: catalogue → masks → picture
#
# cloudmask turns Sentinel-2 scenes listed in a STAC catalogue into cloud / cloud-shadow masks
# (uint8 Cloud-Optimised GeoTIFFs: **0 clear, 1 cloud, 2 shadow, 255 nodata**).
#
# This notebook uses the *demo catalogue* that ships with cloudmask: five real Sentinel-2 L2A chips
# (512 × 512 px at 10 m, blue/green/red/nir; On Cloud N challenge data, CC BY 4.0 — "Contains modified
# Copernicus Sentinel data 2020. Radiant Earth Foundation (2022), Sentinel-2 Cloud Cover Segmentation
# Dataset, doi:10.34911/RDNT.HFQ6M7"), so it runs offline in seconds. With your own scenes, point
# `search` at a STAC API (`"earth-search"`, `"planetary-computer"`, `"cdse"` or a URL) instead.
#
# Environment variable (used by the tests): `CLOUDMASK_NOTEBOOK_OUT` (where masks go; default a
# temporary directory).

# %%
import os
import tempfile
from pathlib import Path

from IPython.display import Image, display

from cloudmask import mask_scene, open_scene, predict, search
from cloudmask.console import table
from cloudmask.evaluate import evaluate
from cloudmask.quicklook import plot_scene
from cloudmask.sample import demo_catalog

OUT = Path(os.environ.get("CLOUDMASK_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="cloudmask-quickstart-"))

# %% [markdown]
# ## 1. A catalogue and a search
#
# `demo_catalog()` is the path of the shipped static STAC catalogue (Earth Search `sentinel-2-l2a`
# layout). `search` takes the same filters as `cloudmask run`: `bbox` (degrees), `aoi`, `datetime`,
# `max_cloud` (percent)... Here `eo:cloud_cover` is the cloud share of the chips' ensemble prediction.

# %%
catalog = demo_catalog()
items = search(catalog)
for item in items:
    print(f"{item.id}  {item.datetime:%Y-%m-%d}  eo:cloud_cover {item.properties['eo:cloud_cover']:5.1f} %  "
          f"{item.properties['title'].split(': ')[1]}")

# %%
few_clouds = search(catalog, max_cloud=50)
print([it.id for it in few_clouds])

# %% [markdown]
# ## 2. Mask every scene
#
# `mask_scene` does what `cloudmask run` does for one scene: picks the model (`auto`: the chips have
# no SWIR bands, so the 4-band L2A model `ukis-4b-l2a`), streams the scene through it at the model's
# resolution (30 m) on the chip's own grid, and writes the mask COG, a quicklook PNG and a STAC item
# into `OUT`, refreshing `OUT/catalog.json`.

# %%
results = [mask_scene(item, out=OUT) for item in items]
rows = [{**r.row(), "model": r.model} for r in results]
print(table(rows, ["scene", "model", "clear", "cloud", "shadow", "nodata", "seconds"]))

# %% [markdown]
# Class columns are percent of the *valid* pixels. The overcast chip (adxp) comes out almost all
# cloud, the farmland near Addis Ababa (akny) mostly clear.

# %%
for r in results:
    print(r.mask.name, "|", r.extra["quicklook"].name, "|", r.extra["item"].relative_to(OUT))
print("output catalogue:", results[-1].extra["catalog"])

# %% [markdown]
# ## 3. Look at it
#
# Each scene gets a quicklook: true colour beside true colour with clouds (yellow) and shadows
# (magenta) overlaid. Here the lake chip: open water of Lake Victoria with scattered cumulus and their
# shadows (the dark water is mostly called shadow: see notebook 02):

# %%
display(Image(filename=str(results[0].extra["quicklook"])))

# %% [markdown]
# The same picture from Python objects: `open_scene` gives the scene as a lazy xarray Dataset (at
# the model's bands and resolution) and `predict` masks it (in memory, same engine, same result as
# the COG).

# %%
ds = open_scene(items[0])
mask = predict(ds, results[0].model)
fig = plot_scene(ds, mask, title=f"{items[0].id} — {mask.attrs['model']}")

# %%
import rioxarray  # noqa: E402,F401

on_disk = rioxarray.open_rasterio(results[0].mask).squeeze("band", drop=True)
print("identical to the COG:", bool((on_disk.values == mask.values).all()))

# %% [markdown]
# ## 4. A second opinion
#
# Each chip carries the challenge author's model-ensemble cloud prediction (asset `ensemble`, 10 m,
# 0/1). It is a model output, not ground truth, but a useful check: `cloudmask.evaluate` resamples the
# 30 m mask onto its 10 m grid (nearest) and scores cloud vs not cloud (our shadow counts as not
# cloud). The same from the shell: `cloudmask evaluate OUT cloudmask/data/demo --reference-classes
# 0=clear,1=cloud`.

# %%
for item, r in zip(items, results, strict=True):
    s = evaluate(r.mask, item.assets["ensemble"].get_absolute_href(), reference_classes="0=clear,1=cloud")
    print(f"{item.id}: agrees with the ensemble on {100 * s.overall_accuracy:5.1f} % of pixels, "
          f"cloud IoU {s.per_class()['cloud']['iou']:.2f}")
