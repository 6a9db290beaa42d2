"""Every package ``cloudmask/`` imports is declared in pyproject.toml, so a plain ``pip install .`` runs.

The source is scanned with :mod:`ast` (every ``import``, also inside functions). Each imported module is
the standard library, cloudmask itself, or belongs to a distribution that pyproject.toml declares:
imports that run when a module is imported (module level, outside ``try``/``if TYPE_CHECKING``) need a
runtime dependency; imports inside functions or guarded by ``try`` may come from an optional extra
(``viz``, ``metis``, ``s2cloudless``, ``distributed``, ``planetary-computer``; not ``dev`` or ``train``,
which are for tests and scripts). Module -> distribution comes from the installed packages' metadata.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cloudmask"
#: Extras that runtime code may use lazily; ``dev`` and ``train`` are for tests and scripts.
RUNTIME_EXTRAS = ("planetary-computer", "metis", "viz", "s2cloudless", "distributed", "openvino")
#: Imported but not installable from a package index: documented where they are used.
NOT_ON_AN_INDEX = {"axelera": "the Axelera Voyager SDK (cloudmask/runtime/metis.py, metis/compile_script.py)"}


def _name(requirement: str) -> str:
    """``"dask[array]>=2024.1"`` -> ``"dask"`` (PEP 503 normalised)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, requirement
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for x in RUNTIME_EXTRAS for r in project["optional-dependencies"][x]}
    return runtime, extras - {"s2-cloudmask"}


@cache
def _top_level() -> dict[str, list[str]]:
    return packages_distributions()


@cache
def _files(dist: str) -> frozenset[str]:
    try:
        return frozenset(str(f) for f in (distribution(dist).files or ()))
    except PackageNotFoundError:
        return frozenset()


def _distributions(module: str) -> set[str]:
    """The installed distributions that provide ``module`` (namespace packages such as ``odc`` resolved
    by the sub-package's files)."""
    parts = module.split(".")
    cands = _top_level().get(parts[0], [])
    if len(cands) > 1 and len(parts) > 1:
        prefix = "/".join(parts[:2])
        # the distribution named after the package (pystac) provides what its split-off parts hold (pystac-core)
        cands = [d for d in cands if _name(d) == _name(parts[0])
                 or any(f.startswith(prefix + "/") or f == prefix + ".py" for f in _files(d))]
    return {_name(d) for d in cands}


def _imports(tree: ast.AST) -> list[tuple[str, bool, int]]:
    """``(module, at_import_time, line)`` of every absolute import in a module."""
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            lazy = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Try) or (
                isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.Import):
                out.extend((a.name, eager, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module, eager, child.lineno))
            visit(child, eager and not lazy)

    visit(tree, True)
    return out


def test_every_import_of_the_package_is_declared():
    runtime, extras = _declared()
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for module, eager, line in _imports(ast.parse(path.read_text(), str(path))):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "cloudmask" or top in NOT_ON_AN_INDEX:
                continue
            dists = _distributions(module)
            where = f"{path.relative_to(REPO)}:{line} imports {module}"
            if not dists:
                problems.append(f"{where}, which no installed distribution provides")
            elif not dists & runtime and (eager or not dists & extras):
                need = "a runtime dependency" if eager else "a dependency or a runtime extra"
                problems.append(f"{where} ({' or '.join(sorted(dists))}): not declared as {need}")
    assert not problems, "\n".join(problems)


def test_the_scan_sees_lazy_and_eager_imports():
    """The scanner itself: eager vs lazy, and a namespace package resolved to its own distribution."""
    tree = ast.parse("import numpy\nfrom odc.geo.geobox import GeoBox\ndef f():\n    import matplotlib\n"
                     "try:\n    import distributed\nexcept ImportError:\n    pass\n")
    assert [(m, e) for m, e, _ in _imports(tree)] == [
        ("numpy", True), ("odc.geo.geobox", True), ("matplotlib", False), ("distributed", False)]
    assert _distributions("odc.geo.geobox") == {"odc-geo"}
    runtime, extras = _declared()
    assert "platformdirs" in runtime and "matplotlib" in extras and "pytest" not in runtime | extras
