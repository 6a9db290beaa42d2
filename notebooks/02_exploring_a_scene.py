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
# # Exploring a scene with xarray
#
# `cloudmask.open_scene` returns a scene as a lazy (dask) `xarray.Dataset`, laid out like odc-stac:
# one float32 variable per band (reflectance 0–1, **NaN = nodata**), `x`/`y` pixel-centre
# coordinates in the scene's UTM CRS (metres), and a `spatial_ref` coordinate carrying CRS and
# transform, so `ds.rio` (rioxarray) and `ds.odc` (odc-geo) work. `cloudmask.predict` masks it and
# returns a DataArray on the same grid.
#
# Below: xarray operations, cloud fraction over an area of interest, and a cloud-cover time series.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from odc.geo.geom import Geometry
from odc.geo.xr import rasterize
from shapely.geometry import Polygon

from cloudmask import open_scene, predict, search
from cloudmask.quicklook import class_fractions, compare_masks, plot_fractions, plot_mask
from cloudmask.sample import default_catalog_dir, make_catalog
from cloudmask.xr import valid_mask

SIZE = int(os.environ.get("CLOUDMASK_NOTEBOOK_SIZE", "600"))
catalog = make_catalog(default_catalog_dir() / f"notebooks-{SIZE}", n_scenes=3, size=SIZE)
items = search(catalog)

# %% [markdown]
# ## A scene as a Dataset
#
# Nothing is read yet: the variables are dask arrays (chunks of rows).

# %%
ds = open_scene(items[1])
ds  # noqa: B018 - shows the Dataset

# %%
print("lazy:", all(v.chunks is not None for v in ds.data_vars.values()))
print("CRS:", ds.rio.crs, "| resolution:", ds.rio.resolution(), "m")
gbox = ds.odc.geobox
print("grid:", gbox.shape, "pixels; top-left corner", (gbox.affine.c, gbox.affine.f), "; EPSG", gbox.crs.epsg)

# %% [markdown]
# ## xarray operations
#
# Ordinary xarray: arithmetic between bands, reductions that skip NaN, selection by coordinates.

# %%
valid = valid_mask(ds)
print(f"valid pixels: {100 * float(valid.mean()):.1f} %")

ndvi = (ds.nir - ds.red) / (ds.nir + ds.red)
print(f"mean NDVI over valid pixels: {float(ndvi.mean()):.3f}")
print("mean reflectance per band:", {k: round(float(v), 3) for k, v in ds.mean().items()})

# the north-east quarter, selected by coordinates (y decreases downwards)
x0, x1 = float(ds.x.min()), float(ds.x.max())
y0, y1 = float(ds.y.min()), float(ds.y.max())
ne = ds.sel(x=slice((x0 + x1) / 2, None), y=slice(None, (y0 + y1) / 2))
print("north-east quarter:", dict(ne.sizes), "transform:", tuple(ne.rio.transform())[:6])

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
ndvi.plot(ax=axes[0], cmap="RdYlGn", vmin=-0.2, vmax=0.8)
axes[0].set_title("NDVI")
ds.swir16.plot(ax=axes[1], cmap="magma", vmin=0, vmax=0.5)
axes[1].set_title("SWIR 1.6 µm reflectance")
for ax in axes:
    ax.set_aspect("equal")
fig.tight_layout()

# %% [markdown]
# ## Mask it
#
# `predict` streams the scene through the model in patches (row chunks are computed when the engine
# needs them) and returns a uint8 DataArray on the same coordinates, CRS and transform.

# %%
mask = predict(ds)
print(mask.dtype, dict(mask.sizes), mask.attrs["flag_meanings"], "| nodata:", mask.rio.nodata)
print("same grid:", mask.odc.geobox == ds.odc.geobox)
print({k: round(v, 1) for k, v in class_fractions(mask).items()})

# %% [markdown]
# `mask.rio.to_raster("mask.tif")` writes it as a GeoTIFF — the same raster `cloudmask run` writes.
#
# ## Cloud fraction over an area of interest
#
# An AOI is a shapely polygon in longitude/latitude (here: a quadrilateral inside the scene's
# footprint). Rasterised onto the mask's grid it selects pixels; class shares are then of the valid
# pixels inside it.

