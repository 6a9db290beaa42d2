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
# The scenes are the real Sentinel-2 L2A chips of the demo catalogue that ships with cloudmask
# (On Cloud N data, CC BY 4.0; see `cloudmask/data/demo/SOURCE.md`). Below: xarray operations,
# cloud fraction over an area of interest, cloud cover of every chip, two models side by side, and a
# comparison with the chips' ensemble prediction.

# %%
import matplotlib.pyplot as plt
import numpy as np
from odc.geo.geom import Geometry
from odc.geo.xr import rasterize
from shapely.geometry import Polygon

from cloudmask import open_scene, predict, search
from cloudmask.evaluate import score_arrays
from cloudmask.quicklook import class_fractions, compare_masks, plot_fractions, plot_mask
from cloudmask.sample import demo_catalog
from cloudmask.xarray_predict import valid_mask

items = {it.properties["cloudmask:chip"]: it for it in search(demo_catalog())}
MODEL = "ukis-4b-l2a"  # the chips have blue, green, red and nir only: the 4-band L2A model
print(list(items))

# %% [markdown]
# ## A scene as a Dataset
#
# The chip `adwp` at the model's 30 m: mostly open water of Lake Victoria off Chifunfu (Tanzania),
# with scattered cumulus and their shadows. Nothing is read yet: the variables are dask arrays.

# %%
ds = open_scene(items["adwp"], MODEL)
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
axes[0].set_title("NDVI (clouds near 0, open water below 0)")
ds.nir.plot(ax=axes[1], cmap="magma", vmin=0, vmax=0.6)
axes[1].set_title("NIR reflectance")
for ax in axes:
    ax.set_aspect("equal")
fig.tight_layout()

# %% [markdown]
# ## Mask it
#
# `predict` streams the scene through the model in patches (row chunks are computed when the engine
# needs them) and returns a uint8 DataArray on the same coordinates, CRS and transform.

# %%
mask = predict(ds, MODEL)
print(mask.dtype, dict(mask.sizes), mask.attrs["flag_meanings"], "| nodata:", mask.rio.nodata)
print("same grid:", mask.odc.geobox == ds.odc.geobox)
print({k: round(v, 1) for k, v in class_fractions(mask).items()})

# %% [markdown]
# ## Dark water is not shadow
#
# The built-in ukis models read **dark open water as cloud shadow**, a known confusion of shadow
# detectors (both are dark in every band). Most of this chip is lake: a water index next to the mask
# shows where the "shadow" lies. Water here: NDWI = (green − nir) / (green + nir) > 0 and NIR
# reflectance < 0.2 (clouds are bright in the NIR). Check shadows over lakes and the sea; with an L2A
# scene classification, `--scl veto` clears shadow where SCL says water (README, post-processing).

# %%
ndwi = (ds.green - ds.nir) / (ds.green + ds.nir)
water = (ndwi > 0) & (ds.nir < 0.2)
shadow = mask == 2
n_valid = float((mask != 255).sum())
print(f"water: {100 * float(water.sum()) / n_valid:.1f} % of the chip | NDVI median {float(np.nanmedian(ndvi.values)):.2f}")
print(f"shadow: {100 * float(shadow.sum()) / n_valid:.1f} % of the chip, "
      f"of which on water: {100 * float((shadow & water).sum()) / n_valid:.1f} % of the chip")

fig, axes = plt.subplots(1, 2, figsize=(12, 5))
ndwi.plot(ax=axes[0], cmap="BrBG", vmin=-0.6, vmax=0.6)
water.astype(float).plot.contour(ax=axes[0], levels=[0.5], colors="navy", linewidths=0.8)
axes[0].set_title("NDWI (water > 0; navy: water)")
axes[0].set_aspect("equal")
plot_mask(ds, mask, title=f"{MODEL}: the lake is mostly 'shadow'", ax=axes[1])
fig.tight_layout()

# %% [markdown]
# `mask.rio.to_raster("mask.tif")` writes it as a GeoTIFF — the same raster `cloudmask run` writes.
#
# ## Cloud fraction over an area of interest
#
# An AOI is a shapely polygon in longitude/latitude (here: a quadrilateral inside the chip).
# Rasterised onto the mask's grid it selects pixels; class shares are then of the valid pixels
# inside it.

