"""Hostile input and signals (issue 22, items 9-11 and 14-17): each test failed on the code before its fix.

Signals: SIGTERM left ``.blocks-PID-*.tmp.tif`` temporaries and no message; Ctrl-C on a dask job
printed worker tracebacks; orphaned dask workers published masks after the job gave up its lock.
Odd input: a model whose output is smaller than its input failed per scene with a numpy broadcast
error; non-ASCII ids aborted the run; a WKT item geometry was an AttributeError traceback; a
directory named ``journal.jsonl`` an IsADirectoryError traceback; a newline in an id forged a log
line; a deleted ``.aux.xml`` sidecar was never restored.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pystac
import pytest
import yaml
from click.testing import CliRunner

from cloudmask.cli import main

CLI = [sys.executable, "-m", "cloudmask.cli"]


def _temporaries(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".*") if ".tmp" in p.name)


def _copy_catalog(sample_catalog: Path, dest: Path) -> list[Path]:
    """A copy of the sample catalogue; its item files, sorted."""
    shutil.copytree(sample_catalog.parent, dest)
    return sorted(p for p in dest.rglob("*.json") if p.parent.parent.name == "sentinel-2-c1-l2a")


def _edit_item(path: Path, **changes: Any) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _wait_for(pred: Any, timeout: float, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc.poll() is not None:
            pytest.fail(f"the command ended (rc {proc.returncode}) before {what}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------ 9. SIGTERM


@pytest.mark.slow  # a real run in a subprocess, stopped mid-scene (~5 s)
def test_sigterm_stops_run_cleanly_with_one_line_and_exit_143(sample_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        CLI + ["run", "--stac", str(sample_catalog), "--out", str(out), "--no-quicklook", "--no-progress",
               "--backend", "emulated", "--latency-ms", "150", "--resolution", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(lambda: any(".blocks-" in n for n in _temporaries(out)), 60, proc, "a scene streaming")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: interrupted by SIGTERM") and "kept" in lines[-1]
    assert _temporaries(out) == []  # the scene in flight removed its partial files


def test_run_skip_existing_sweeps_temporaries_of_dead_processes(sample_catalog: Path, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    out = tmp_path / "out"
    (out / "items").mkdir(parents=True)
    left = [out / f".S_cloudmask.tif.blocks-{dead.pid}-0123abcd.tmp.tif",
            out / f".S_cloudmask.tif.cog-{dead.pid}-0123abcd.tmp.tif.ovr.tmp",
            out / "items" / f".S.json.{dead.pid}-0123abcd.tmp"]
    live = out / f".T_cloudmask.tif.blocks-{alive.pid}-0123abcd.tmp.tif"  # another run still writing it
    try:
        for p in [*left, live]:
            p.write_bytes(b"partial")
        res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(out), "--no-quicklook",
                                        "--no-progress", "--backend", "emulated", "--limit", "1", "--skip-existing"])
        assert res.exit_code == 0, res.output
        assert [p.name for p in left if p.exists()] == []
        assert live.exists()  # its writer is alive: not swept
    finally:
        alive.kill()
        alive.wait()


# ------------------------------------------------------------------------- 15. non-ASCII ids


def test_non_ascii_ids_are_masked_and_an_unusable_id_fails_alone(sample_catalog: Path, tmp_path: Path) -> None:
    items = _copy_catalog(sample_catalog, tmp_path / "cat")
    for path, new in zip(items, ("Ω", "雲マスク", ""), strict=True):
        _edit_item(path, id=new)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--stac", str(tmp_path / "cat" / "catalog.json"), "--out", str(out),
                                    "--no-quicklook", "--no-progress", "--backend", "emulated"])
    assert res.exit_code == 8, res.output  # the empty id fails alone; the run goes on
    summary = json.loads((out / "summary.json").read_text())
    assert {r["scene"]: r["status"] for r in summary["rows"]} == {"Ω": "done", "雲マスク": "done", "": "failed"}
    names = sorted(p.name for p in out.glob("*_cloudmask.tif"))
    assert len(names) == 2 and all(n.isascii() and n.startswith("item-") for n in names)  # hashed apart
    catalogued = pystac.Catalog.from_file(str(out / "catalog.json")).get_items(recursive=True)
    assert sorted(it.properties["cloudmask:source_id"] for it in catalogued) == ["Ω", "雲マスク"]
    again = CliRunner().invoke(main, ["run", "--stac", str(tmp_path / "cat" / "catalog.json"), "--out", str(out),
                                      "--no-quicklook", "--no-progress", "--backend", "emulated", "--skip-existing"])
    assert again.exit_code == 8, again.output
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert sorted(r["status"] for r in rows) == ["failed", "skipped", "skipped"]



def test_job_masks_non_ascii_ids_and_fails_an_empty_id_alone(sample_catalog: Path, tmp_path: Path) -> None:
    from cloudmask.jobs import load_spec, run_job

    items = _copy_catalog(sample_catalog, tmp_path / "cat")
    for path, new in zip(items, ("Ω", "雲マスク", ""), strict=True):
        _edit_item(path, id=new)
    spec = tmp_path / "job.toml"
    spec.write_text(f'name = "j"\nstac = "{tmp_path / "cat" / "catalog.json"}"\noutput = "{tmp_path / "out"}"\n'
                    'backend = "emulated"\n')
    report = run_job(load_spec(spec), raise_on_failure=False)
    assert sorted(o.scene for o in report.processed) == ["Ω", "雲マスク"]
    assert [(o.scene, o.error_type) for o in report.failed] == [("", "ItemLayoutError")]
    assert run_job(load_spec(spec), raise_on_failure=False).skipped == 2

# ----------------------------------------------------------------------- 16. WKT geometry


def test_wkt_item_geometry_is_a_clear_catalogue_error(sample_catalog: Path, tmp_path: Path) -> None:
    items = _copy_catalog(sample_catalog, tmp_path / "cat")
    _edit_item(items[0], geometry="POLYGON((1 43, 2 43, 2 44, 1 44, 1 43))")
    res = CliRunner().invoke(main, ["run", "--stac", str(tmp_path / "cat" / "catalog.json"), "--bbox", "0,40,5,50",
                                    "--out", str(tmp_path / "out"), "--no-progress", "--backend", "emulated"])
    assert res.exit_code == 4, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # no traceback
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: item ") and "not a GeoJSON object" in last and "WKT" in last


# ---------------------------------------------------- 17. journal directory, log injection, sidecar


@pytest.mark.parametrize("command", ["run", "status"])
def test_journal_that_is_a_directory_is_one_line_naming_the_fix(sample_catalog: Path, tmp_path: Path,
                                                                command: str) -> None:
    out = tmp_path / "out"
    (out / "journal.jsonl").mkdir(parents=True)
    spec = tmp_path / "job.toml"
    spec.write_text(f'name = "j"\nstac = "{sample_catalog}"\noutput = "{out}"\nbackend = "emulated"\n')
    args = ["job", command, str(spec)] + (["--offline"] if command == "status" else [])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert not isinstance(res.exception, IsADirectoryError)
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: the job journal ") and "is a directory" in last and "mv " in last
    assert not list(out.glob("*_cloudmask.tif"))  # nothing was run


def test_control_characters_in_an_id_cannot_forge_a_log_line(sample_catalog: Path, tmp_path: Path) -> None:
    items = _copy_catalog(sample_catalog, tmp_path / "cat")
    _edit_item(items[0], id="evil\nerror: forged line")
    _edit_item(items[1], id="bad\r\x1b[2Kwarning: forged too")
    res = CliRunner().invoke(main, ["run", "--stac", str(tmp_path / "cat" / "catalog.json"), "--out",
                                    str(tmp_path / "out"), "--no-quicklook", "--no-progress", "--backend", "emulated",
                                    "--stats"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert not any(ln.startswith(("error: forged", "warning: forged")) for ln in lines), res.output
    assert not any("\r" in ln or "\x1b" in ln for ln in lines)
    assert any(r"done evil\nerror: forged line in " in ln for ln in lines)  # escaped, on its own line
    assert any(ln.startswith(r"evil\nerror: forged line:") for ln in lines)  # the --stats note too


def test_deleted_category_sidecar_is_restored_on_rerun(sample_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["run", "--stac", str(sample_catalog), "--out", str(out), "--no-quicklook", "--no-progress",
            "--backend", "emulated", "--limit", "2"]
    assert CliRunner().invoke(main, base).exit_code == 0
    sidecars = sorted(out.glob("*_cloudmask.tif.aux.xml"))
    assert len(sidecars) == 2
    original = {aux: aux.read_bytes() for aux in sidecars}
    for aux in sidecars:
        aux.unlink()
    res = CliRunner().invoke(main, [*base, "--skip-existing"])
    assert res.exit_code == 0, res.output
    assert {aux: aux.read_bytes() for aux in sidecars} == original  # restored as written; masks kept
    assert json.loads((out / "summary.json").read_text())["skipped"] == 2
    sidecars[1].unlink()  # a job that keeps the same masks restores it too
    spec = tmp_path / "job.toml"
    spec.write_text(f'name = "j"\nstac = "{sample_catalog}"\noutput = "{out}"\nbackend = "emulated"\nlimit = 2\n')
    job = CliRunner().invoke(main, ["job", "run", str(spec)])
    assert job.exit_code == 0, job.output
    assert "2 already done" in job.output and sidecars[1].read_bytes() == original[sidecars[1]]


# -------------------------------------------------------------------- 14. output smaller than input


def _valid_conv_card(tmp_path: Path, dynamic: bool) -> Path:
    """A 4-band segmentation model of one 3x3 convolution without padding: 256 x 256 in, 254 x 254 out."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4, 3, 3], [0.01] * 108)
    shape_in = ["N", 4, "H", "W"] if dynamic else [1, 4, 256, 256]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[0, 0, 0, 0])], "valid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "v.onnx"))
    card = {"onnx": "v.onnx", "bands": ["blue", "green", "red", "nir"], "product_level": "l2a", "resolution": 30,
            "normalisation": {"type": "scale", "multiply": 1}, "patch_size": 256,
            "classes": ["clear", "cloud", "shadow"]}
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(card))
    return tmp_path / "v.yaml"


