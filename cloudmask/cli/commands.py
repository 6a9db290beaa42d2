"""The ``cloudmask`` group and its own commands (models, demo, search, profiles, run, evaluate): a thin
adapter over the API (logging, progress, tables, exit codes). :mod:`cloudmask.cli` adds the ``job`` and
``metis`` groups."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ..console import (
    BatchProgress,
    CloudmaskGroup,
    escape_control,
    note,
    scene_result,
    setup_logging,
    task_progress,
)
from ..console import table as _table
from ..stac.query import DATETIME_HELP, parse_bbox

log = logging.getLogger("cloudmask")


@click.group(cls=CloudmaskGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--log-format", type=click.Choice(["plain", "json"]), default="plain", show_default=True,
              help="Log lines as plain text or JSON (for unattended runs).")
@click.version_option(package_name="s2-cloudmask")
def main(verbose: int, log_format: str) -> None:
    """Cloud and cloud-shadow masks for Sentinel-2 scenes from STAC catalogues."""
    setup_logging(verbose, log_format)  # notes and warnings by default; -v info, -vv debug
    from ..interrupt import install

    # SIGINT/SIGTERM stop the scenes in flight cleanly (one line, exit 130/143); restored when the command ends
    click.get_current_context().call_on_close(install())


# ------------------------------------------------------------------------------------------- helpers

def _stream_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--model", default="auto", show_default=True,
                     help="Built-in model name (see `cloudmask models`), a model card, or an ONNX file with a card."),
        click.option("--backend", type=click.Choice(["onnxruntime", "onnx", "openvino", "emulated", "metis"]),
                     default="onnxruntime", show_default=True,
                     help="Inference backend (onnx is short for onnxruntime; openvino: the CPU backend of "
                          "s2-cloudmask[openvino], see --precision).",
                     callback=lambda _ctx, _p, v: "onnxruntime" if v == "onnx" else v),
        click.option("--precision", type=click.Choice(["auto", "f32", "bf16", "int8"]), default="auto",
                     show_default=True,
                     help="With --backend openvino: auto (bf16 where the CPU has it, else f32), f32, bf16, or int8 "
                          "(quantised on real patches; refused, with a warning, unless its masks agree with f32 "
                          "on >= 99.5 %% of the calibration pixels)."),
        click.option("--calibration", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
                     help="With --precision int8: a calibration set (`cloudmask metis calibration`); default: "
                          "the real demo chips (4-band models)."),
        click.option("--latency-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="With --backend emulated: milliseconds per device call (an emulated accelerator that "
                          "computes nothing: measures whether this host keeps such a device busy)."),
        click.option("--stats-json", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="Write each scene's stats (calls, patches, seconds per stage incl. total and "
                          "device_idle; the device's idle gap before the scene) to this JSON file."),
        click.option("--instances", type=click.IntRange(min=1), default=None,
                     help="Model instances fed round-robin, one device thread each (default: 2 ONNX Runtime "
                          "sessions on a multi-core CPU, else 1; for metis: 4 // the cores one instance was compiled "
                          "for, or one SDK 1.8 .axm model)."),
        click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
                     help="ONNX Runtime or OpenVINO threads per instance (0: ONNX Runtime decides; OpenVINO: "
                          "cores / instances)."),
        click.option("--margin", type=click.IntRange(min=0), default=None, help="Patch halo in pixels each side (default 26: neighbours overlap by 52 px)."),
        click.option("--blend", type=click.Choice(["tukey", "linear", "hard"]), default="tukey", show_default=True,
                     help="How overlapping patch predictions are merged across the halo: tukey (a cosine-tapered "
                          "window, smooth seams), linear (a linear ramp), or hard (each pixel from the patch whose "
                          "core holds it, no blending)."),
        click.option("--resolution", type=click.FloatRange(min=0, min_open=True), default=None, help="Output resolution in metres (default: the model's)."),
        click.option("--probabilities", is_flag=True, help="Also write per-class probabilities (uint8 percent)."),
        click.option("--stats", "show_stats", is_flag=True, help="Print per-stage timing."),
        click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal)."),
        click.option("--quicklook/--no-quicklook", default=True, show_default=True,
                     help="Write an RGB quicklook PNG with the mask overlaid beside each mask."),
        click.option("--classes", type=click.Choice(["all", "cloud-shadow"]), default="all", show_default=True,
                     help="Mask classes: all the model's (e.g. thin cloud 3, snow 4), or cloud-shadow: the "
                          "three-class contract 0 clear, 1 cloud, 2 shadow (thin cloud -> cloud, snow -> clear)."),
        click.option("--threshold", type=click.FloatRange(0, 1), default=None,
                     help="Cloud where its probability is above this (0-1; s2cloudless default 0.4)."),
        click.option("--class-threshold", "class_thresholds", multiple=True, metavar="CLASS=P",
                     help="Probability threshold of another class, e.g. shadow=0.3 (repeatable)."),
        click.option("--average-over", type=click.IntRange(min=0), default=None,
                     help="Average thresholded probabilities over a disk of this radius, pixels (s2cloudless)."),
        click.option("--dilation-size", type=click.IntRange(min=0), default=None,
                     help="Dilate cloud by a disk of this radius, pixels (s2cloudless)."),
        click.option("--buffer", "buffer_m", type=click.FloatRange(min=0), default=None,
                     help="Grow cloud and shadow by this many metres (only into clear pixels)."),
        click.option("--min-region", type=click.IntRange(min=0), default=None,
                     help="Cloud/shadow/thin-cloud/snow regions smaller than this many pixels become clear."),
        click.option("--retries", type=click.IntRange(0, 100), default=0, show_default=True,
                     help="Attempts more for a scene whose read or write fails (a transient error), waiting 5 s, "
                          "then twice as long each time (a job's [retries] count)."),
        click.option("--scl", type=click.Choice(["fill", "veto"]), default=None,
                     help="Merge with the item's L2A SCL: fill clear pixels with its cloud/shadow/snow, or veto "
                          "cloud/shadow where it says vegetation, soil, water or snow."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


#: ``_stream_options`` that say how to show a batch, not how to mask (the rest are MaskOptions fields).
_SHOW_OPTIONS = ("show_stats", "progress", "stats_json")


def _mask_all(specs: Sequence[Any], out: Path, kw: dict[str, Any], *, skip_existing: bool = False,
              failed: Sequence[dict[str, Any]] = (), profile: str | None = None, http: Any = None) -> Any:
    """Mask ``specs`` into ``out`` with the ``_stream_options`` in ``kw`` (failures isolated, catalogue and
    summary always written): :meth:`MaskOptions.from_cli` then :class:`~cloudmask.batch.BatchRunner`."""
    from ..batch import BatchRunner
    from ..options import MaskOptions

    show_stats, progress, stats_json = (kw[k] for k in _SHOW_OPTIONS)
    options = MaskOptions.from_cli(**{k: v for k, v in kw.items() if k not in _SHOW_OPTIONS}, profile=profile,
                                   http=http)
    show = sys.stderr.isatty() if progress is None else progress

    def on_row(row: dict[str, Any]) -> None:
        if row["status"] == "skipped":
            bar.skip()
        scene_result(row)

    def on_result(spec: Any, res: Any) -> None:
        if show_stats:
            note(f"{escape_control(spec.id)}:\n{res.stats.table()}", scene=spec.id, stats=res.stats.as_dict(),
                 multiline=True)

    def on_load(card: Any, runners: Sequence[Any]) -> None:
        if options.backend == "openvino":  # the precision that runs (auto's choice, or int8 refused)
            made = runners[0]
            note(f"model {card.name} runs on {getattr(made, 'backend', options.backend)} at "
                 f"{getattr(made, 'precision', 'f32')} (asked {options.precision})", model=card.name,
                 precision=getattr(made, "precision", None))

    with BatchProgress(len(specs), show) as bar:
        runner = BatchRunner(options, out, skip_existing=skip_existing, on_row=on_row, scene_progress=bar.scene,
                             on_result=on_result, on_load=on_load)
        try:
            return runner.run(specs, failed)
        finally:
            if stats_json is not None:
                _write_stats(stats_json, runner.stats, runner.clock)


def _write_stats(path: Path, scene_stats: dict[str, dict[str, Any]], clock: Any) -> None:
    """``--stats-json``: per scene its stats and the device's idle gap before it (seconds)."""
    from .. import atomic

    gaps = clock.gaps()
    rows = []
    for row in sorted(scene_stats.values(), key=lambda r: (r["turn"] is None, r["turn"] or 0)):
        turn = row.pop("turn")
        row["seconds"]["device_gap_before"] = round(gaps[turn], 4) if turn in gaps else None
        rows.append(row)
    doc = {"scenes": rows, "device_gaps_s": [round(gaps[t], 4) for t in sorted(gaps)]}
    atomic.write_text(path, json.dumps(doc, indent=1))
    note(f"stats: {path}")