# %%
west, south, east, north = items[1].bbox
dx, dy = east - west, north - south
aoi = Polygon([
    (west + 0.45 * dx, south + 0.15 * dy), (west + 0.9 * dx, south + 0.1 * dy),
    (west + 0.85 * dx, south + 0.7 * dy), (west + 0.55 * dx, south + 0.6 * dy),
])
aoi_mask = rasterize(Geometry(aoi, "EPSG:4326"), mask.odc.geobox)
inside = class_fractions(mask, where=aoi_mask)
print(f"AOI covers {100 * float(aoi_mask.mean()):.1f} % of the scene")
print({k: round(v, 1) for k, v in inside.items()})

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.2]})
plot_mask(ds, mask, title="mask with AOI (cyan)", ax=axes[0])
axes[0].contour(aoi_mask.values.astype(float), levels=[0.5], colors="cyan", linewidths=1.5)
plot_fractions({"whole scene": class_fractions(mask), "AOI": inside}, ax=axes[1])
fig.tight_layout()

# %% [markdown]
# The same with rioxarray's clip (pixels outside the AOI become nodata):

# %%
clipped = mask.rio.clip([aoi], crs="EPSG:4326", drop=True)
print("clipped:", dict(clipped.sizes), {k: round(v, 1) for k, v in class_fractions(clipped).items()})

# %% [markdown]
# ## A time series of cloud cover
#
# Mask every scene, stack the masks along `time` (each scene carries a scalar `time` coordinate),
# and compute cloud cover inside the AOI with plain xarray. The catalogue's own `eo:cloud_cover`
# (whole scene) is shown for comparison.

# %%
masks = xr.concat([predict(open_scene(item)) for item in items], dim="time")
in_aoi = aoi_mask & (masks != 255)
cloud_cover = 100 * ((masks == 1) & in_aoi).sum(("y", "x")) / in_aoi.sum(("y", "x"))
shadow_cover = 100 * ((masks == 2) & in_aoi).sum(("y", "x")) / in_aoi.sum(("y", "x"))
catalogue_cover = xr.DataArray([it.properties["eo:cloud_cover"] for it in items], coords={"time": masks.time})
for t, c, s, k in zip(masks.time.values, cloud_cover.values, shadow_cover.values, catalogue_cover.values,
                      strict=True):
    print(f"{np.datetime_as_string(t, unit='D')}: AOI cloud {c:5.1f} %  shadow {s:5.1f} %  | catalogue {k:5.1f} %")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
cloud_cover.plot(ax=ax, marker="o", label="cloud, AOI (cloudmask)")
shadow_cover.plot(ax=ax, marker="s", label="shadow, AOI (cloudmask)")
catalogue_cover.plot(ax=ax, marker="x", linestyle="--", label="eo:cloud_cover (catalogue)")
ax.set_ylabel("% of valid pixels")
ax.set_ylim(0, 100)
ax.set_title("cloud cover over time")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## Against the sample's truth
#
# The synthetic scenes come with a truth raster (asset `truth`, 10 m, same class codes). Brought
# onto the mask's 30 m grid (mode resampling), it compares directly:

# %%
import rioxarray  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402

truth = rioxarray.open_rasterio(items[1].assets["truth"].get_absolute_href()).squeeze("band", drop=True)
truth30 = truth.rio.reproject_match(mask, resampling=Resampling.mode)
fig = compare_masks(truth30, mask, ds, titles=("truth", mask.attrs["model"]))

# %% [markdown]
# ## With a dask.distributed cluster
#
# `open_scene` reads through whatever dask scheduler is active, so the same call works with a
# `Client` (here an in-process one); the mask is the same.

# %%
from dask.distributed import Client, LocalCluster  # noqa: E402

with LocalCluster(n_workers=1, processes=False, threads_per_worker=2, dashboard_address=":0") as cluster, \
        Client(cluster) as client:
    mask_distributed = predict(open_scene(items[1]))
print("same mask with a distributed Client:", bool((mask_distributed.values == mask.values).all()))
