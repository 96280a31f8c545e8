"""``pneumocnn triage``: score a folder into a sorted worklist and report."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumocnn.commands.command import OK, SOME_FAILED, Command
from pneumocnn.commands.options import (
    add_guard_option,
    add_heatmap_options,
    add_model_options,
    add_progress_option,
    load_model,
    require_inputs,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this verb's options to ``parser``."""
    parser.add_argument("folder", help="folder of images and DICOM files (searched recursively), or "
                                       "a manifest of them (as predict takes)")
    parser.add_argument("--out", required=True, help="report folder: worklist.csv, report.html")
    add_model_options(parser)
    add_heatmap_options(parser)
    add_guard_option(parser)
    add_progress_option(parser)


def run(args: argparse.Namespace) -> int:
    """Score ``args.folder`` into the worklist and report in ``args.out``; return the exit code."""
    from pneumocnn.clinic.triage import SCORES, triage

    if not (Path(args.out) / SCORES).exists():  # a rerun may have nothing new to score
        require_inputs([args.folder])
    worklist = triage(args.folder, args.out, load_model(args), heatmaps=args.heatmaps,
                      guard=args.guard, progress=False if args.no_progress else None)
    print(f"{len(worklist.rows) - len(worklist.failed)} scored, {len(worklist.failed)} failed; "
          f"worklist {worklist.csv_path}, report {worklist.html_path}")
    return SOME_FAILED if worklist.failed else OK


COMMAND = Command("triage", "score a folder into a sorted worklist and report", add_arguments, run)