def _report(report: Any) -> None:
    """Print the batch's table and catalogue; exit 8 when scenes failed."""
    if report.catalog is not None:
        note(f"output catalogue: {report.catalog}")
    click.echo(_table(report.rows, _SUMMARY, drop_empty=True))
    report.raise_for_failures()


_SUMMARY = ("scene", "status", "cloud", "shadow", "thin_cloud", "snow", "clear", "nodata", "seconds", "mask", "error")


# ------------------------------------------------------------------------------------------- commands

@main.command()
def models() -> None:
    """List the built-in models (name for `--model`) and the pip extra a model needs, if any."""
    from ..models import MODEL_EXTRAS, list_models

    rows = [
        {"name": c.name, "kind": c.kind, "bands": ",".join(c.bands), "level": c.product_level.upper(),
         "resolution_m": int(c.resolution), "patch": c.patch_size if c.kind != "pixel" else "-",
         "classes": ",".join(c.classes), "version": c.version,
         "needs": f"[{MODEL_EXTRAS[c.name]}]" if c.name in MODEL_EXTRAS else "-"}
        for c in list_models()
    ]
    click.echo(_table(rows, ["name", "kind", "bands", "level", "resolution_m", "patch", "classes", "version",
                             "needs"]))
    if MODEL_EXTRAS:
        note("needs: the pip extra a model needs, e.g. pip install 's2-cloudmask[s2cloudless]'")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True,
              help="Where the masks and quicklooks go.")
