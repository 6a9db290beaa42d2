"""The disk cache of pinned ONNX graphs (cloudmask.runtime.graph_cache) and the onnx-free import path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cloudmask
from cloudmask.errors import ModelError
from cloudmask.models import load_model
from cloudmask.runtime import OnnxRunner, graph_cache
from cloudmask.runtime import onnx as ort_backend

MLP = Path(cloudmask.__file__).parent / "data" / "models" / "spectral-mlp"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("CLOUDMASK_CACHE_DIR", str(root))
    monkeypatch.delenv("CLOUDMASK_GRAPH_CACHE", raising=False)
    return root


def _no_pinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a runner pins a graph with onnx (i.e. was not served from the cache)."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("graph was pinned again instead of read from the cache")

    monkeypatch.setattr(ort_backend, "static_graph", boom)
    monkeypatch.setattr(ort_backend, "pixel_graph", boom)


def _graphs(root: Path) -> list[Path]:
    return sorted((root / "graphs").glob("*.onnx"))


def test_second_runner_is_served_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card = load_model("ukis-6b-l2a")
    first = OnnxRunner(card, batch=1)
    assert len(_graphs(cache)) == 1
    x = np.random.default_rng(0).normal(size=first.input_shape).astype(np.float32)
    want = first.run(x)
    _no_pinning(monkeypatch)
    second = OnnxRunner(card, batch=1)
    assert second.input_shape == first.input_shape == (1, 6, 256, 256)
    np.testing.assert_array_equal(second.run(x), want)
    assert len(_graphs(cache)) == 1


def test_pixel_model_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card = load_model(MLP / "card.yaml")
    first = OnnxRunner(card, block=4096)
    x = np.random.default_rng(1).normal(size=first.input_shape).astype(np.float32)
    want = first.run(x)
    _no_pinning(monkeypatch)
    second = OnnxRunner(card, block=4096)
    assert second.input_shape == first.input_shape
    np.testing.assert_array_equal(second.run(x), want)


def test_shape_is_part_of_the_key(cache: Path) -> None:
    card = load_model("ukis-6b-l2a")
    OnnxRunner(card, batch=1)
    OnnxRunner(card, batch=2)
    assert len(_graphs(cache)) == 2


def test_card_checks_still_run_on_a_cache_hit(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    six = load_model("ukis-6b-l2a")
    four = load_model("ukis-4b-l2a").with_onnx(six.onnx_path)
    monkeypatch.setenv("CLOUDMASK_GRAPH_CACHE", "0")
    with pytest.raises(ModelError) as cold:
        OnnxRunner(four)
    monkeypatch.delenv("CLOUDMASK_GRAPH_CACHE")
    OnnxRunner(six)  # warms the cache for this file and shape
    _no_pinning(monkeypatch)
    with pytest.raises(ModelError) as warm:
        OnnxRunner(four)
    assert str(warm.value) == str(cold.value)
    assert "the ONNX input has 6 channels but the card lists 4 bands" in str(warm.value)


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_corrupt_cache_entry_is_rebuilt(cache: Path) -> None:
    card = load_model("ukis-6b-l2a")
    first = OnnxRunner(card)
    (entry,) = _graphs(cache)
    good = entry.read_bytes()
    entry.write_bytes(b"not an onnx graph")
    x = np.zeros(first.input_shape, np.float32)
    np.testing.assert_array_equal(OnnxRunner(card).run(x), first.run(x))
    assert entry.read_bytes() == good
    entry.write_bytes(b"")
    OnnxRunner(card)
    assert entry.read_bytes() == good


def test_unwritable_cache_never_fails_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache dir cannot be made under a file")
    monkeypatch.setenv("CLOUDMASK_CACHE_DIR", str(blocker / "cache"))
    card = load_model(MLP / "card.yaml")
    runner = OnnxRunner(card, block=1024)
    assert runner.run(np.zeros(runner.input_shape, np.float32)).shape == (1024, 2)


def test_touching_or_changing_the_model_changes_the_key(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(MLP / "model.onnx", model)
    key = graph_cache.graph_key(model, ("pixel", 1024))
    assert key == graph_cache.graph_key(model, ("pixel", 1024))
    assert key != graph_cache.graph_key(model, ("pixel", 2048))
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = graph_cache.graph_key(model, ("pixel", 1024))
    assert touched != key
    model.write_bytes(model.read_bytes() + b"\0")
    assert graph_cache.graph_key(model, ("pixel", 1024)) not in {key, touched}
    assert graph_cache.graph_key(tmp_path / "missing.onnx", ("pixel", 1024)) is None


def _python(code: str, cache_dir: Path) -> str:
    env = {**os.environ, "CLOUDMASK_CACHE_DIR": str(cache_dir)}
    env.pop("CLOUDMASK_GRAPH_CACHE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_warm_cache_runner_does_not_import_onnx(cache: Path) -> None:
    OnnxRunner(load_model("ukis-6b-l2a"))  # warm the cache in this process
    code = (
        "import sys, numpy as np\n"
        "from cloudmask.models import load_model\n"
        "from cloudmask.runtime import OnnxRunner\n"
        "r = OnnxRunner(load_model('ukis-6b-l2a'))\n"
        "assert r.run(np.zeros(r.input_shape, np.float32)).shape[0] == 1\n"
        "print('onnx' in sys.modules)\n"
    )
    assert _python(code, cache) == "False"


@pytest.mark.parametrize("module", ["cloudmask.pipeline", "cloudmask.cli"])
def test_import_does_not_import_onnx(module: str, cache: Path) -> None:
    assert _python(f"import sys, {module}; print('onnx' in sys.modules)", cache) == "False"
