"""The notebooks in ``notebooks/`` (jupytext percent scripts) run headless, top to bottom, without errors.

Each is converted with jupytext and executed by nbclient in an ipykernel kernel of *this* interpreter
(a kernel spec written to a temporary directory, so no system-wide ``python3`` kernel can be picked up
by mistake). A missing jupytext/nbclient/ipykernel makes these tests fail, not skip. Notebooks 01, 02 and
04 run on the real demo chips shipped in the package (04 through the emulated Voyager SDK); 03 uses small synthetic scenes
(``CLOUDMASK_NOTEBOOK_SIZE=600``) in a temporary ``CLOUDMASK_SAMPLE_DIR``.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_quickstart.py", "02_exploring_a_scene.py", "03_bring_your_own_model.py", "04_your_model_on_metis.py"]
TIMEOUT_S = 300


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.py")) == NAMES


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Environment and kernel spec directory for the notebook kernels."""
    import ipykernel.kernelspec  # noqa: F401 - fail (not skip) when ipykernel is missing

    root = tmp_path_factory.mktemp("notebooks")
    specs = root / "kernels"
    spec_dir = specs / "cloudmask-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        '{"argv": ' + _json_list([sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
        + ', "display_name": "cloudmask test", "language": "python"}'
    )
    env = {
        "CLOUDMASK_SAMPLE_DIR": str(root / "sample"),
        "CLOUDMASK_NOTEBOOK_SIZE": "600",
        "CLOUDMASK_NOTEBOOK_OUT": str(root / "out"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    return specs, env, root


def _json_list(values: list[str]) -> str:
    import json

    return json.dumps(values)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernel_env, monkeypatch):
    import jupytext
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    specs, env, root = kernel_env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = jupytext.read(NOTEBOOKS / name)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "notebooks carry no outputs"
    ksm = KernelSpecManager(kernel_dirs=[str(specs)])
    km = KernelManager(kernel_name="cloudmask-test", kernel_spec_manager=ksm, transport="ipc")
    workdir = root / name.removesuffix(".py")
    workdir.mkdir()
    (workdir / "ipc").mkdir()
    km.connection_file = str(workdir / "ipc" / "kernel.json")
    km.ip = str(workdir / "ipc" / "k")
    client = NotebookClient(nb, km=km, timeout=TIMEOUT_S, resources={"metadata": {"path": str(workdir)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:
        nbformat.write(nb, workdir / name.replace(".py", ".ipynb"))  # executed copy, for debugging
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    seconds = time.perf_counter() - t0
    print(f"{name}: {seconds:.1f} s (executed notebook: {workdir})")
    text = _outputs_text(nb)
    assert "Traceback" not in text
    assert "unavailable" not in text, "an optional part of the notebook did not run:\n" + text[-2000:]
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 1, f"{name} shows no picture"
    if name.startswith("01"):  # the real demo chips, masked by the 4-band L2A model
        assert "identical to the COG: True" in text
        assert (root / "out" / "catalog.json").is_file()
        assert text.count("ukis-4b-l2a") >= 5 and "ONCLOUDN_adxp_20200429_L2A" in text
        assert text.count("agrees with the ensemble") == 5
    if name.startswith("02"):
        assert "same grid: True" in text
        assert "same mask with a distributed Client: True" in text
        assert "agreement with the ensemble:" in text and "ukis-4b-l1c on adwp" in text
        # the lake chip: most of the model's "shadow" lies on open water
        m = re.search(r"water: ([\d.]+) % of the chip.*\s+shadow: ([\d.]+) % of the chip, of which on water: ([\d.]+)", text)
        assert m, text[-2000:]
        water, shadow, on_water = map(float, m.groups())
        assert water > 60 and shadow > 20 and on_water > 0.9 * shadow
    if name.startswith("03"):
        assert "agreement with ukis-6b-l2a: 100.00 %" in text
        assert "compilable after export: True" in text
    if name.startswith("04"):  # two models of one's own, export -> calibration -> compile -> run on the (emulated) Metis
        assert text.count("compilable after export: True") == 2 and "compilable as exported: False" in text
        assert "Voyager SDK runtime: 1.6.0" in text and "metis-0:1:0" in text
        agreements = [float(v) for v in re.findall(r"metis vs CPU agreement ([0-9.]+) %", text)]
        assert len(agreements) == 10 and min(agreements) >= 95.0, agreements


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(str(out["data"].get("text/plain", "")))
            elif out.get("output_type") == "error":
                parts.append("Traceback " + "\n".join(out.get("traceback", [])))
    return "\n".join(parts)



def test_make_notebooks_runs_each_notebook_with_jupytext_execute():
    """`make notebooks` is the documented way to run them; what it calls is installed by the dev extra."""
    import subprocess
    import tomllib

    root = NOTEBOOKS.parent
    res = subprocess.run(["make", "-n", "-o", ".venv/.installed", "notebooks"], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    recipe = " ".join(res.stdout.replace("\\\n", " ").split())
    assert "jupytext --to ipynb --execute" in recipe and all(f"notebooks/{n}" in recipe for n in NAMES)
    dev = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    names = {re.split(r"[^A-Za-z0-9_.-]", r, maxsplit=1)[0].lower() for r in dev}
    assert {"jupytext", "nbconvert", "ipykernel"} <= names  # jupytext --execute runs through nbconvert
    import nbconvert  # noqa: F401 - installed with the dev extra

    assert "make notebooks" in (root / "README.md").read_text()