@click.option("--synthetic", is_flag=True,
              help="Mask synthetic scenes (made by cloudmask.sample, with a truth mask) instead of the five "
                   "real Sentinel-2 chips that ship with cloudmask.")
@click.option("--sample-dir", type=click.Path(path_type=Path), default=None,
              help="Where the synthetic catalogue is kept (made if missing; implies --synthetic). "
                   "[default: $CLOUDMASK_SAMPLE_DIR, else $XDG_CACHE_HOME/cloudmask/sample, else "
                   "~/.cache/cloudmask/sample]")
@click.option("--scenes", type=int, default=3, show_default=True, help="With --synthetic: number of scenes.")
@click.option("--size", type=int, default=1200, show_default=True,
              help="With --synthetic: scene size, pixels at 10 m (a multiple of 6).")
@_stream_options
def demo(out: Path, synthetic: bool, sample_dir: Path | None, scenes: int, size: int, **kw: Any) -> None:
    """Mask the five real Sentinel-2 L2A chips shipped with cloudmask (or synthetic scenes), print a table.

    The table says which model ran at what resolution (metres), the class shares (percent of valid
    pixels) and how far each mask agrees with the scene's reference: for the real chips the On Cloud N
    model ensemble (cloud vs not cloud; a second opinion, not ground truth), for synthetic scenes
    their generated truth (clear, cloud, shadow).
    """
    from ..batch import specs_of
    from ..errors import ConfigError
    from ..sample import default_catalog_dir, demo_catalog, make_catalog
    from ..stac import search

    if synthetic or sample_dir is not None:
        synthetic = True
        show = sys.stderr.isatty() if kw.get("progress") is None else bool(kw["progress"])
        try:
            with task_progress("making synthetic scenes", show) as made:
                cat = make_catalog(sample_dir or default_catalog_dir(), n_scenes=scenes, size=size, progress=made)
        except ValueError as err:  # --size / --scenes out of range
            raise ConfigError(f"demo --synthetic: {err}") from err
        note(f"synthetic sample catalogue: {cat}")
    else:
        cat = demo_catalog()
        note(f"demo catalogue (5 real Sentinel-2 L2A chips, CC BY 4.0): {cat}")
    from ..batch import refuse_input_in_out

    refuse_input_in_out(cat, out)
    items = search(str(cat))
    specs, failed = specs_of(items)
    report = _mask_all(specs, out, kw, failed=failed)
    if report.catalog is not None:
        note(f"output catalogue: {report.catalog}")
    _add_agreement(report.rows, items)
    click.echo(_table(report.rows, _DEMO_SUMMARY, drop_empty=True))
    note(
        "agree %: pixels where the mask agrees with "
        + ("the generated truth (clear/cloud/shadow)" if synthetic else
           "the On Cloud N ensemble prediction, cloud vs not cloud (a model output, not ground truth)")
        + "; class shares in percent of valid pixels; res_m: mask resolution in metres"
    )
    report.raise_for_failures()


