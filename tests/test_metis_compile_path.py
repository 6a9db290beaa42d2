"""Part of the Metis path between export and run: --cores, the memory estimate and --fold auto, the
generated compile.py under the emulated SDK 1.6 and 1.8 compilers, and the card it writes for `run`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import cloudmask
from cloudmask.engine import ArraySink, ArraySource, StreamConfig, stream_scene
from cloudmask.errors import ConfigError
from cloudmask.metis import memory
from cloudmask.metis.calibration import CalibrationPatch, calibration_set
from cloudmask.metis.export import export, folded_model
from cloudmask.models import load_model
from cloudmask.runtime import make_runners

from .conftest import shared_dir

MLP = Path(cloudmask.__file__).parent / "data" / "models" / "spectral-mlp" / "card.yaml"
MIB = 2**20
#: s2cloudless all-band indices of the MLP's 10 bands
MLP_BANDS = [0, 1, 3, 4, 7, 8, 9, 10, 11, 12]


def test_memory_estimate_of_the_folded_mlp_by_hand():
    """10 -> 32 -> 32 -> 2 MLP: int8 weights 10*32 + 32*32 + 32*2, int32 biases 32 + 32 + 2; per pixel the
    largest pair of live activations is a 32 -> 32 layer (32 + 32 bytes)."""
    card = load_model(MLP)
    model, _, _ = folded_model(card, (1, 1))
    est = memory.estimate(model)
    assert est.weights == (10 * 32 + 32 * 32 + 32 * 2) + 4 * (32 + 32 + 2)
    assert est.activations == 64
    big = memory.fold_estimate(card, (256, 256))
    assert big.activations == 64 * 65_536 and big.weights == est.weights
    assert memory.fold_estimate(card, (256, 256), batch=4, cores=4).per_core == -(-(est.weights + 4 * 64 * 65_536) // 4)


def test_budget_follows_the_documented_defaults():
    # compiler-config-ref.md: L1 4 MiB/core less 512 KiB, L2 32 MiB less 1,245,184 B, less 1 MiB tasklist per core
    assert memory.budget_bytes(1) == int(3.5 * MIB + 0.25 * (32 * MIB - 1_245_184) - MIB)
    assert memory.budget_bytes(4) == int(4 * 3.5 * MIB + (32 * MIB - 1_245_184) - 4 * MIB)


@pytest.mark.parametrize(("cores", "memory_mb", "fold"), [(1, None, (256, 512)), (4, None, (512, 1024)),
                                                         (1, 1.0, (64, 128))])
def test_fold_auto_picks_the_largest_fold_that_fits(cores, memory_mb, fold):
    got, est, budget = memory.auto_fold(MLP, cores=cores, memory_mb=memory_mb)
    assert got == fold and est.total <= budget
    bigger = [f for f in memory.candidate_folds() if f[0] * f[1] > fold[0] * fold[1]]
    assert all(memory.fold_estimate(MLP, f).total > budget for f in bigger)


def test_fold_auto_refuses_when_nothing_fits():
    with pytest.raises(ConfigError, match="no fold fits"):
        memory.auto_fold(MLP, memory_mb=0.001)


def test_export_cli_fold_auto_and_cores(tmp_path):
    from click.testing import CliRunner

    from cloudmask.cli import main

    r = CliRunner().invoke(main, ["metis", "export", "--model", str(MLP), "--out", str(tmp_path / "a"),
                                  "--fold", "auto", "--memory-mb", "1", "--cores", "4"])
    assert r.exit_code == 0, r.output
    assert "--fold auto: 64x128 fits 1.00 MiB" in r.output and "[1, 10, 64, 128]" in r.output
    cfg = json.loads((tmp_path / "a" / "compiler_config.json").read_text())
    assert cfg["compiler"] == {"aipu_cores_used": 4, "resources_used": 1.0, "multicore_mode": "cooperative"}
    assert cfg["compiler_sdk18"]["aipu_cores"] == 4 and cfg["aipu_cores"] == 4
    assert load_model(tmp_path / "a" / "card.yaml").extra["metis"]["aipu_cores"] == 4
    r = CliRunner().invoke(main, ["metis", "export", "--model", str(MLP), "--out", str(tmp_path / "b"),
                                  "--memory-mb", "1"])
    assert r.exit_code == 2 and "--fold auto" in r.output
    r = CliRunner().invoke(main, ["metis", "export", "--model", str(MLP), "--out", str(tmp_path / "c"),
                                  "--fold", "64x64"])
    assert r.exit_code == 0, r.output
    est = memory.fold_estimate(MLP, (64, 64))
    assert f"memory estimate: {est.format()}; on-chip budget of 1 core(s) 10.20 MiB" in r.output


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location("metis_compile_script_t", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compile_script_picks_the_installed_sdks_keywords(tmp_path):
    from cloudmask.metis.fake_sdk.compiler import CompilerConfig16, CompilerConfig18

    res = export(MLP, tmp_path / "e", "4", fold=(16, 16))
    mod = _load_script(res.compile_script)
    cfg = mod.load_config(res.config_path)
    assert mod.compiler_settings(cfg, mod.declared_fields(CompilerConfig16)) == (
        "compiler", {"aipu_cores_used": 4, "resources_used": 1.0, "multicore_mode": "cooperative"})
    assert mod.compiler_settings(cfg, mod.declared_fields(CompilerConfig18)) == (
        "compiler_sdk18", {"aipu_cores": 4, "resources": 1.0, "multicore_mode": "cooperative"})
    assert mod.compiler_settings(cfg, {"aipu_cores", "resources"})[1] == {"aipu_cores": 4, "resources": 1.0}


@pytest.mark.parametrize(("generation", "cores", "axm"), [("1.6", "single", False), ("1.8", "4", False),
                                                           ("1.8", "batch4", False), ("1.8", "single", True)])
def test_export_compile_run_through_the_emulated_sdk(tmp_path, generation, cores, axm):
    """export -> calibration set -> compile.py (emulated compiler of that SDK) -> card-metis.json -> metis runners:
    the mask of the compiled model equals the CPU mask of the original card."""
    from cloudmask.metis.fake_sdk import installed
    from cloudmask.metis.fake_sdk import runtime as fake_runtime

    card = load_model(MLP)
    res = export(MLP, tmp_path / "e", cores, fold=(32, 32))
    arrays = np.load(shared_dir("data", "real", "s2cloudless-l1c-arrays", "input_arrays.npz"))["s2_im"][0]
    h, w = 120, 96  # real L1C pixels of the s2cloudless test arrays, held-out rows of the MLP's training
    refl = np.ascontiguousarray(arrays[650 : 650 + h, 100 : 100 + w, MLP_BANDS].transpose(2, 0, 1))
    norm = card.normalise(refl)
    patches = [CalibrationPatch("s", (i, j), np.ascontiguousarray(norm[:, i : i + 32, j : j + 32]), 0.0)
               for i in range(0, 88, 8) for j in (0, 64)]
    calibration_set(patches, tmp_path / "calib", res.card, samples=len(patches))
    fake_runtime.reset()
    with installed(generation):
        mod = _load_script(res.compile_script)
        argv = ["--calibration", str(tmp_path / "calib")] + (["--axm"] if axm else [])
        assert mod.main(argv) == 0
        metis_card = load_model(tmp_path / "e" / "card-metis.json")
        assert Path(metis_card.extra["metis_model"]).suffix == (".axm" if axm else ".json")
        runners = make_runners(metis_card, "metis")
        assert len(runners) == {"single": 1 if axm else 4, "4": 1, "batch4": 1}[cores]
        sink = ArraySink(h, w)
        stream_scene(ArraySource(refl), metis_card, runners, sink, StreamConfig())
        for r in runners:
            r.close()
    cpu = ArraySink(h, w)
    stream_scene(ArraySource(refl), card, make_runners(card, "onnxruntime", instances=1), cpu, StreamConfig())
    agree = (sink.classes == cpu.classes).mean()
    assert agree >= 0.98, agree  # int8 in and out against float
    assert 0.2 < (cpu.classes == 1).mean() < 0.8


def _calibration_dir(d: Path, arrays: list[np.ndarray]) -> Path:
    """A calibration directory as compile.py reads it: float32 batch-1 .npy files listed in manifest.json."""
    d.mkdir(parents=True)
    for k, a in enumerate(arrays):
        np.save(d / f"calib_{k:04d}.npy", np.ascontiguousarray(a, np.float32))
    (d / "manifest.json").write_text(json.dumps({"items": [{"file": f"calib_{k:04d}.npy"} for k in range(len(arrays))]}))
    return d


@pytest.mark.parametrize(("generation", "cores", "axm"), [("1.6", "single", False), ("1.8", "4", True)])
def test_stacked_scene_filter_compiled_and_run(tmp_path, generation, cores, axm):
    """The 64-px scene filter exported with --patches-per-call 4 (metis-export), compiled by the emulated SDK and
    run through the metis runtime: the original's patch mask in at most ceil(patches / 4) + 8 calls."""
    from cloudmask.inference import predict_array
    from cloudmask.metis.fake_sdk import installed
    from cloudmask.metis.fake_sdk import runtime as fake_runtime

    from . import user_models as um

    rng = np.random.default_rng(2)
    refl = rng.uniform(0.0, 0.2, (13, 576, 640)).astype(np.float32)
    refl[:, 288:] += rng.uniform(0.3, 0.5, (13, 1, 1)).astype(np.float32)
    src = um.patch_classifier(tmp_path / "pc.onnx")
    patches = refl.reshape(13, 9, 64, 10, 64).transpose(1, 3, 0, 2, 4).reshape(-1, 13, 64, 64)
    um.recentre(src, patches.copy(), "fb")
    original = load_model(um.card(src, kind="patch-classifier"))
    res = export(original, tmp_path / "out", cores, patches_per_call=4)
    # calibration patches of the card's patch ([1, 13, 64, 64]): compile.py stacks four per exported input
    calib = _calibration_dir(tmp_path / "calib", [patches[k : k + 1] for k in range(88)])
    want, _, _ = predict_array(refl, original)
    fake_runtime.reset()
    with installed(generation):
        assert _load_script(res.compile_script).main(["--calibration", str(calib)] + (["--axm"] if axm else [])) == 0
        card = load_model(res.out_dir / "card-metis.json")
        runners = make_runners(card, "metis")
        got, _, stats = predict_array(refl, card, runners=runners)
        for r in runners:
            r.close()
    assert want.shape == (9, 10) and set(np.unique(want)) == {0, 1}
    assert (got == want).mean() >= 0.95  # int8 in and out; per patch
    assert stats.calls <= -(-stats.patches // 4) + 8 and stats.per_call == 4


def test_calibration_class_mix_of_a_patch_classifier():
    """A scene filter's [K] scores label the whole patch (calibration of a patch classifier)."""
    from dataclasses import replace

    from cloudmask.metis.calibration import class_mix

    card = replace(load_model("ukis-4b-l2a"), kind="patch-classifier", classes=("clear", "cloud"), patch_size=16)
    patch = np.zeros((4, 16, 16), np.float32)
    mix = class_mix(patch, np.array([0.0, 5.0], np.float32), card)
    assert mix["thick_cloud"] + mix["thin_cloud"] == 1.0 and mix["clear_land"] + mix["water"] == 0.0
    mix = class_mix(patch, np.array([5.0, 0.0], np.float32), card)
    assert mix["clear_land"] + mix["water"] == 1.0


def test_compile_script_reads_declared_fields_of_any_config_class(tmp_path):
    res = export(MLP, tmp_path / "e", "batch4", fold=(16, 16))
    mod = _load_script(res.compile_script)

    class Pydantic2:  # pydantic v2 declares model_fields
        model_fields = {"aipu_cores": None, "resources": None, "multicore_mode": None}

    class Kwargs:
        def __init__(self, **settings):
            pass

    assert mod.declared_fields(Pydantic2) == {"aipu_cores", "resources", "multicore_mode"}
    assert mod.declared_fields(Kwargs) is None  # unknown: the 1.6 names
    cfg = mod.load_config(res.config_path)
    assert mod.compiler_settings(cfg, None)[0] == "compiler"
    assert mod.compiler_settings(cfg, mod.declared_fields(Pydantic2)) == (
        "compiler_sdk18", {"aipu_cores": 4, "resources": 1.0, "multicore_mode": "batch"})
    card = mod.write_card(cfg, res.out_dir / "compiled" / "compiled_model" / "model.json", res.out_dir)
    assert json.loads(card.read_text())["metis_model"] == "compiled/compiled_model/model.json"
