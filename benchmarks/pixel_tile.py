"""Pixel models on a full tile: host feed, device-bound ratio, peak RSS (issue 23), trees side by side.

A 6-band L2A per-pixel MLP (blue, green, red, nir at 10 m; swir16, swir22 at 20 m -> 32 -> 32 ->
clear/cloud, ``Gemm`` + ReLU, logits), fitted by scikit-learn to the tile's own truth mask on 20,000
pixels of its top 1,024 rows (seed 0: the same model every time), then batch-folded to
``[1, 6, 256, 256]`` by ``cloudmask metis export --fold 256x256`` (65,536 pixels a call). Each run is
``cloudmask run --backend emulated --instances 1 --stats-json FILE`` (or ``--backend onnxruntime``) on
the tile, in its own process, so its peak RSS (VmHWM) is its own. ``--trees NAME=DIR,...`` runs each
case with ``DIR`` first on ``PYTHONPATH`` (e.g. ``git worktree add /tmp/base 09e418f``), alternating
trees, so a drifting machine load hits all alike. Usage::

    python benchmarks/pixel_tile.py --latency-ms 0 2 --repeat 3 --trees base=/tmp/base,cur=.
    python benchmarks/pixel_tile.py --cases ort --repeat 1           # the MLP on ONNX Runtime (CPU)
    python benchmarks/pixel_tile.py --cases patch --latency-ms 5 --patches-per-call 1 4   # a 64-px patch classifier
    python benchmarks/pixel_tile.py --latency-ms 0 --profile benchmarks/work/pixel.txt   # py-spy of one run

Cases: ``mlp`` (the folded MLP, emulated device at each ``--latency-ms``), ``ort`` (the unfolded MLP
on ONNX Runtime, CPU, 65,536 pixels a call, one session of two threads), ``patch`` (an emulated
64-px patch classifier at each ``--patches-per-call``: 1 plain, k > 1 its ``metis export
--patches-per-call k`` patch-stacked card; each ``--latency-ms``). The tile is made by
``cloudmask.sample.make_scene`` (seed 7, 30 % cloud) when missing, as ``benchmarks/run.py`` makes it.
Prints one JSON document: per case and tree the runs (``total_s`` = the stream's total, ``wall_s`` =
the whole ``run`` command, ``cpu_s``, ``mpx_per_s``, ``device_bound_ratio``, ``peak_rss_mib``, stages)
and their medians, and the median per-pair ratios against the first tree.
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
WORK = HERE / "work"
BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")


def make_tile(work: Path, size: int = 10_980) -> Path:
    """The full synthetic L2A tile (``benchmarks/run.py``'s), made once."""
    item_json = work / f"full-{size}" / "tile" / "tile.json"
    if not item_json.exists():
        from cloudmask.sample import make_scene

        make_scene(work / f"full-{size}", "tile", size=size, seed=7, nodata_wedge=0.0, cloud_cover=0.3)
    return item_json


def item_collection(tile: Path, work: Path) -> Path:
    """An ItemCollection file holding the tile's item (absolute hrefs): what ``cloudmask run --stac`` takes."""
    import pystac

    item = pystac.Item.from_file(str(tile))
    item.make_asset_hrefs_absolute()
    path = work / f"{tile.parent.parent.name}-items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [item.to_dict()]}))
    return path


def _sample_pixels(tile: Path, n: int, rows: int = 1024) -> tuple[Any, Any]:
    """``n`` random valid pixels of the tile's top ``rows`` rows: (reflectance ``(n, 6)``, cloud 0/1)."""
    import numpy as np
    import pystac

    from cloudmask.profiles import scene_spec
    from cloudmask.reader import RasterSource

    item = pystac.Item.from_file(str(tile))
    spec = scene_spec(item)
    with RasterSource(spec, BANDS, spec.geobox(10.0)) as src:
        refl = src.read_rows(0, rows)
    import rasterio

    with rasterio.open(item.assets["truth"].get_absolute_href()) as ds:
        truth = ds.read(1, window=((0, rows), (0, refl.shape[2])))
    x = refl.reshape(len(BANDS), -1).T
    y = truth.ravel()
    ok = np.flatnonzero(~np.isnan(x).any(axis=1) & (y < 3))
    pick = np.random.default_rng(0).choice(ok, size=min(n, ok.size), replace=False)
    return x[pick], (y[pick] == 1).astype(np.int64)


def make_mlp(tile: Path, work: Path) -> tuple[Path, Path]:
    """The 6-band MLP's card (dynamic ``[N, 6]``) and its folded export's card, made once."""
    plain, folded = work / "mlp6" / "card.yaml", work / "mlp6-folded" / "card.yaml"
    if plain.exists() and folded.exists():
        return plain, folded
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.neural_network import MLPClassifier

    from cloudmask.card import ModelCard
    from cloudmask.metis.export import export

    x, y = _sample_pixels(tile, 20_000)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    clf = MLPClassifier(hidden_layer_sizes=(32, 32), max_iter=300, random_state=0).fit((x - mean) / std, y)
    nodes, inits, name = [], [], "reflectance"
    layers = list(zip(clf.coefs_, clf.intercepts_, strict=True))
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        if last:  # one logistic unit -> two logits (clear 0, cloud z): the same argmax and softmax
            w = np.concatenate([np.zeros_like(w), w], axis=1)
            b = np.concatenate([np.zeros_like(b), b])
        inits += [numpy_helper.from_array(np.asarray(w.T, np.float32), f"W{i}"),
                  numpy_helper.from_array(np.asarray(b, np.float32), f"b{i}")]
        out = "logits" if last else f"z{i}"
        nodes.append(helper.make_node("Gemm", [name, f"W{i}", f"b{i}"], [out], transB=1, name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"], name=f"relu{i}"))
            name = f"h{i}"
    graph = helper.make_graph(nodes, "mlp6", [helper.make_tensor_value_info("reflectance", TensorProto.FLOAT,
                                                                              ["N", len(BANDS)])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    plain.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(plain.parent / "model.onnx"))
    card = ModelCard(name="mlp6-l2a", onnx_path=plain.parent / "model.onnx", bands=BANDS, product_level="l2a",
                     resolution=10.0, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                     patch_size=1, classes=("clear", "cloud"), kind="pixel", output="logits",
                     description=f"benchmark MLP 6 -> 32 -> 32 -> 2 (scikit-learn, train accuracy "
                                 f"{clf.score((x - mean) / std, y):.3f} on 20,000 tile pixels)")
    card.save(plain)
    export(plain, folded.parent, fold=(256, 256))
    return plain, folded


def make_patch_classifier(work: Path, size: int = 64, per_call: int = 1) -> Path:
    """A 6-band 64-px patch classifier's card (global average pool -> Gemm -> 2 logits), made once;
    ``per_call > 1``: its ``cloudmask metis export --patches-per-call`` (patch-stacked) card."""
    path = work / f"patchcls{size}" / "card.yaml"
    if per_call > 1:
        stacked = work / f"patchcls{size}-x{per_call}" / "card.yaml"
        if not stacked.exists():
            from cloudmask.metis.export import export

            export(make_patch_classifier(work, size), stacked.parent, patches_per_call=per_call)
        return stacked
    if path.exists():
        return path
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cloudmask.card import ModelCard

    c = len(BANDS)
    w = np.random.default_rng(0).normal(size=(2, c)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "W", "b"], ["logits"], transB=1)],
        "patchcls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path.parent / "model.onnx"))
    ModelCard(name=f"patchcls{size}", onnx_path=path.parent / "model.onnx", bands=BANDS, product_level="l2a",
              resolution=10.0, mean=(0.1,) * c, std=(0.1,) * c, patch_size=size, classes=("clear", "cloud"),
              kind="patch-classifier", output="logits").save(path)
    return path


def child(items: str, card: str, backend: str, latency_ms: float, per_call: int, out_dir: str) -> dict[str, Any]:
    """One ``cloudmask run`` of the tile in this process; its stats, CPU seconds, peak RSS and mask checksum
    (``per_call``: patches per call, already in the card; recorded only)."""
    import cloudmask
    from cloudmask.cli import main as cli

    stats_json = Path(out_dir) / "stats.json"
    args = ["run", "--stac", items, "--out", str(Path(out_dir) / "out"), "--model", card, "--backend", backend,
            "--stats-json", str(stats_json), "--no-quicklook", "--no-progress"]
    if backend == "emulated":
        args += ["--instances", "1", "--latency-ms", str(latency_ms)]
    else:
        args += ["--instances", "1", "--threads", "2"]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        cli.main(args, standalone_mode=False)
    except SystemExit as err:  # pragma: no cover - a failed scene
        if err.code:
            raise
    stats = json.loads(stats_json.read_text())["scenes"][0]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = vm_hwm_mib()
    import hashlib

    import numpy as np
    import rasterio

    mask = next(Path(out_dir).rglob("*_cloudmask.tif"))
    with rasterio.open(mask) as ds:
        arr = ds.read(1)
    digest = hashlib.sha1(arr.tobytes()).hexdigest()[:12]
    counts = {int(v): int(c) for v, c in enumerate(np.bincount(arr.ravel(), minlength=256)) if c}
    total = stats["seconds"]["total"]
    px = stats.get("pixels") or 0
    return {
        "cloudmask": str(Path(cloudmask.__file__).parent),
        "wall_s": wall, "cpu_s": cpu, "total_s": total, "calls": stats["calls"],
        "pixels": px, "patches": stats.get("patches"),
        "mpx_per_s": px / total / 1e6 if px and total else None,
        "device_bound_ratio": total / (stats["calls"] * latency_ms / 1000.0) if latency_ms and stats["calls"] else None,
        "seconds": stats["seconds"], "peak_rss_mib": peak, "mask_sha1": digest, "mask_counts": counts,
    }


def read_child(items: str, card: str, strip_rows: int) -> dict[str, Any]:
    """CPU seconds and wall of reading the whole tile in pixel strips: GDAL's decode of each band's
    native window alone (one thread), then ``read_rows`` as the pixel producer calls it (band pool,
    normalisation folded, valid mask)."""
    import numpy as np
    import pystac

    import cloudmask
    from cloudmask.models import load_model
    from cloudmask.profiles import scene_spec
    from cloudmask.reader import RasterSource

    m = load_model(card)
    spec = scene_spec(pystac.ItemCollection.from_file(items).items[0])
    fold = m.normalisation.affine(m.n_bands) if m.normalisation is not None else None
    out: dict[str, Any] = {"cloudmask": str(Path(cloudmask.__file__).parent)}
    with RasterSource(spec, m.bands, spec.geobox(m.resolution)) as src:
        h, w = src.shape
        strips = [(r, min(h, r + strip_rows)) for r in range(0, h, strip_rows)]
        src.read_rows(0, 1)  # open the bands, find their levels
        t0, c0 = time.perf_counter(), time.process_time()
        for r0, r1 in strips:
            for b in range(m.n_bands):
                with src._handles.checkout(src.assets[b], src._level(b)) as ds:
                    f = round(abs(spec.geobox(m.resolution).resolution.x) / ds.res[0]) or 1
                    k = max(1, round(ds.res[0] / abs(spec.geobox(m.resolution).resolution.x)))
                    ds.read(1, window=((r0 * f // k, r1 * f // k), (0, w * f // k)))
        out["decode_s"], out["decode_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    with RasterSource(spec, m.bands, spec.geobox(m.resolution)) as src:
        buf = np.empty((m.n_bands, strip_rows, w), np.float32)
        valid = np.empty((strip_rows, w), bool)
        src.read_rows(0, 1)
        t0, c0 = time.perf_counter(), time.process_time()
        for r0, r1 in strips:
            try:
                src.read_rows(r0, r1, out=buf[:, : r1 - r0], affine=fold, valid=valid[: r1 - r0])
            except TypeError:  # a tree whose read_rows lacks the keywords
                src.read_rows(r0, r1)
        out["read_rows_s"], out["read_rows_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    return out


def run_one(items: Path, card: Path, backend: str, latency_ms: float, per_call: int, tree: Path | None,
            profile: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree.resolve()) + os.pathsep + env.get("PYTHONPATH", "")
    prefix: list[str] = []
    if profile is not None:
        py_spy = Path(sys.executable).with_name("py-spy")
        prefix = [str(py_spy), "record", "--threads", "-r", "100", "-f", "raw", "-o", str(profile), "--"]
    with tempfile.TemporaryDirectory(prefix="cloudmask-pixel-") as out:
        return call(__file__, [str(items), str(card), backend, latency_ms, per_call, out], env=env, prefix=prefix)


def summarise(rs: list[dict[str, Any]]) -> dict[str, Any]:
    med = statistics.median
    out: dict[str, Any] = {
        "total_s": [round(r["total_s"], 2) for r in rs], "median_total_s": round(med(r["total_s"] for r in rs), 2),
        "wall_s": [round(r["wall_s"], 2) for r in rs], "cpu_s": [round(r["cpu_s"], 2) for r in rs],
        "median_cpu_s": round(med(r["cpu_s"] for r in rs), 2),
        "median_peak_rss_mib": round(med(r["peak_rss_mib"] for r in rs)),
        "calls": rs[0]["calls"], "pixels": rs[0]["pixels"], "patches": rs[0]["patches"],
        "seconds_last": {k: round(v, 2) for k, v in rs[-1]["seconds"].items() if isinstance(v, int | float)},
        "cloudmask": rs[0]["cloudmask"], "mask_sha1": sorted({r["mask_sha1"] for r in rs}),
        "mask_counts": rs[0]["mask_counts"],
    }
    if rs[0]["mpx_per_s"]:
        out["median_mpx_per_s"] = round(med(r["mpx_per_s"] for r in rs), 1)
    if rs[0]["device_bound_ratio"]:
        out["device_bound_ratio"] = [round(r["device_bound_ratio"], 3) for r in rs]
        out["median_device_bound_ratio"] = round(med(r["device_bound_ratio"] for r in rs), 3)
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child" and json.loads(sys.argv[2])[0] == "read":
        print("RESULT " + json.dumps(read_child(*json.loads(sys.argv[2])[1:])), flush=True)
        return
    if serve(child):
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--cases", nargs="+", default=["mlp"], choices=["mlp", "ort", "patch"])
    ap.add_argument("--latency-ms", nargs="+", type=float, default=[0.0])
    ap.add_argument("--patches-per-call", nargs="+", type=int, default=[1])
    ap.add_argument("--patch-latency-ms", nargs="+", type=float, default=None,
                    help="latencies of the patch case (default: --latency-ms)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--trees", default=None, help="NAME=DIR,...: source trees to compare (the first is the baseline)")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw profile of one mlp run (first latency)")
    ap.add_argument("--prepare", action="store_true", help="only make the tile and the models")
    ap.add_argument("--read", action="store_true",
                    help="only the read limit: GDAL decode alone vs read_rows in 128-row strips, per tree")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tile = make_tile(args.work)
    items = item_collection(tile, args.work)
    plain, folded = make_mlp(tile, args.work)
    if args.prepare:
        print(json.dumps({"tile": str(tile), "items": str(items), "mlp": str(plain), "folded": str(folded),
                          "patch_classifier": str(make_patch_classifier(args.work))}))
        return
    trees: dict[str, Path | None] = {"current": None}
    if args.trees:
        trees = {}
        for part in args.trees.split(","):
            name, _, path = part.partition("=")
            trees[name] = Path(path)
    if args.profile is not None:
        tree = next(iter(trees.values()))
        print(json.dumps(run_one(items, folded, "emulated", args.latency_ms[0], 1, tree, args.profile), indent=1))
        return
    if args.read:
        res: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
        for _ in range(max(1, args.repeat)):
            for tname, tree in trees.items():
                env = dict(os.environ)
                if tree is not None:
                    env["PYTHONPATH"] = str(tree.resolve()) + os.pathsep + env.get("PYTHONPATH", "")
                res[tname].append(call(__file__, ["read", str(items), str(folded), 128], env=env))
        print(json.dumps(res, indent=1))
        return
    cases: list[tuple[str, Path, str, float, int]] = []
    for case in args.cases:
        if case == "mlp":
            cases += [(f"mlp_folded_{lat:g}ms", folded, "emulated", lat, 1) for lat in args.latency_ms]
        elif case == "ort":
            cases.append(("mlp_onnxruntime_cpu", plain, "onnxruntime", 0.0, 1))
        else:
            cases += [(f"patch64_{k}per_call_{lat:g}ms", make_patch_classifier(args.work, 64, k), "emulated", lat, k)
                      for lat in (args.patch_latency_ms or args.latency_ms) for k in args.patches_per_call]
    # the patch classifier runs on the last tree only (a patch-stacked card needs a tree that knows it)
    last = list(trees)[-1]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        c[0]: {t: [] for t in trees if t == last or not c[0].startswith("patch")} for c in cases}
    for _ in range(max(1, args.repeat)):
        for name, card, backend, lat, k in cases:
            for tname in runs[name]:
                runs[name][tname].append(run_one(items, card, backend, lat, k, trees[tname]))
    summary: dict[str, Any] = {"tile": str(tile), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for name, by_tree in runs.items():
        summary[name] = {t: summarise(rs) for t, rs in by_tree.items()}
        names = list(by_tree)
        for other in names[1:]:
            pairs = list(zip(by_tree[names[0]], by_tree[other], strict=True))
            summary[name][f"time_ratio_{other}_over_{names[0]}"] = round(
                statistics.median(c["total_s"] / b["total_s"] for b, c in pairs), 3)
            summary[name][f"cpu_ratio_{other}_over_{names[0]}"] = round(
                statistics.median(c["cpu_s"] / b["cpu_s"] for b, c in pairs), 3)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