@pytest.mark.parametrize("dynamic", [False, True])
def test_model_with_output_smaller_than_input_is_refused_at_load(sample_catalog: Path, tmp_path: Path,
                                                                 dynamic: bool) -> None:
    from cloudmask.errors import ModelCardError
    from cloudmask.models import load_model

    card = _valid_conv_card(tmp_path, dynamic)
    with pytest.raises(ModelCardError, match=r"256x256 input into a 254x254 output"):
        load_model(card)
    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(tmp_path / "out"),
                                    "--model", str(card), "--no-progress"])
    assert res.exit_code == 3, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "256x256" in last and "254x254" in last
    assert not (tmp_path / "out" / "items").exists()  # refused before any scene


# ------------------------------------------------------------- 10. Ctrl-C on a dask job: one line


@pytest.mark.slow  # a local dask cluster in a subprocess, interrupted mid-scene (~30 s)
def test_ctrl_c_on_a_dask_job_says_one_line(sample_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = tmp_path / "job.toml"
    spec.write_text(f'name = "j"\nstac = "{sample_catalog}"\noutput = "{out}"\nbackend = "emulated"\n'
                    'resolution = 10\nemulated_latency = 0.15\n[retries]\ncount = 0\n')
    # a session of its own: Ctrl-C at a terminal signals the whole process group (driver and workers)
    proc = subprocess.Popen(CLI + ["job", "run", str(spec), "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: any(".blocks-" in n for n in _temporaries(out)), 120, proc, "a scene on a worker")
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted by SIGINT"), err[-3000:]
    deadline = time.monotonic() + 20  # the worker processes exit with the driver (the last within seconds)
    while subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "orphaned worker processes"
        time.sleep(0.2)
    assert _temporaries(out) == [] and not list(out.glob("*_cloudmask.tif"))  # stopped, nothing published


# ------------------------------------------------- 11. an orphaned worker publishes nothing


def _slow_job(sample_catalog: Path, out: Path) -> tuple[dict[str, Any], Any]:
    from cloudmask.jobs.run import _item_payload
    from cloudmask.jobs.task import TaskSettings

    item = sorted(pystac.Catalog.from_file(str(sample_catalog)).get_items(recursive=True), key=lambda i: i.id)[0]
    from cloudmask.options import MaskOptions

    settings = TaskSettings(out_dir=str(out), lease="run-1",
                            options=MaskOptions(backend="emulated", resolution=10.0, latency_s=0.15, quicklook=False))
    return _item_payload(item), settings


def test_task_without_its_lease_publishes_nothing(sample_catalog: Path, tmp_path: Path) -> None:
    from cloudmask.jobs.task import process_scene

    out = tmp_path / "out"
    payload, settings = _slow_job(sample_catalog, out)
    outcome = process_scene(payload, settings)  # nobody holds the job's lock for run-1
    assert not outcome.ok and outcome.error_type == "LeaseLostError", outcome.error
    assert "not published" in (outcome.error or "")
    assert not list(out.glob("*_cloudmask.tif*")) and _temporaries(out) == []


def test_task_stops_when_its_run_gives_up_the_lock_mid_scene(sample_catalog: Path, tmp_path: Path) -> None:
    """The driver (or its scheduler) is gone: the lock is released while a worker still streams the scene."""
    import threading

    from cloudmask.jobs.state import JobLock
    from cloudmask.jobs.task import process_scene

    out = tmp_path / "out"
    payload, settings = _slow_job(sample_catalog, out)
    lock = JobLock(out, "j", run="run-1").acquire()
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(process_scene(payload, settings)))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not any(".blocks-" in n for n in _temporaries(out)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.is_alive(), "the scene ended before the lock was released"
    finally:
        lock.release()
    worker.join(60)
    assert not worker.is_alive()
    outcome = result[0]
    assert not outcome.ok and outcome.error_type == "LeaseLostError", outcome.error
    assert not list(out.glob("*_cloudmask.tif*")) and _temporaries(out) == []


@pytest.mark.slow  # a dask scheduler and worker in subprocesses; the scheduler is killed mid-scene (~30 s)
def test_orphaned_dask_worker_publishes_nothing_after_the_scheduler_dies(sample_catalog: Path,
                                                                         tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    out, sched_file = tmp_path / "out", tmp_path / "scheduler.json"
    spec = tmp_path / "job.toml"
    spec.write_text(f'name = "j"\nstac = "{sample_catalog}"\noutput = "{out}"\nbackend = "emulated"\n'
                    'resolution = 10\nemulated_latency = 0.3\n[retries]\ncount = 0\n')
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)], **quiet)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                       "1", "--no-nanny", "--no-dashboard"], **quiet))
        driver = subprocess.Popen(CLI + ["job", "run", str(spec), "--scheduler", address],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(driver)
        _wait_for(lambda: any(".blocks-" in n for n in _temporaries(out)), 120, driver, "a scene on the worker")
        procs[0].kill()  # the scheduler dies; the worker goes on with its scene
        _, err = driver.communicate(timeout=180)
        assert driver.returncode == 8, err[-3000:]  # every scene failed; the run ended and released the lock
        assert "Traceback" not in err and "scheduler-connection-lost" in err
        deadline = time.monotonic() + 90  # the worker's scene ends (stopped, or finished on the old code)
        while _temporaries(out) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        published = sorted(p.name.removesuffix("_cloudmask.tif") for p in out.glob("*_cloudmask.tif"))
        recorded = sorted(p.stem for p in (out / "items").glob("*.json"))
        assert published == recorded == []  # nothing renamed into place after the run let go of its lock
        assert _temporaries(out) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
