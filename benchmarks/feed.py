"""Host feed rate and device-bound ratio of the engine on one tile, against a baseline in the same run.

Each run masks the tile end to end (COGs to finished COG, no quicklook) with an emulated device of
``--latency-ms`` per batch-1 call, in its own process (its own peak RSS). ``--base DIR`` names a
source tree (e.g. ``git archive <commit> | tar -x -C DIR``) whose ``cloudmask`` the baseline runs
import; runs alternate base/current so drifting machine load hits both alike, and the summary gives
medians and the median of the per-pair ratios. Usage::

    python benchmarks/feed.py --res 10 --latency-ms 0 --repeat 3 [--base /tmp/base]
    python benchmarks/feed.py --res 10 --latency-ms 5 --repeat 3
    python benchmarks/feed.py --res 10 --profile benchmarks/work/profile.txt   # py-spy of one run
    python benchmarks/feed.py --res 10 --rows 0.25 --trees old=/tmp/a,new=/tmp/b   # trees side by side

Prints one JSON document: per run ``total_s``, ``cpu_s`` (CPU seconds of all the run's threads:
on a shared, loaded machine the steadier measure of host work), ``patches``, ``calls``,
``patches_per_s``, ``device_bound_ratio`` (total / (calls x latency)), ``peak_rss_mib``, stages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from childproc import call, serve, vm_hwm_mib

HERE = Path(__file__).resolve().parent
DEFAULT_TILE = HERE / "work" / "full-10980" / "tile" / "tile.json"


def child(tile: str, res: float, latency_ms: float, out_dir: str, rows: float = 1.0,
          backend: str = "emulated") -> dict[str, Any]:
    import pystac

    import cloudmask
    from cloudmask.models import load_model
    from cloudmask.pipeline import mask_scene_spec
    from cloudmask.profiles import scene_spec
    from cloudmask.runtime import make_runners

    spec = scene_spec(pystac.Item.from_file(tile))
    if rows < 1.0:  # the top `rows` fraction of the tile (same columns, same reads per row)
        from dataclasses import replace

        left, bottom, right, top = spec.bounds
        spec = replace(spec, bounds=(left, top - round((top - bottom) * rows / 60) * 60, right, top))
    card = load_model("ukis-6b-l2a")
    runners = (make_runners(card, "emulated", instances=1, latency_s=latency_ms / 1000.0) if backend == "emulated"
               else make_runners(card, backend))
    t0, c0 = time.perf_counter(), time.process_time()
    res_ = mask_scene_spec(spec, Path(out_dir), card, runners=runners, resolution=res)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = res_.stats.as_dict()
    total = stats["seconds"]["total"]
    calls = stats["calls"]
    return {
        "cloudmask": str(Path(cloudmask.__file__).parent),
        "wall_s": wall,
        "cpu_s": cpu,
        "total_s": total,
        "patches": stats["patches"],
        "calls": calls,
        "patches_per_s": stats["patches"] / total if total else None,
        "device_bound_ratio": total / (calls * latency_ms / 1000.0) if latency_ms and calls else None,
        "seconds": stats["seconds"],
        "peak_rss_mib": vm_hwm_mib(),
    }




def run_one(tile: Path, res: float, latency_ms: float, base: Path | None, profile: Path | None = None,
            rows: float = 1.0, backend: str = "emulated") -> dict:
    env = dict(os.environ)
    if base is not None:
        env["PYTHONPATH"] = str(base) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="cloudmask-feed-") as out:
        prefix: list[str] = []
        if profile is not None:
            py_spy = Path(sys.executable).with_name("py-spy")
            prefix = [str(py_spy), "record", "--threads", "--native", "-r", "50", "-f", "raw", "-o", str(profile),
                      "--"]
        return call(__file__, [str(tile), res, latency_ms, out, rows, backend], env=env, prefix=prefix)


def main() -> None:
    if serve(child):
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tile", type=Path, default=DEFAULT_TILE)
    ap.add_argument("--res", type=float, default=10.0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--base", type=Path, default=None, help="source tree of the baseline cloudmask")
    ap.add_argument("--trees", default=None,
                    help="NAME=DIR,NAME=DIR,...: source trees to compare (the first is the baseline); "
                         "instead of --base and the working tree")
    ap.add_argument("--rows", type=float, default=1.0, help="mask only this top fraction of the tile's rows")
    ap.add_argument("--backend", default="emulated", help="emulated (default) or onnxruntime (real model)")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw (collapsed) profile of one run")
    args = ap.parse_args()
    if args.profile is not None:
        r = run_one(args.tile, args.res, args.latency_ms, args.base, args.profile, args.rows)
        print(json.dumps(r, indent=1))
        return
    trees: dict[str, Path | None] = {}
    if args.trees:
        for part in args.trees.split(","):
            name, _, path = part.partition("=")
            trees[name] = Path(path)
    else:
        if args.base is not None:
            trees["base"] = args.base
        trees["current"] = None
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for _ in range(max(1, args.repeat)):
        for name, tree in trees.items():
            runs[name].append(run_one(args.tile, args.res, args.latency_ms, tree, rows=args.rows,
                                      backend=args.backend))
    summary: dict[str, Any] = {"tile": str(args.tile), "res": args.res, "latency_ms": args.latency_ms,
                               "rows": args.rows}
    for name, rs in runs.items():
        if not rs:
            continue
        summary[name] = {
            "total_s": [round(r["total_s"], 2) for r in rs],
            "median_total_s": round(statistics.median(r["total_s"] for r in rs), 2),
            "cpu_s": [round(r["cpu_s"], 2) for r in rs],
            "median_cpu_s": round(statistics.median(r["cpu_s"] for r in rs), 2),
            "median_patches_per_s": round(statistics.median(r["patches_per_s"] for r in rs), 1),
            "median_peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in rs)),
            "patches": rs[0]["patches"],
            "calls": rs[0]["calls"],
            "seconds_last": {k: round(v, 2) for k, v in rs[-1]["seconds"].items()},
            "cloudmask": rs[0]["cloudmask"],
        }
        if args.latency_ms:
            summary[name]["median_device_bound_ratio"] = round(
                statistics.median(r["device_bound_ratio"] for r in rs), 3)
    names = list(runs)
    for name in names[1:]:
        first, other = runs[names[0]], runs[name]
        ratios = [c["total_s"] / b["total_s"] for b, c in zip(first, other, strict=True)]
        summary[f"time_ratio_{name}_over_{names[0]}"] = round(statistics.median(ratios), 3)
        cpu = [c["cpu_s"] / b["cpu_s"] for b, c in zip(first, other, strict=True)]
        summary[f"cpu_ratio_{name}_over_{names[0]}"] = round(statistics.median(cpu), 3)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
