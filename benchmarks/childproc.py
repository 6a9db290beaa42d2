"""Each benchmark run in its own process: the ``--child`` protocol the scripts here share.

A script calls ``serve(child)`` first in ``main``: run as ``script --child '<json list>'`` it prints
``RESULT <json>`` of ``child(*list)`` and returns True. ``call`` starts such a child and returns its
result; ``vm_hwm_mib`` is the calling process's peak resident memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any


def serve(child: Callable[..., Any]) -> bool:
    """Answer a ``--child`` invocation of this script (True), or do nothing (False)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(child(*json.loads(sys.argv[2]))), flush=True)
        return True
    return False


def parse_result(stdout: str) -> dict[str, Any]:
    """The ``RESULT`` line of a child's output."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    return dict(json.loads(line[7:]))


def call(script: str, args: Sequence[Any], env: dict[str, str] | None = None,
         prefix: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``script --child args`` (after ``prefix``, e.g. a profiler) in a new interpreter; its result."""
    cmd = [*prefix, sys.executable, script, "--child", json.dumps(list(args))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{script} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return parse_result(proc.stdout)


def vm_hwm_mib() -> float:
    """Peak resident memory of this process (VmHWM, reset at exec unlike rusage's ru_maxrss), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")
