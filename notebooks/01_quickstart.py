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
# This notebook uses the built-in *sample catalogue*: a few small synthetic Sentinel-2 L2A scenes
# written to disk, so it runs offline in seconds. With real data, point `search` at a STAC API
# (`"earth-search"`, `"planetary-computer"`, `"cdse"` or a URL) instead.
#
# Environment variables (used by the tests): `CLOUDMASK_SAMPLE_DIR` (where the sample catalogue
# goes), `CLOUDMASK_NOTEBOOK_SIZE` (scene size in 10 m pixels, default 600 = 6 km),
# `CLOUDMASK_NOTEBOOK_OUT` (where masks go; default a temporary directory).

# %%
import os
import tempfile
from pathlib import Path

from IPython.display import Image, display

from cloudmask import mask_scene, open_scene, predict, search
from cloudmask.quicklook import format_table, plot_scene
from cloudmask.sample import default_catalog_dir, make_catalog

SIZE = int(os.environ.get("CLOUDMASK_NOTEBOOK_SIZE", "600"))
OUT = Path(os.environ.get("CLOUDMASK_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="cloudmask-quickstart-"))

# %% [markdown]
# ## 1. A catalogue and a search
#
# `make_catalog` writes a static STAC catalogue of three scenes of one tile, five days apart
# (it is reused when it already exists). `search` takes the same filters as `cloudmask run`:
# `bbox` (degrees), `aoi`, `datetime`, `max_cloud` (percent)...

# %%
catalog = make_catalog(default_catalog_dir() / f"notebooks-{SIZE}", n_scenes=3, size=SIZE)
items = search(catalog)
for item in items:
    print(f"{item.id}  {item.datetime:%Y-%m-%d}  eo:cloud_cover {item.properties['eo:cloud_cover']:5.1f} %")

# %%
few_clouds = search(catalog, max_cloud=40)
print([it.id for it in few_clouds])

# %% [markdown]
# ## 2. Mask every scene
#
# `mask_scene` does what `cloudmask run` does for one scene: picks the model for the product level
# (`ukis-6b-l2a` here), streams the scene through it, and writes the mask COG, a quicklook PNG and a
# STAC item into `OUT`, refreshing `OUT/catalog.json`.

# %%
results = [mask_scene(item, out=OUT) for item in items]
print(format_table([r.row() for r in results], ["scene", "clear", "cloud", "shadow", "nodata", "seconds"]))

# %% [markdown]
# Class columns are percent of the *valid* pixels; `nodata` is percent of the scene (the second
# scene has a wedge without data, like a scene at the edge of a swath).

# %%
for r in results:
    print(r.mask.name, "|", r.extra["quicklook"].name, "|", r.extra["item"].relative_to(OUT))
print("output catalogue:", results[-1].extra["catalog"])

# %% [markdown]
# ## 3. Look at it
#
# Each scene gets a quicklook: true colour beside true colour with clouds (yellow) and shadows
# (magenta) overlaid.

# %%
display(Image(filename=str(results[1].extra["quicklook"])))

# %% [markdown]
# The same picture from Python objects: `open_scene` gives the scene as a lazy xarray Dataset and
# `predict` masks it (in memory, same engine, same result as the COG).

# %%
ds = open_scene(items[0])
mask = predict(ds)
fig = plot_scene(ds, mask, title=f"{items[0].id} — {mask.attrs['model']}")

# %%
import rioxarray  # noqa: E402,F401

on_disk = rioxarray.open_rasterio(results[0].mask).squeeze("band", drop=True)
print("identical to the COG:", bool((on_disk.values == mask.values).all()))
