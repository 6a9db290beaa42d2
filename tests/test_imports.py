"""The package's import graph: data flows one way, so no module may import (even lazily) one that imports it back."""

from __future__ import annotations

import importlib
import inspect

import grimp


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_no_import_circle() -> None:
    graph = grimp.build_graph("cloudmask")  # imports inside functions count too
    circles = _cycles(graph)
    details = [
        f"{' <-> '.join(c)}: "
        + "; ".join(f"{a} imports {b} (line {d[0]['line_number']})" for a in c for b in c
                    if a != b and (d := graph.get_import_details(importer=a, imported=b)))
        for c in circles
    ]
    assert not circles, "import circles (move the shared piece into a module both can import):\n" + "\n".join(details)


def test_cli_adds_its_groups_explicitly() -> None:
    """The command groups are imported and added by name: the graph above sees every edge."""
    from cloudmask.cli import main
    from cloudmask.jobs.cli import job
    from cloudmask.metis.cli import metis

    assert main.commands["job"] is job and main.commands["metis"] is metis
    assert {"demo", "evaluate", "models", "profiles", "run", "search"} <= set(main.commands)
    graph = grimp.build_graph("cloudmask")
    assert {"cloudmask.jobs.cli", "cloudmask.metis.cli"} <= graph.find_modules_directly_imported_by("cloudmask.cli")
    for module in ("cloudmask.cli", "cloudmask.cli.commands"):
        assert "import_module" not in inspect.getsource(importlib.import_module(module)), module