_DEMO_SUMMARY = ("scene", "model", "res_m", "cloud", "shadow", "thin_cloud", "snow", "clear", "nodata", "agree %", "seconds", "mask")


def _add_agreement(rows: list[dict[str, Any]], items: Sequence[Any]) -> None:
    """Add each row's ``agree %``: overall accuracy against the item's truth/ensemble asset, if any."""
    from ..evaluate import evaluate

    by_id = {it.id: it for it in items}
    for row in rows:
        item = by_id.get(row["scene"])
        if item is None or row.get("status") != "done":
            continue
        key = next((k for k in ("truth", "ensemble") if k in item.assets), None)
        if key is None:
            continue
        ref = item.assets[key].get_absolute_href() or item.assets[key].href
        # a generated truth is three-class even where a scene has no shadow: score all three
        acc = evaluate(row["mask"], ref, reference_classes="0=clear,1=cloud" if key == "ensemble" else
                       "0=clear,1=cloud,2=shadow", unscored=()).overall_accuracy
        row["agree %"] = None if acc is None else round(100.0 * acc, 1)


def _search_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--stac", required=True,
                     help="STAC API URL, static catalogue (path or http(s) URL of its catalog.json), or "
                          "earth-search | planetary-computer | cdse."),
        click.option("--collection", default=None,
                     help="Collection id (default: the endpoint's Sentinel-2 collection)."),
        click.option("--bbox", default=None, help="west,south,east,north in degrees."),
        click.option("--aoi", default=None,
                     help="Area of interest: GeoJSON file or WKT; a scene counts when it intersects."),
        click.option("--datetime", "datetime_", default=None,
                     help=DATETIME_HELP),
        click.option("--max-cloud", type=click.FloatRange(0, 100), default=None, help="Maximum eo:cloud_cover, percent."),
        click.option("--min-cloud", type=click.FloatRange(0, 100), default=None, help="Minimum eo:cloud_cover, percent."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many scenes."),
        click.option("--sortby", default=None, help="e.g. -datetime or eo:cloud_cover."),
        click.option("--http-timeout", default=None, expose_value=False, callback=_keep_http_option,
                     metavar="SECONDS[,SECONDS]",
                     help="Time limit of each STAC API request and (with `run`) of each remote band read, READ "
                          "or CONNECT,READ seconds [default: 10,20 or $CLOUDMASK_HTTP_TIMEOUT]."),
        click.option("--http-retries", type=click.IntRange(0, 100), default=None, expose_value=False,
                     callback=_keep_http_option,
                     help="Retries of a failed or timed-out STAC API request (and remote band read), with backoff "
                          "[default: 3 or $CLOUDMASK_HTTP_RETRIES]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _keep_http_option(ctx: click.Context, param: click.Parameter, value: str | int | None) -> None:
    """``--http-timeout``/``--http-retries`` go to :func:`_do_search` through ``ctx.meta`` (not as arguments)."""
    ctx.meta[f"cloudmask.{param.name}"] = value


def _http_policy() -> Any:
    """The STAC API's and the band reads' HTTP limits: ``--http-timeout``/``--http-retries`` over the environment."""
    from ..stac import HttpPolicy

    meta = click.get_current_context().meta
    return HttpPolicy.from_env().with_overrides(meta.get("cloudmask.http_timeout"), meta.get("cloudmask.http_retries"),
                                                names=("--http-timeout", "--http-retries"))


def _do_search(stac: str, collection: str | None, bbox: str | None, aoi: str | None, datetime_: str | None,
               max_cloud: float | None, min_cloud: float | None, limit: int | None,
               sortby: str | None = None) -> list[Any]:
    from ..stac import SearchQuery, search

    http = _http_policy()
    query = SearchQuery.build(collection=collection, bbox=parse_bbox(bbox, "--bbox") if bbox else None, aoi=aoi,
                              datetime=datetime_, max_cloud=max_cloud,
                              min_cloud=min_cloud, limit=limit, sortby=sortby)
    return search(stac, query, http=http)


@main.command("search")
@_search_options
@click.option("--json", "as_json", is_flag=True, help="One JSON line per item (the full STAC item).")
def search_cmd(as_json: bool, **kw: Any) -> None:
    """Search a catalogue and list the scenes (id, datetime, cloud %, tile, nodata %)."""
    items = _do_search(**kw)
    if not items:
        note("no scenes match the search")
        return
    if as_json:
        for it in items:
            click.echo(json.dumps(it.to_dict(transform_hrefs=False)))
        return
    rows = []
    for it in items:
        p = it.properties
        tile = p.get("grid:code", "").removeprefix("MGRS-") or p.get("s2:mgrs_tile") or p.get("mgrs:grid_square", "")
        rows.append({
            "id": it.id,
            "datetime": it.datetime.isoformat(timespec="seconds") if it.datetime else p.get("start_datetime", ""),
            "cloud %": _fmt(p.get("eo:cloud_cover")),
            "tile": tile,
            "nodata %": _fmt(p.get("s2:nodata_pixel_percentage")),
        })
    click.echo(_table(rows, ["id", "datetime", "cloud %", "tile", "nodata %"]))


def _fmt(v: Any) -> str:
    return f"{float(v):.1f}" if isinstance(v, int | float) else "-"


@main.command("profiles")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Every profile as JSON (the full band -> asset key map).")
def profiles_cmd(name: str | None, as_json: bool) -> None:
    """List the provider profiles (how each STAC provider's items map to bands), or show NAME in full.

    Profiles are tried in the order listed; pass one with `run --profile NAME` when detection picks
    the wrong one.
    """
    from dataclasses import asdict

    from ..profiles import describe_rule, get_profile, list_profiles

    profs = [get_profile(name)] if name else list_profiles()
    if as_json:
        click.echo(json.dumps([asdict(p) for p in profs], indent=1, default=list))
        return
    if name:
        p = profs[0]
        click.echo(f"{p.name}: {p.title}")
        click.echo(f"aliases: {', '.join(p.aliases) or '-'}")
        click.echo(f"product level: {p.product_level}")
        click.echo("detected by: " + ("; or ".join(describe_rule(r) for r in p.detect) or "only when named"))
        click.echo(f"scale/offset from: {', '.join(p.scale_offset)}")
        if p.gdal_env:
            click.echo("GDAL settings: " + " ".join(f"{k}={v}" for k, v in p.gdal_env.items()))
        if p.sign:
            click.echo(f"hrefs signed: {p.sign}")
        click.echo(_table([{"band": b, "asset keys (first found wins)": " | ".join(keys)}
                           for b, keys in p.assets.items()], ["band", "asset keys (first found wins)"]))
        return
    rows = [{"profile": p.name, "aliases": ",".join(p.aliases), "level": p.product_level,
             "red / nir assets": f"{'|'.join(p.assets.get('red', ()))} / {'|'.join(p.assets.get('nir', ()))}",
             "detected by": "; or ".join(describe_rule(r) for r in p.detect)} for p in profs]
    click.echo(_table(rows, ["profile", "aliases", "level", "red / nir assets", "detected by"]))
    note("`cloudmask profiles NAME` shows every band of one profile")


@main.command()
@_search_options
@click.option("--profile", default=None, help="Provider profile (default: detected from each item).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--skip-existing", is_flag=True,
              help="Keep a scene's finished mask when its item and checksum are valid and the model is the same.")
@_stream_options
def run(stac: str, collection: str | None, bbox: str | None, aoi: str | None, datetime_: str | None,
        max_cloud: float | None, min_cloud: float | None, limit: int | None, sortby: str | None,
        profile: str | None, out: Path, skip_existing: bool, **kw: Any) -> None:
    """Search a catalogue and mask every scene found.

    A scene that fails is reported and the others go on; the output catalogue and ``summary.json``
    are always written; the exit code is 8 when any scene failed.
    """
    from ..batch import prepare_out_dir, refuse_input_in_out, specs_of

    refuse_input_in_out(stac, out)
    prepare_out_dir(out)
    if profile is not None:
        from ..profiles import get_profile

        get_profile(profile)  # an unknown name is an argument error (exit 2), before any search
    items = _do_search(stac, collection, bbox, aoi, datetime_, max_cloud, min_cloud, limit, sortby)
    if not items:
        note("no scenes match the search; nothing to do")
        return
    specs, failed = specs_of(items, profile)
    _report(_mask_all(specs, out, kw, skip_existing=skip_existing, failed=failed, profile=profile, http=_http_policy()))


@main.command("evaluate")
@click.argument("predicted", type=click.Path(exists=True, path_type=Path))
@click.argument("reference", type=click.Path(exists=True, path_type=Path))
@click.option("--reference-classes", default=None,
              help="VALUE=NAME pairs of the reference raster, e.g. 0=clear,1=cloud,2=shadow; values not named "
                   "are left out.  [default: 0=clear,1=cloud,2=shadow]")
@click.option("--prediction-classes", default=None,
              help="VALUE=NAME pairs of the predicted mask.  [default: the cloudmask contract "
                   "0=clear,1=cloud,2=shadow,3=thin_cloud,4=snow]")
@click.option("--reference-nodata", type=float, default=None,
              help="Reference nodata value.  [default: the raster's own nodata, if any]")
@click.option("--boundary", type=click.IntRange(min=0), default=0, show_default=True,
              help="Ignore pixels within N reference pixels of a reference class edge.")
@click.option("--reference-asset", default=None,
              help="Catalogue mode: the items' reference asset.  [default: the first of truth, label, labels, "
                   "reference, ensemble]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def evaluate_cmd(predicted: Path, reference: Path, reference_classes: str | None, prediction_classes: str | None,
                 reference_nodata: float | None, boundary: int, reference_asset: str | None, as_json: bool) -> None:
    """Score a mask against a reference raster: per-class IoU, precision, recall, F1, accuracy.

    PREDICTED is a mask file, REFERENCE a raster on any grid: the mask is resampled (nearest) onto the
    reference's grid and nodata in either is left out. With a directory of masks as PREDICTED,
    REFERENCE is a STAC catalogue (masks paired by item id) or a directory of rasters (paired by file
    name, ``X_cloudmask.tif`` with ``X.tif``): one row per pair plus their mean and the pooled pixels.
    Classes the reference lacks are folded (thin_cloud as cloud, others as clear); a class the reference
    classes name but the reference has no pixel of (shadow in a cloud/not-cloud reference) is not scored
    and is reported as not in the reference.
    """
    from ..evaluate import evaluate, evaluate_many, not_in_reference_note, summary_rows

    kw: dict[str, Any] = {"reference_classes": reference_classes, "prediction_classes": prediction_classes,
                          "reference_nodata": reference_nodata, "boundary": boundary}
    if predicted.is_dir():
        results = evaluate_many(predicted, reference, reference_asset=reference_asset, **kw)
        rows = summary_rows(results)
        if as_json:
            click.echo(json.dumps({"pairs": [r.to_dict() for r in results], "summary": rows,
                                   "not_in_reference": list(results[0].not_in_reference)}))
            return
        click.echo(_table(rows, list(rows[0])))
        note("metrics in percent; mean: of the pairs' metrics; pooled: of all pixels together")
        if results[0].not_in_reference:
            note(not_in_reference_note(results[0].not_in_reference))
        return
    scores = evaluate(predicted, reference, **kw)
    click.echo(json.dumps(scores.to_dict()) if as_json else scores.table())
