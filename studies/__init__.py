"""pneumocnn's studies: the research behind the bundled model, apart from the benchmark suite.

They train candidate models, simulate acquisition shifts and other sites, and record the
decisions taken from them in ``studies/results/``; ``studies/README.md`` says what each one
is and how to re-make it. They reuse the suite's inputs and machine facts (:mod:`benchmarks`);
the suite never imports them.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import REPO

RESULTS = REPO / "studies" / "results"


def run_facts(module: str, argv: Sequence[str] | None) -> dict:
    """What every study's results record first: the command that re-makes them, when, and on
    which CPU and Python (``argv`` as ``main`` got it; ``None``: the process's own)."""
    from benchmarks.report import cpu_features, cpu_name

    given = sys.argv[1:] if argv is None else argv
    return {"command": f"python -m {module} " + " ".join(given),
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_name(), "cpu_features": cpu_features(), "python": platform.python_version()}


def write_results(out: Path, results: dict, page: str) -> None:
    """Write ``results.json`` and the Markdown ``page`` as ``results.md`` into ``out`` (each
    atomically), and print the page."""
    from pneumocnn.core.durable_files import write_text

    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(results, indent=1))
    write_text(out / "results.md", page)
    print(page)
