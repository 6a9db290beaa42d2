"""Small measurements behind single rows of ``RESULTS.md`` (issue 11, afternoon), one per subcommand::

    python benchmarks/micro.py first-call --res 30 --parts 1 4 8   # stream start -> first device call, s
    python benchmarks/micro.py fold --res 10                       # RowWindows CPU s: normalise after vs folded
    python benchmarks/micro.py staging                             # CPU s to write a 10,980² mask: DEFLATE 1 vs ZSTD 1
    python benchmarks/micro.py cog                                 # a 3,660² mask to COG: 1 thread vs ALL_CPUS
    python benchmarks/micro.py gc --res 10                         # garbage collections during one 10 m stream
    python benchmarks/micro.py ort                                 # ukis-6b ms per patch: batch 1/2/4, denormals as zero
    python benchmarks/micro.py startup [--tree DIR]                # import + two ONNX Runtime runners: cold vs warm graph cache

Each prints JSON. The tile is ``benchmarks/work/full-10980`` (``run.py`` makes it); ``staging`` and
``cog`` use the real-model mask ``run.py --only a`` leaves in ``benchmarks/work/out/a``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TILE = HERE / "work" / "full-10980" / "tile" / "tile.json"
MASK = HERE / "work" / "out" / "a" / "tile_cloudmask.tif"


def _spec() -> Any:
    import pystac

    from cloudmask.profiles import scene_spec

    return scene_spec(pystac.Item.from_file(str(TILE)))


def first_call(res: float, parts: list[int], repeat: int) -> dict[str, Any]:
    import cloudmask.engine.producer as producer
    import cloudmask.pipeline as pipeline
    from cloudmask.models import load_model
    from cloudmask.runtime import make_runners

    card, spec = load_model("ukis-6b-l2a"), _spec()
    started: list[float] = []
    stream = pipeline.stream_scene

    def stream_timed(*args: Any, **kwargs: Any) -> Any:
        started.append(time.perf_counter())
        return stream(*args, **kwargs)

    pipeline.stream_scene = stream_timed  # type: ignore[assignment]
    out: dict[str, list[float]] = {}
    for _ in range(repeat):
        for n in parts:
            producer.FIRST_STRIP_PARTS = n
            (runner,) = make_runners(card, "emulated", instances=1, latency_s=0.010)
            first: list[float] = []
            run = runner.run

            def timed(batch: Any, run: Any = run, first: list[float] = first) -> Any:
                first.append(time.perf_counter())
                return run(batch)

            runner.run = timed  # type: ignore[method-assign]
            with tempfile.TemporaryDirectory() as d:
                pipeline.mask_scene_spec(spec, Path(d), card, runners=[runner], resolution=res)
            out.setdefault(f"parts={n}", []).append(round(first[0] - started[-1], 3))
    return {"res": res, "first_call_s": out}


def fold(res: float, repeat: int) -> dict[str, Any]:
    from cloudmask.grid import PatchLayout
    from cloudmask.models import load_model
    from cloudmask.reader import RasterSource, RowWindows

    card, spec = load_model("ukis-6b-l2a"), _spec()
    gb = spec.geobox(res)
    lay = PatchLayout(gb.height, gb.width, card.patch_size, 26)
    windows = [(int(r.min()), int(r.max()) + 1) for r in (lay.strip_rows(i) for i in range(lay.n_rows))]
    affine = card.normalisation.affine(card.n_bands)  # type: ignore[union-attr]
    cpu: dict[str, list[float]] = {"normalise_after": [], "folded": []}
    for _ in range(repeat):
        for mode in cpu:
            with RasterSource(spec, card.bands, gb) as src:
                c0 = time.process_time()
                for _rows in RowWindows(src, windows, prepare=lambda d: card.normalise(d, out=d),
                                        fold=affine if mode == "folded" else None):
                    pass
                cpu[mode].append(round(time.process_time() - c0, 2))
    return {"res": res, "cpu_s": cpu}


def _mask(size: int) -> Any:
    import numpy as np
    import rasterio

    with rasterio.open(MASK) as ds:
        m = ds.read(1)
    return np.tile(m, (-(-size // m.shape[0]), -(-size // m.shape[1])))[:size, :size]


def _profile(size: int, **extra: Any) -> dict[str, Any]:
    from rasterio.transform import from_origin

    return {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8", "nodata": 255,
            "crs": "EPSG:32633", "transform": from_origin(0, 0, 10, 10), "tiled": True, "blockxsize": 512,
            "blockysize": 512, **extra}


def staging(repeat: int) -> dict[str, Any]:
    import rasterio
    from rasterio.windows import Window

    m = _mask(10980)
    cpu: dict[str, list[float]] = {"DEFLATE 1": [], "ZSTD 1": []}
    opts = {"DEFLATE 1": {"compress": "DEFLATE", "zlevel": 1}, "ZSTD 1": {"compress": "ZSTD", "zstd_level": 1}}
    for _ in range(repeat):
        for name, o in opts.items():
            with tempfile.TemporaryDirectory() as d:
                c0 = time.process_time()
                with rasterio.open(f"{d}/t.tif", "w", **_profile(10980, **o)) as ds:
                    for r in range(0, 10980, 204):
                        block = m[r : r + 204]
                        ds.write(block, 1, window=Window(0, r, 10980, block.shape[0]))
                cpu[name].append(round(time.process_time() - c0, 2))
    return {"cpu_s": cpu}


def cog(repeat: int) -> dict[str, Any]:
    import rasterio
    import rasterio.shutil

    m = _mask(3660)
    wall: dict[str, list[float]] = {"1": [], "ALL_CPUS": []}
    with tempfile.TemporaryDirectory() as d:
        with rasterio.open(f"{d}/t.tif", "w", **_profile(3660, compress="ZSTD")) as ds:
            ds.write(m, 1)
        for _ in range(repeat):
            for threads in wall:
                t0 = time.perf_counter()
                rasterio.shutil.copy(f"{d}/t.tif", f"{d}/c.tif", driver="COG", COMPRESS="DEFLATE", LEVEL=6,
                                     BLOCKSIZE=512, OVERVIEW_RESAMPLING="MODE", NUM_THREADS=threads)
                wall[threads].append(round(time.perf_counter() - t0, 3))
    return {"wall_s": wall}


def gc_count(res: float) -> dict[str, Any]:
    import gc

    from cloudmask.models import load_model
    from cloudmask.pipeline import mask_scene_spec
    from cloudmask.runtime import make_runners

    card, spec = load_model("ukis-6b-l2a"), _spec()
    runners = make_runners(card, "emulated", instances=1)
    counts: dict[int, int] = {}
    gc.callbacks.append(lambda phase, info: phase == "stop" and counts.update(
        {info["generation"]: counts.get(info["generation"], 0) + 1}))
    with tempfile.TemporaryDirectory() as d:
        mask_scene_spec(spec, Path(d), card, runners=runners, resolution=res)
    return {"res": res, "collections_by_generation": counts}


def ort(seconds: float) -> dict[str, Any]:
    import numpy as np

    from cloudmask.models import load_model
    from cloudmask.runtime.onnx import OnnxRunner, OrtConfig

    card = load_model("ukis-6b-l2a")
    configs = {f"batch {b}": (b, OrtConfig(intra_op_threads=1)) for b in (1, 2, 4)}
    configs["batch 1, denormals as zero"] = (1, OrtConfig(intra_op_threads=1,
                                                          extra={"session.set_denormal_as_zero": "1"}))
    out = {}
    for name, (batch, cfg) in configs.items():
        r = OnnxRunner(card, batch=batch, config=cfg)
        x = np.random.default_rng(0).normal(size=r.input_shape).astype(np.float32)
        r.run(x)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            r.run(x)
            n += batch
        out[name] = round((time.perf_counter() - t0) / n * 1e3, 1)
    return {"ms_per_patch_one_thread": out}


_STARTUP = """
import json, sys, time
t0 = time.perf_counter()
import cloudmask.pipeline
t1 = time.perf_counter()
from cloudmask.models import load_model
from cloudmask.runtime import make_runners
make_runners(load_model("ukis-6b-l2a"), "onnxruntime")
t2 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 2), "runners_s": round(t2 - t1, 2), "onnx_imported": "onnx" in sys.modules}))
"""


def startup(repeat: int, tree: Path | None) -> dict[str, Any]:
    """``tree``: a source tree whose ``cloudmask`` to time instead (e.g. ``git archive <commit> cloudmask``)."""
    import os
    import subprocess
    import sys

    out: dict[str, list[Any]] = {"cold cache": [], "warm cache": []}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "CLOUDMASK_CACHE_DIR": cache}
            if tree is not None:
                env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
            # cwd: `python -c` puts the working directory first on sys.path, before PYTHONPATH
            for key in out:  # the first run fills the cache, the second reads it
                proc = subprocess.run([sys.executable, "-c", _STARTUP], env=env, cwd=cache, capture_output=True, text=True,
                                      check=True)
                out[key].append(json.loads(proc.stdout.splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["first-call", "fold", "staging", "cog", "gc", "ort", "startup"])
    ap.add_argument("--res", type=float, default=30.0)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="ort: seconds per configuration")
    ap.add_argument("--tree", type=Path, default=None, help="startup: time this source tree's cloudmask")
    a = ap.parse_args()
    result = {
        "first-call": lambda: first_call(a.res, a.parts, a.repeat),
        "fold": lambda: fold(a.res, a.repeat),
        "staging": lambda: staging(a.repeat),
        "cog": lambda: cog(a.repeat),
        "gc": lambda: gc_count(a.res),
        "ort": lambda: ort(a.seconds),
        "startup": lambda: startup(a.repeat, a.tree),
    }[a.what]()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
