"""The read ceiling: the least time this host needs to decode the pixels a scene needs.

For each resolution, every band the model reads is decoded at the overview level the reader uses
(:meth:`cloudmask.reader.RasterSource._level`), whole, on ``--threads`` threads (one band per
task), with fresh handles each repeat (GDAL's block cache belongs to a dataset, so it starts cold).
Variants:

* ``decode``         native pixels of that level, no resampling (the ceiling);
* ``decode_nt2``     the same with GDAL's own multi-threaded decoding (GTiff ``NUM_THREADS=2``);
* ``resample``       the same read resampled onto the model grid by GDAL (``average``; 30 m only);
* ``reader_strips``  :meth:`RasterSource.read_rows` over the scene in the engine's strips (what
  the producer pays today, without normalising or cutting).

The ceiling in patches/s is the patch count of the default layout (256 px patches, 26 px halo)
divided by the fastest ``decode`` median. ``median_cpu_s`` is the CPU time of all threads (on a
loaded machine, wall time / CPU time shows how much of the two cores the run got). Usage::

    python benchmarks/read_limit.py --tile benchmarks/work/full-10980/tile/tile.json --res 10 30 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _levels(spec: Any, card: Any, res: float) -> list[tuple[str, int | None]]:
    from cloudmask.reader import RasterSource

    src = RasterSource(spec, card.bands, spec.geobox(res))
    try:
        return [(src.assets[b].href, src._level(b)) for b in range(len(card.bands))]
    finally:
        src.close()


def _decode(levels: list[tuple[str, int | None]], threads: int, open_opts: dict[str, Any],
            out_shape: tuple[int, int] | None = None) -> float:
    import rasterio
    from rasterio.enums import Resampling

    from cloudmask.reader import gdal_path

    def one(job: tuple[str, int | None]) -> int:
        href, level = job
        opts = {"OVERVIEW_LEVEL": "NONE"} if level is None else {"overview_level": level}
        with rasterio.open(gdal_path(href), **opts, **open_opts) as ds:
            finer = out_shape is not None and ds.width > out_shape[1]
            a = ds.read(1, out_shape=out_shape, resampling=Resampling.average) if finer else ds.read(1)
        return int(a.size)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, levels))
    return time.perf_counter() - t0


def _reader_strips(spec: Any, card: Any, res: float, margin: int) -> float:
    from cloudmask.grid import PatchLayout
    from cloudmask.reader import RasterSource

    gb = spec.geobox(res)
    lay = PatchLayout(gb.height, gb.width, card.patch_size, margin)
    t0 = time.perf_counter()
    with RasterSource(spec, card.bands, gb) as src:
        hi = 0
        for i in range(lay.n_rows):
            rows = lay.strip_rows(i)
            need_hi = int(rows.max()) + 1
            if need_hi > hi:
                src.read_rows(max(hi, int(rows.min())), need_hi)
                hi = need_hi
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tile", type=Path, default=Path("benchmarks/work/full-10980/tile/tile.json"))
    ap.add_argument("--res", type=float, nargs="+", default=[10.0, 30.0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--margin", type=int, default=26)
    ap.add_argument("--model", default="ukis-6b-l2a")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    import pystac

    from cloudmask.gdal_config import configure_gdal, current_cache_bytes
    from cloudmask.grid import PatchLayout
    from cloudmask.models import load_model
    from cloudmask.profiles import scene_spec

    configure_gdal()
    spec = scene_spec(pystac.Item.from_file(str(args.tile)))
    card = load_model(args.model)
    out: dict[str, Any] = {"tile": str(args.tile), "threads": args.threads, "cache_bytes": current_cache_bytes()}
    for res in args.res:
        gb = spec.geobox(res)
        levels = _levels(spec, card, res)
        lay = PatchLayout(gb.height, gb.width, card.patch_size, args.margin)
        variants: dict[str, Any] = {
            "decode": lambda lv=levels: _decode(lv, args.threads, {}),
            "decode_nt2": lambda lv=levels: _decode(lv, args.threads, {"NUM_THREADS": "2"}),
            "decode_1thread": lambda lv=levels: _decode(lv, 1, {}),
        }
        if res > 10:
            variants["resample"] = lambda lv=levels, g=gb: _decode(lv, args.threads, {}, (g.height, g.width))
        variants["reader_strips"] = lambda r=res: _reader_strips(spec, card, r, args.margin)
        runs: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeat):  # interleaved, so drifting load hits every variant alike
            for k, fn in variants.items():
                c0 = time.process_time()
                runs[k].append(fn())
                cpu[k].append(time.process_time() - c0)
        med = {k: statistics.median(v) for k, v in runs.items()}
        best = min(med["decode"], med["decode_nt2"])
        out[f"{res:g}m"] = {
            "levels": [lv for _, lv in levels],
            "patches": lay.n_patches,
            "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()},
            "median_s": {k: round(v, 3) for k, v in med.items()},
            "median_cpu_s": {k: round(statistics.median(v), 3) for k, v in cpu.items()},
            "ceiling_patches_per_s": round(lay.n_patches / best, 1),
            "reader_patches_per_s": round(lay.n_patches / med["reader_strips"], 1),
        }
        print(json.dumps({f"{res:g}m": out[f"{res:g}m"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
