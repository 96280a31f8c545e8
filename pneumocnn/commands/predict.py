"""``pneumocnn predict``: score X-ray files, folders and manifests."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

from pneumocnn.commands.command import OK, SOME_FAILED, Command
from pneumocnn.commands.options import (
    add_guard_option,
    add_model_options,
    add_progress_option,
    load_model,
    require_inputs,
)
from pneumocnn.core import strictjson


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
    from pneumocnn.core.inputs import expand_inputs
    from pneumocnn.core.progress import progress_bar
    from pneumocnn.runtime.predictions_csv import PredictionsCSV

    if args.resume and not args.csv:
        raise ValueError("--resume needs --csv FILE")
    if args.dask is None and args.partition_size is not None:
        raise ValueError("--partition-size needs --dask")
    if args.dask is not None:
        from pneumocnn.clinic.dask_scoring import PARTITION_SIZE, predict_on_dask

        # Dask logs its cluster's comings and goings at INFO: only with --verbose
        logging.getLogger("distributed").setLevel(logging.INFO if args.verbose else logging.WARNING)
    if not args.resume:
        require_inputs(args.inputs)
    threads = (args.threads or 1) if args.dask is not None else args.threads
    model = load_model(args, threads)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(PredictionsCSV(args.csv, resume=args.resume)) if args.csv else None
        done = sink.done if sink else ()
        failed_before = sink.failed if sink else 0
        missed = flagged = scored = positive = 0
        if done:
            print(f"pneumocnn predict: {len(done)} input(s) already in {args.csv}", file=sys.stderr)
        if args.dask is not None:
            predictions = predict_on_dask(
                args.inputs, model, cluster=args.dask, threshold=args.threshold,
                threads=threads, skip=done, partition_size=args.partition_size or PARTITION_SIZE,
                guard=args.guard)
        else:
            predictions = model.predict_iter(args.inputs, threshold=args.threshold, skip=done,
                                             guard=args.guard)
        stack.enter_context(contextlib.closing(predictions))  # a cluster of ours closes with it
        # a bar on a terminal's stderr, unless the results themselves are printed there
        quiet = args.no_progress or (sink is None and sys.stdout.isatty())
        bar = stack.enter_context(progress_bar(
            enabled=False if quiet else None,
            count=lambda: (name for _, name in expand_inputs(args.inputs) if name not in done)))
        for prediction in predictions:
            missed += not prediction.ok
            flagged += prediction.flagged
            scored += prediction.ok
            positive += prediction.label == model.labels[1]
            if sink is not None:
                sink.write(prediction)
            elif args.json:
                print(strictjson.dumps(prediction.to_dict()), flush=True)
            else:
                print(prediction, flush=True)
            if not prediction.ok and (sink is not None or args.json):  # results go elsewhere
                bar.write(f"pneumocnn predict: {prediction}", file=sys.stderr)
            bar.update()
    failed = failed_before + missed
    if failed:
        held = (f", {flagged} of them not a frontal chest X-ray (--no-guard scores them)"
                if flagged else "")
        print(f"pneumocnn predict: {failed} input(s) could not be scored{held}", file=sys.stderr)
    if args.csv:
        seconds = time.perf_counter() - started
        earlier = f" ({len(done)} rows were there already)" if done else ""
        print(f"pneumocnn predict: {scored + missed} input(s) in {seconds:.1f} s "
              f"({(scored + missed) / seconds:.1f}/s): {scored} scored, {positive} of them "
              f"{model.labels[1]}; {missed} not scored; rows in {args.csv}{earlier}",
              file=sys.stderr)
    return SOME_FAILED if failed else OK


COMMAND = Command("predict", "score X-ray files, folders and manifests", add_arguments, run)
