"""``pneumocnn evaluate``: the metrics of a model on a labelled folder."""

from __future__ import annotations

import argparse
import sys

from pneumocnn.commands.command import OK, SOME_FAILED, Command
from pneumocnn.core import strictjson


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this verb's options to ``parser``."""
    parser.add_argument("model", help=".tflite or .keras model file")
    parser.add_argument("folder", help="folder with one subfolder per class (NORMAL, PNEUMONIA)")
    parser.add_argument("--threshold", type=float, help="override the model's decision threshold")
    parser.add_argument("--out", help="write metrics.json, predictions.csv and roc, confusion and "
                                      "reliability PNGs")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    """Evaluate ``args.model`` on ``args.folder`` and print the metrics; return the exit code."""
    from pneumocnn.runtime.evaluation import evaluate

    result = evaluate(args.model, args.folder, threshold=args.threshold, out=args.out)
    print(strictjson.dumps(result.metrics, indent=1) if args.json else result)
    if result.figures_error:
        print(f"pneumocnn evaluate: metrics.json and predictions.csv written to {args.out}, the "
              f"figures not: {result.figures_error}", file=sys.stderr)
    return SOME_FAILED if result.failed or result.figures_error else OK


COMMAND = Command("evaluate", "metrics of a model on a labelled folder", add_arguments, run)
