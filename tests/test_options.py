"""MaskOptions: the CLI flags and the job keys become the same frozen options; MaskPlan derives per scene."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cloudmask.errors import ConfigError
from cloudmask.options import MaskOptions, MaskPlan
from cloudmask.retry import RetryPolicy

from .test_jobs import write_spec

CLI = {"model": "auto", "backend": "emulated", "instances": None, "threads": 0, "latency_ms": 0.0, "margin": None,
       "blend": "tukey", "resolution": 20.0, "probabilities": True, "quicklook": False, "classes": "cloud-shadow",
       "threshold": None, "class_thresholds": (), "average_over": None, "dilation_size": None, "buffer_m": 30.0,
       "min_region": None, "scl": None}


def test_cli_flags_and_job_keys_give_the_same_options(tmp_path, sample_catalog):
    from cloudmask.jobs import load_spec

    by_cli = MaskOptions.from_cli(**{**CLI, "instances": 2, "threads": 1}, retries=1)
    path = write_spec(tmp_path / "job.toml", sample_catalog, backend="emulated", resolution=20, instances=2, threads=1,
                      probabilities=True, classes="cloud-shadow", retries={"count": 1, "backoff": 5})
    path.write_text(path.read_text() + "\n[postprocess]\nbuffer = 30\n")
    job = load_spec(path)
    by_job = MaskOptions.from_job(job)
    differ = {f.name for f in dataclasses.fields(MaskOptions)
              if getattr(by_cli, f.name) != getattr(by_job, f.name)}
    assert differ <= {"postprocess", "http", "retries"}
    assert {k: v for k, v in by_cli.postprocess.items() if v is not None} == by_job.postprocess
    assert by_cli.retries.count == by_job.retries.count == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_cli.model = "other"  # type: ignore[misc]


def test_options_refuse_bad_combinations_before_any_scene():
    with pytest.raises(ConfigError, match="--latency-ms applies to --backend emulated"):
        MaskOptions.from_cli(**{**CLI, "backend": "onnxruntime", "latency_ms": 5.0})
    assert MaskOptions(backend="onnx").backend == "onnxruntime"
    assert MaskOptions().retries == RetryPolicy(count=0)


def test_plan_is_what_the_written_mask_records(tmp_path, sample_items):
    from cloudmask.api import mask_scene
    from cloudmask.profiles import scene_spec

    spec = scene_spec(sample_items[0])
    options = MaskOptions(backend="emulated", classes="cloud-shadow", resolution=60, quicklook=False)
    plan = MaskPlan.for_scene(options, spec)
    assert plan.class_table == "0=clear,1=cloud,2=shadow,255=nodata" and plan.resolution == 60.0
    res = mask_scene(spec, tmp_path, plan.card, backend="emulated", stream=plan.stream, resolution=60,
                     classes="cloud-shadow", quicklook=False)
    item = json.loads(res.extra["item"].read_text())
    assert item["properties"]["cloudmask:recipe"] == plan.recipe
    with pytest.raises(ConfigError, match="too wide"):
        MaskPlan.for_scene(dataclasses.replace(options, margin=10_000), spec)


def test_job_keys_instances_and_threads_are_checked(tmp_path, sample_catalog):
    from cloudmask.jobs import load_spec

    with pytest.raises(ConfigError, match="'instances'"):
        load_spec(write_spec(tmp_path / "job.toml", sample_catalog, instances=0))


def test_api_keywords_give_the_same_options_as_the_cli(sample_items, tmp_path):
    from cloudmask.api import mask_scene
    from cloudmask.engine import StreamConfig
    from cloudmask.postprocess import PostProcess

    by_cli = MaskOptions.from_cli(**{**CLI, "buffer_m": None})
    by_api = MaskOptions.from_api(backend="emulated", stream=StreamConfig(probabilities=True), resolution=20.0,
                                  quicklook=False, classes="cloud-shadow")
    assert dataclasses.replace(by_api, margin=None, postprocess=by_cli.postprocess) == by_cli
    post = PostProcess.from_options({"buffer": 30}, resolution=20.0)
    assert MaskOptions.from_api(postprocess=post).postprocess == post.as_dict()
    with pytest.raises(ConfigError, match="--precision and --calibration apply to --backend openvino"):
        mask_scene(sample_items[0], tmp_path, backend="emulated", precision="int8", quicklook=False)
    assert not list(tmp_path.glob("*.tif"))  # refused before anything is written
