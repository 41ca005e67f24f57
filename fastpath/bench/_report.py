"""What every benchmark prints and saves: the environment, a table, JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np

import fastpath
from fastpath._core import chain as core_chain


def environment() -> dict:
    """Versions and the git revision, so that a figure can be traced to what produced it."""
    import numba

    try:
        git = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(fastpath.__file__),
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        git = "unknown"
    return {
        "fastpath": fastpath.__version__,
        "git": git,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "machine": platform.machine(),
        "build": "debug" if core_chain.DEBUG_BUILD else "release",
        "cpus": len(os.sched_getaffinity(0)),
    }


def print_table(headers: list[str], rows: list[list], file=None) -> None:
    """Print rows under headers, columns right-aligned to their widest cell, to `file`
    (standard output by default)."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), file=file)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=file)


def write_json(path: str, data: dict) -> None:
    """Write data as indented JSON (anything JSON does not know becomes its str()) to the
    file at `path`, or to standard output for "-"."""
    if path == "-":
        _dump_json(data, sys.stdout)
        return
    with open(path, "w") as f:
        _dump_json(data, f)


def _dump_json(data: dict, f) -> None:
    json.dump(data, f, indent=2, default=str)
    f.write("\n")
