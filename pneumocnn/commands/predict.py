"""``pneumocnn predict``: score X-ray files, folders and manifests."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Container, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pneumocnn.commands.command import OK, SOME_FAILED, Command
from pneumocnn.commands.options import (
    add_guard_option,
    add_model_options,
    add_progress_option,
    load_model,
    require_inputs,
)
from pneumocnn.core import strictjson
from pneumocnn.runtime.model import Model, Prediction

if TYPE_CHECKING:
    from tqdm import tqdm

    from pneumocnn.runtime.predictions_csv import PredictionsCSV


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this verb's options to ``parser``."""
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or "
                                                  "manifests: a .txt or .lst file of paths, one a "
                                                  "line, or a .csv file with a 'path' column")
    add_model_options(parser)
    parser.add_argument("--threshold", type=float, help="override the model's decision threshold")
    parser.add_argument("--threads", type=int, help="interpreter CPU threads (default: all cores; "
                                                    "with --dask, 1 per worker)")
    add_guard_option(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON lines")
    output.add_argument("--csv", metavar="FILE", help="write a CSV file as results arrive")
    parser.add_argument("--resume", action="store_true",
                        help="with --csv: keep the rows FILE already has (an interrupted run) and "
                             "append rows for the inputs not in it")
    parser.add_argument("--dask", metavar="CLUSTER",
                        help="score on Dask (needs [dask]): local:N for N worker processes on this "
                             "machine, or a scheduler address such as tcp://HOST:8786; rows arrive "
                             "in the order tasks finish")
    parser.add_argument("--partition-size", type=int, metavar="N",
                        help="with --dask: files per task (default: 128)")
    add_progress_option(parser)


def run(args: argparse.Namespace) -> int:
    """Score ``args.inputs`` and print or write a result for each; return the exit code."""
    from pneumocnn.runtime.predictions_csv import PredictionsCSV

    _check_options(args)
    score = _scorer(args)  # before any work: a missing Dask is a usage error
    if not args.resume:
        require_inputs(args.inputs)
    model = load_model(args, _threads(args))
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(PredictionsCSV(args.csv, resume=args.resume)) if args.csv else None
        done = sink.done if sink else ()
        if done:
            print(f"pneumocnn predict: {len(done)} input(s) already in {args.csv}", file=sys.stderr)
        predictions = score(model, done)
        stack.enter_context(contextlib.closing(predictions))  # a cluster of ours closes with it
        bar = stack.enter_context(_progress_bar(args, done, to_file=sink is not None))
        write = _writer(args, sink)
        tally = Tally(model.labels[1], failed_before=sink.failed if sink else 0)
        for prediction in predictions:
            tally.count(prediction)
            write(prediction)
            if not prediction.ok and (sink is not None or args.json):  # results go elsewhere
                bar.write(f"pneumocnn predict: {prediction}", file=sys.stderr)
            bar.update()
    _report_failures(tally)
    if args.csv:
        _report_run(tally, args.csv, len(done), time.perf_counter() - started)
    return SOME_FAILED if tally.failed else OK


def _check_options(args: argparse.Namespace) -> None:
    """Refuse options that need another one."""
    if args.resume and not args.csv:
        raise ValueError("--resume needs --csv FILE")
    if args.dask is None and args.partition_size is not None:
        raise ValueError("--partition-size needs --dask")


def _threads(args: argparse.Namespace) -> int | None:
    """Interpreter threads: ``--threads``, by default all cores here and 1 on a Dask worker."""
    return (args.threads or 1) if args.dask is not None else args.threads


Scorer = Callable[[Model, Container[str]], Generator[Prediction, None, None]]


def _scorer(args: argparse.Namespace) -> Scorer:
    """How the inputs are scored, skipping those done already: by the model here, or on the
    Dask cluster ``--dask`` names (whose module is imported now, raising
    ``MissingDependencyError`` where Dask is not installed)."""
    if args.dask is None:
        return lambda model, done: model.predict_iter(args.inputs, threshold=args.threshold,
                                                      skip=done, guard=args.guard)
    from pneumocnn.clinic.dask_scoring import PARTITION_SIZE, predict_on_dask

    # Dask logs its cluster's comings and goings at INFO: only with --verbose
    logging.getLogger("distributed").setLevel(logging.INFO if args.verbose else logging.WARNING)
    return lambda model, done: predict_on_dask(
        args.inputs, model, cluster=args.dask, threshold=args.threshold, threads=args.threads or 1,
        skip=done, partition_size=args.partition_size or PARTITION_SIZE, guard=args.guard)


def _progress_bar(args: argparse.Namespace, done: Container[str], to_file: bool) -> tqdm:
    """A bar on a terminal's stderr, unless ``--no-progress`` or the results themselves are
    printed there; its total is counted from the inputs not ``done``."""
    from pneumocnn.core.inputs import expand_inputs
    from pneumocnn.core.progress import progress_bar

    quiet = args.no_progress or (not to_file and sys.stdout.isatty())
    return progress_bar(
        enabled=False if quiet else None,
        count=lambda: (name for _, name in expand_inputs(args.inputs) if name not in done))


def _writer(args: argparse.Namespace, sink: PredictionsCSV | None) -> Callable[[Prediction], None]:
    """Where each result goes: a row of the ``--csv`` file, a JSON line (``--json``), or a
    line of text on stdout."""
    if sink is not None:
        return sink.write
    if args.json:
        return lambda prediction: print(strictjson.dumps(prediction.to_dict()), flush=True)
    return lambda prediction: print(prediction, flush=True)


@dataclass
class Tally:
    """The counts of a run: inputs scored, not scored (``missed``; ``flagged``: held back by the
    input guard), scored as ``positive_label``, and not scored by the earlier run resumed."""

    positive_label: str
    failed_before: int = 0
    scored: int = 0
    missed: int = 0
    flagged: int = 0
    positive: int = 0

    def count(self, prediction: Prediction) -> None:
        """Count one result."""
        self.scored += prediction.ok
        self.missed += not prediction.ok
        self.flagged += prediction.flagged
        self.positive += prediction.label == self.positive_label

    @property
    def failed(self) -> int:
        """Inputs not scored, by this run and the one it resumed."""
        return self.failed_before + self.missed


def _report_failures(tally: Tally) -> None:
    """Say on stderr how many inputs could not be scored, if any."""
    if tally.failed:
        held = (f", {tally.flagged} of them not a frontal chest X-ray (--no-guard scores them)"
                if tally.flagged else "")
        print(f"pneumocnn predict: {tally.failed} input(s) could not be scored{held}", file=sys.stderr)


def _report_run(tally: Tally, csv: str, rows_before: int, seconds: float) -> None:
    """The summary line of a ``--csv`` run on stderr: inputs, time, rate and outcomes."""
    inputs = tally.scored + tally.missed
    earlier = f" ({rows_before} rows were there already)" if rows_before else ""
    print(f"pneumocnn predict: {inputs} input(s) in {seconds:.1f} s ({inputs / seconds:.1f}/s): "
          f"{tally.scored} scored, {tally.positive} of them {tally.positive_label}; {tally.missed} "
          f"not scored; rows in {csv}{earlier}", file=sys.stderr)

COMMAND = Command("predict", "score X-ray files, folders and manifests", add_arguments, run)