# %%
west, south, east, north = items["adwp"].bbox
dx, dy = east - west, north - south
aoi = Polygon([
    (west + 0.45 * dx, south + 0.15 * dy), (west + 0.9 * dx, south + 0.1 * dy),
    (west + 0.85 * dx, south + 0.7 * dy), (west + 0.55 * dx, south + 0.6 * dy),
])
aoi_mask = rasterize(Geometry(aoi, "EPSG:4326"), mask.odc.geobox)
inside = class_fractions(mask, where=aoi_mask)
print(f"AOI covers {100 * float(aoi_mask.mean()):.1f} % of the chip")
print({k: round(v, 1) for k, v in inside.items()})

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1, 1.2]})
plot_mask(ds, mask, title="mask with AOI (cyan)", ax=axes[0])
axes[0].contour(aoi_mask.values.astype(float), levels=[0.5], colors="cyan", linewidths=1.5)
plot_fractions({"whole chip": class_fractions(mask), "AOI": inside}, ax=axes[1])
fig.tight_layout()

# %% [markdown]
# The same with rioxarray's clip (pixels outside the AOI become nodata):

# %%
clipped = mask.rio.clip([aoi], crs="EPSG:4326", drop=True)
print("clipped:", dict(clipped.sizes), {k: round(v, 1) for k, v in class_fractions(clipped).items()})

# %% [markdown]
# ## Cloud cover of every chip
#
# Mask every chip and compare its cloud share with the catalogue's `eo:cloud_cover` (here the cloud
# share of the chips' ensemble prediction, a second model). Four chips were taken at the same moment
# over Chifunfu (Tanzania), one over Addis Ababa.

# %%
masks = {chip: predict(open_scene(item, MODEL), MODEL) for chip, item in items.items()}
cover = {chip: class_fractions(m) for chip, m in masks.items()}
for chip, f in cover.items():
    print(f"{chip}: cloud {f['cloud']:5.1f} %  shadow {f['shadow']:5.1f} %  clear {f['clear']:5.1f} %  | "
          f"ensemble cloud {items[chip].properties['eo:cloud_cover']:5.1f} %")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
plot_fractions(cover, ax=ax)
ax.set_title(f"class shares per chip ({MODEL})")
fig.tight_layout()

# %% [markdown]
# ## Two models side by side
#
# The same chip through the 4-band **L2A** model (trained on surface reflectance, like these chips)
# and the 4-band **L1C** model (trained on top-of-atmosphere reflectance). `compare_masks` shows both
# masks and where they differ.

# %%
other = predict(ds, "ukis-4b-l1c")
agree = float((other == mask).where(mask != 255).mean())
print(f"ukis-4b-l2a vs ukis-4b-l1c on adwp: same class on {100 * agree:.1f} % of pixels")
fig = compare_masks(mask, other, ds, titles=(MODEL, "ukis-4b-l1c"))

# %% [markdown]
# ## Against the ensemble prediction
#
# Each chip carries the challenge author's model-ensemble prediction (asset `ensemble`, 0/1 cloud at
# 10 m). It is **another model's output, not ground truth**: agreement measures how similar two
# cloud detectors are on this chip, cloud vs not cloud (our shadow counts as not cloud), not how
# right either is. For human labels see the README's accuracy table. The 30 m mask is brought onto
# the 10 m grid with nearest-neighbour resampling, as `cloudmask evaluate` does.

# %%
import rioxarray  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402

ens = rioxarray.open_rasterio(items["adwp"].assets["ensemble"].get_absolute_href()).squeeze("band", drop=True)
mask10 = mask.rio.reproject_match(ens, resampling=Resampling.nearest)
s = score_arrays(mask10.values, ens.values, reference_classes="0=clear,1=cloud")
print(f"agreement with the ensemble: {100 * s.overall_accuracy:.1f} % | cloud IoU {s.per_class()['cloud']['iou']:.2f}")
print(s.table())
cloud10 = np.where(mask10.values == 255, 255, (mask10.values == 1).astype(np.uint8))
fig = compare_masks(ens.values.astype(np.uint8), cloud10, titles=("ensemble: cloud", f"{MODEL}: cloud"))

# %% [markdown]
# ## With a dask.distributed cluster
#
# `open_scene` reads through whatever dask scheduler is active, so the same call works with a
# `Client` (here an in-process one); the mask is the same.

# %%
from dask.distributed import Client, LocalCluster  # noqa: E402

with LocalCluster(n_workers=1, processes=False, threads_per_worker=2, dashboard_address=":0") as cluster, \
        Client(cluster) as client:
    mask_distributed = predict(open_scene(items["adwp"], MODEL), MODEL)
print("same mask with a distributed Client:", bool((mask_distributed.values == mask.values).all()))
