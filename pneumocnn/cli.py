"""The ``pneumocnn`` command line: predict, explain, triage, listen, evaluate, calibrate, info,
train, convert.

Exit codes: 0 success; 1 done, but not all of it as asked (stderr says what): some inputs
could not be scored (the rest were), including inputs the input guard held back (DICOM tags
that say the image is not a frontal chest X-ray; ``--no-guard`` scores them), ``evaluate
--out`` could not draw its figures (matplotlib missing: the metrics and predictions were
written), or ``calibrate``'s cross-validated sensitivity fell short of its target (the site
model was written); 2 usage error, including a model or data folder that cannot be used, inputs
that hold no image at all (an empty folder), and a command whose optional dependencies are
missing (``train`` without ``pneumocnn[train]``).
``predict --csv`` ends with a summary line on stderr (scored, not scored, labelled positive,
time).
``predict --csv FILE --resume`` continues an interrupted run: inputs already in FILE are
skipped, new rows are appended. ``predict --dask CLUSTER`` scores on a Dask cluster
(:mod:`pneumocnn.clinic.dask_scoring`, imported only then). JSON output is strict: ``null``
where a number is undefined. What pydicom and its decoders log or warn about a file never
reaches stderr: each input that could not be scored gets one line of pneumocnn's own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from pneumocnn.core import strictjson
from pneumocnn.core.errors import NotFrontalChestError, PneumocnnError
from pneumocnn.training.settings import ARCHITECTURE_NAMES, AUGMENTATIONS, RECIPES, TrainingConfig

OK, SOME_FAILED, USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    from pneumocnn.runtime.native_stderr import drop_native_chatter

    drop_native_chatter()  # this process's stderr is the command line's
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(message)s")
    # pydicom warns about each oddity of a file it reads (and logs it too, which pneumocnn holds
    # back while reading); a file that cannot be used is reported once, by pneumocnn
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    if hasattr(sys.stdout, "reconfigure"):  # print any file name, even one that is not UTF-8
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return args.run(args)
    except (PneumocnnError, ValueError, OSError) as error:
        hint = " (--no-guard to go on all the same)" if isinstance(error, NotFrontalChestError) else ""
        print(f"pneumocnn {args.command}: error: {error}{hint}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"pneumocnn {args.command}: interrupted", file=sys.stderr)
        return 130


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model file, or folder of variants of one model (default: "
                                   "the bundled models); from a folder, the variant fastest on "
                                   "this CPU is used")
    p.add_argument("--variant", help="the variant to use (int8, float16, ...) instead of the "
                                     "fastest")


def _guard_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="score DICOM files whose tags say they are not a frontal chest X-ray "
                        "(another modality or body part, a lateral view, an animal), which "
                        "are otherwise reported as not scored")


def _heatmap_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heatmaps", choices=("flagged", "all", "none"), default="flagged",
                   help="which X-rays get an occlusion heatmap: flagged (those at or above the "
                        "threshold), all, or none (scores as fast as predict); default: "
                        "%(default)s")
    p.add_argument("--no-heatmaps", dest="heatmaps", action="store_const", const="none",
                   help="the same as --heatmaps none")


def _progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="draw no progress bar (drawn by default when stderr is a terminal)")


def _load(args, threads: int | None = None):
    from pneumocnn.runtime.model import load

    return load(args.model, threads=threads, variant=args.variant)


def _parser() -> argparse.ArgumentParser:
    from pneumocnn._version import __version__

    parser = argparse.ArgumentParser(
        prog="pneumocnn", description="Pneumonia triage on chest X-rays (a triage aid, not a "
                                      "diagnosis).")
    parser.add_argument("--version", action="version", version=f"pneumocnn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("predict", help="score X-ray files, folders and manifests")
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or "
                                             "manifests: a .txt or .lst file of paths, one a "
                                             "line, or a .csv file with a 'path' column")
    _model_options(p)
    p.add_argument("--threshold", type=float, help="override the model's decision threshold")
    p.add_argument("--threads", type=int, help="interpreter CPU threads (default: all cores; "
                                               "with --dask, 1 per worker)")
    _guard_option(p)
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON lines")
    output.add_argument("--csv", metavar="FILE", help="write a CSV file as results arrive")
    p.add_argument("--resume", action="store_true",
                   help="with --csv: keep the rows FILE already has (an interrupted run) and "
                        "append rows for the inputs not in it")
    p.add_argument("--dask", metavar="CLUSTER",
                   help="score on Dask (needs [dask]): local:N for N worker processes on this "
                        "machine, or a scheduler address such as tcp://HOST:8786; rows arrive "
                        "in the order tasks finish")
    p.add_argument("--partition-size", type=int, metavar="N",
                   help="with --dask: files per task (default: 128)")
    _progress_option(p)
    p.set_defaults(run=_predict)

    p = commands.add_parser("evaluate", help="metrics of a model on a labelled folder")
    p.add_argument("model", help=".tflite or .keras model file")
    p.add_argument("folder", help="folder with one subfolder per class (NORMAL, PNEUMONIA)")
    p.add_argument("--threshold", type=float, help="override the model's decision threshold")
    p.add_argument("--out", help="write metrics.json, predictions.csv and roc, confusion and "
                                 "reliability PNGs")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(run=_evaluate)

    p = commands.add_parser(
        "calibrate", help="refit a model's calibration and threshold on a site's own X-rays",
        description="Labelled: refit temperature and bias on the site's X-rays and choose the "
        "threshold for --target-sensitivity there; report sensitivity and specificity with "
        "bootstrap 95 %% intervals. --unlabelled: estimate the site's pneumonia share and shift "
        "the calibration to it. Writes a new model whose description records the calibration.")
    p.add_argument("model", nargs="?", help=".tflite file, or folder of variants of one model "
                                            "(default: the bundled models)")
    p.add_argument("folder", help="the site's X-rays: NORMAL/ and PNEUMONIA/ subfolders (with "
                                  "--unlabelled: any folder, searched recursively)")
    p.add_argument("--out", required=True, help="the site model to write: a .tflite file, or a "
                                                "folder for a folder of variants")
    p.add_argument("--target-sensitivity", type=float, default=0.97,
                   help="sensitivity the threshold is chosen for (default: %(default)s)")
    p.add_argument("--unlabelled", action="store_true",
                   help="FOLDER holds unlabelled X-rays: re-estimate the pneumonia share only")
    p.add_argument("--training-prior", type=float,
                   help="with --unlabelled: the pneumonia share the model's calibration assumes "
                        "(default: read from its description)")
    p.add_argument("--json", action="store_true",
                   help="print the recorded calibration of each variant written as JSON")
    p.set_defaults(run=_calibrate)

    p = commands.add_parser("explain", help="draw what drove the answer for one X-ray")
    p.add_argument("image", help="image or DICOM file")
    p.add_argument("--out", required=True, help="PNG to write: the heatmap over the X-ray")
    _model_options(p)
    p.add_argument("--method", choices=("occlusion", "grad-cam"), default="occlusion",
                   help="grad-cam needs a .keras model and TensorFlow")
    p.add_argument("--fill", choices=("mean", "blur"), default="mean",
                   help="occlusion: hide each square under the image's mean, or under a "
                        "blurred copy of the X-ray, which keeps its brightness and hides its "
                        "detail only (default: %(default)s)")
    _guard_option(p)
    p.set_defaults(run=_explain)

    p = commands.add_parser("triage", help="score a folder into a sorted worklist and report")
    p.add_argument("folder", help="folder of images and DICOM files (searched recursively), or "
                                  "a manifest of them (as predict takes)")
    p.add_argument("--out", required=True, help="report folder: worklist.csv, report.html")
    _model_options(p)
    _heatmap_options(p)
    _guard_option(p)
    _progress_option(p)
    p.set_defaults(run=_triage)

    p = commands.add_parser(
        "listen", help="run a DICOM node: triage the X-rays sent to it (needs [dicom-net])",
        description="A DICOM storage SCP for chest radiographs (CR, DX, Secondary Capture; C-ECHO "
        "answered; other SOP classes refused): each object is "
        "stored in OUT/received before its C-STORE is answered, then scored into OUT's worklist "
        "(worklist.csv, report.html) and a Structured Report in OUT/results, sent on to "
        "--forward. Runs until interrupted (Ctrl-C, SIGTERM); a restart scores what was stored "
        "but not yet scored.")
    p.add_argument("--out", required=True, help="the node's folder")
    p.add_argument("--port", type=int, default=11112, help="TCP port (default: %(default)s)")
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all)")
    p.add_argument("--ae-title", default="PNEUMOCNN", help="the node's AE title, which senders "
                   "must call (default: %(default)s)")
    p.add_argument("--allow", nargs="+", metavar="AE", help="calling AE titles allowed to store "
                   "(default: any)")
    p.add_argument("--forward", metavar="AE@HOST:PORT", help="send each Structured Report to "
                   "this storage SCP (a PACS), e.g. PACS@10.0.0.5:104")
    p.add_argument("--max-associations", type=int, default=10,
                   help="associations at once; more are rejected (default: %(default)s)")
    p.add_argument("--max-object-mb", type=float, default=100.0,
                   help="largest object accepted, in MiB (default: %(default)s)")
    p.add_argument("--tls-cert", help="listen with TLS: the node's certificate (PEM)")
    p.add_argument("--tls-key", help="with --tls-cert: its private key (PEM)")
    p.add_argument("--tls-ca", help="with --tls-cert: accept only senders whose certificate this "
                   "CA signed (mutual TLS)")
    _model_options(p)
    _heatmap_options(p)
    _guard_option(p)
    p.set_defaults(run=_listen)

    p = commands.add_parser("info", help="describe a model file: what it is, how it was made "
                                         "and checked")
    p.add_argument("model", nargs="?", help="model file or folder of variants (default: the "
                                            "bundled models)")
    p.add_argument("--variant", help="with a folder: load this variant (int8, float16, ...) "
                                     "instead of the fastest")
    p.add_argument("--json", action="store_true",
                   help="print the embedded description itself (JSON)")
    p.set_defaults(run=_info)

    p = commands.add_parser(
        "train", argument_default=argparse.SUPPRESS,  # unset options: the recipe's value
        help="train a model on a labelled folder (needs [train])",
        description="Settings not given come from --recipe; `pneumocnn train DATA` trains the "
        "recipe the bundled model was made with.")
    p.add_argument("data", help="ROOT/{train,val,test}/{NORMAL,PNEUMONIA} or ROOT/{NORMAL,...}")
    p.add_argument("--out", default="runs/pneumocnn", help="run folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue the run in --out")
    p.add_argument("--strategy", choices=("auto", "mirrored", "none"), default="auto",
                   help="auto: across the workers TF_CONFIG names (every worker runs this "
                   "command; the chief writes --out), or the GPUs of this machine; "
                   "--batch-size is the global batch (default: %(default)s)")
    p.add_argument("--recipe", default="pneumocnn", choices=sorted(RECIPES),
                   help="starting settings: pneumocnn (the bundled model's), seed (the seed "
                   "report's TO-BE CNN) or seed-as-is (default: %(default)s)")
    p.add_argument("--architecture", choices=ARCHITECTURE_NAMES,
                   help="small-sep: depthwise-separable blocks, about half small-bn's latency; "
                   "small-sep-wide: the same at twice the width")
    p.add_argument("--output", choices=("sigmoid", "softmax"), help="classifier head")
    p.add_argument("--loss", choices=("binary_crossentropy", "categorical_crossentropy"))
    p.add_argument("--optimizer", help="Keras optimizer name, e.g. adam, rmsprop")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--schedule", choices=("constant", "cosine"),
                   help="learning rate: constant, or cosine decay to 0 over the run")
    p.add_argument("--input-size", type=int)
    p.add_argument("--channels", type=int, choices=(1, 3))
    p.add_argument("--normalize", choices=("none", "equalize", "autocontrast"),
                   help="intensity normalisation, stored in the model file")
    p.add_argument("--crop", choices=("none", "margins"),
                   help="margins: cut dark or bright bands at the image edges before resizing, "
                   "stored in the model file")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--augmentation", choices=sorted(AUGMENTATIONS),
                   help="seed: the report's shear/zoom/flip; shift: acquisition differences; "
                   "shift-flip: shift plus horizontal flip; shift-zoom: shift with zoom 0.7-1.3; "
                   "shift-zoom-sharpness: shift-zoom with random blur or sharpening")
    p.add_argument("--class-weight", choices=("balanced", "none"))
    p.add_argument("--validation", choices=("patients", "earliest", "folder"),
                   help="patients: a random patient split of train; earliest: the "
                   "lowest-numbered patients of each file-name series (acquisition order); "
                   "folder: ROOT/val")
    p.add_argument("--validation-fraction", type=float)
    p.add_argument("--fold", type=int, help="validate on this patient fold of --folds "
                   "(instead of --validation-fraction)")
    p.add_argument("--folds", type=int)
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE")
    p.add_argument("--keep-best", action=argparse.BooleanOptionalAction,
                   help="export the epoch with the lowest validation loss, not the last")
    p.add_argument("--ema-momentum", type=float, metavar="M",
                   help="export an exponential moving average of the weights over the training "
                   "steps with this momentum (e.g. 0.999), not the last weights")
    p.add_argument("--recalibrate-batchnorm", action=argparse.BooleanOptionalAction,
                   help="re-estimate batch-norm statistics on un-augmented training images "
                   "before export")
    p.add_argument("--seed", dest="random_seed", type=int,
                   help="random seed of the split, initial weights, shuffling, augmentation and "
                   "dropout (not the seed recipe: that is --recipe seed)")
    p.add_argument("--split-seed", type=int, help="random seed of the patient split and folds "
                   "alone (default: --seed), to vary a model on fixed validation images")
    p.add_argument("--teacher", dest="teachers", action="append", metavar="MODEL",
                   help="distil: learn the mean probability of these .keras models (repeat "
                   "the option) on each augmented image, instead of the labels")
    p.add_argument("--threshold", help="decision threshold, or 'sensitivity' for "
                   "--target-sensitivity")
    p.add_argument("--target-sensitivity", type=float)
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false")
    p.set_defaults(run=_train)

    p = commands.add_parser("convert", help="make a self-describing .tflite (needs [train]), "
                            "or re-stamp a pneumocnn .tflite with a fresh digest")
    p.add_argument("source", help=".keras, .h5 (model or seed weights) or SavedModel folder; "
                   "or a pneumocnn .tflite to re-stamp (weights and description kept)")
    p.add_argument("--out", required=True, help="output .tflite file (may be the source)")
    p.add_argument("--quantization", choices=("float32", "float16", "dynamic-int8", "int8"),
                   help="default: int8 with --data, else float16; a .tflite source keeps "
                        "its own")
    p.add_argument("--data", help="folder of X-rays to calibrate int8 quantization on")
    p.add_argument("--threshold", type=float)
    p.add_argument("--architecture", default="seed-to-be",
                   help="architecture of a weights-only .h5 file")
    p.set_defaults(run=_convert)
    return parser


def _predict(args) -> int:
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
        _require_inputs(args.inputs)
    threads = (args.threads or 1) if args.dask is not None else args.threads
    model = _load(args, threads)
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


def _require_inputs(inputs: Sequence[str]) -> None:
    """Refuse inputs that hold no image at all (an empty folder, a folder of other files, an
    empty manifest), naming them and what is looked for."""
    from pneumocnn.core.inputs import IMAGE_SUFFIXES, expand_inputs

    if next(iter(expand_inputs(inputs)), None) is None:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ValueError(f"no images in {', '.join(inputs)}: found no {kinds} or DICOM file "
                         "(folders are searched recursively)")


def _evaluate(args) -> int:
    from pneumocnn.runtime.evaluation import evaluate

    result = evaluate(args.model, args.folder, threshold=args.threshold, out=args.out)
    print(strictjson.dumps(result.metrics, indent=1) if args.json else result)
    if result.figures_error:
        print(f"pneumocnn evaluate: metrics.json and predictions.csv written to {args.out}, the "
              f"figures not: {result.figures_error}", file=sys.stderr)
    return SOME_FAILED if result.failed or result.figures_error else OK


def _calibrate(args) -> int:
    from pneumocnn.clinic.site_calibration import calibrate

    result = calibrate(args.model, args.folder, args.out,
                       target_sensitivity=args.target_sensitivity, unlabelled=args.unlabelled,
                       training_prior=args.training_prior)
    if args.json:
        print(strictjson.dumps(result.records, indent=1))
        for entry in result.unreadable:
            print(f"pneumocnn calibrate: skipped {entry}", file=sys.stderr)
    else:
        print(result)  # the report names the images skipped
    short = _short_of_target(result.records)
    for line in short:
        print(f"pneumocnn calibrate: warning: {line}", file=sys.stderr)
    return SOME_FAILED if result.unreadable or short else OK


def _short_of_target(records: dict[str, dict]) -> list[str]:
    """A sentence for each variant whose cross-validated sensitivity on the site's X-rays fell
    short of the target its threshold was chosen for (labelled calibrations only)."""
    lines = []
    for name, record in records.items():
        figures, target = record.get("cross_validated"), record.get("target_sensitivity")
        if figures is None or figures["sensitivity"] >= target:
            continue
        low, high = figures["sensitivity_ci"]
        variant = f" ({name} variant)" if len(records) > 1 else ""
        lines.append(
            f"cross-validated sensitivity {figures['sensitivity']:.3f} (95 % CI {low:.3f}-"
            f"{high:.3f}){variant} falls short of the target {target}: on new X-rays of this "
            f"site the threshold is likely to miss more pneumonias than the target allows. The "
            f"site model was written; calibrate on more labelled X-rays (these were "
            f"{', '.join(f'{n} {label}' for label, n in record['images'].items())}) before "
            f"using it")
    return lines


def _explain(args) -> int:
    from pneumocnn.runtime.explain import grad_cam, occlusion, overlay, save_png

    model = _load(args)
    if args.method == "grad-cam":
        explanation = grad_cam(model, args.image, guard=args.guard)
    else:
        explanation = occlusion(model, args.image, guard=args.guard, fill=args.fill)
    save_png(overlay(args.image, explanation), args.out)
    print(f"{explanation.source}: {explanation.label} (probability "
          f"{explanation.probability:.6f}, threshold {explanation.threshold:.3f}); "
          f"{explanation.method} heatmap written to {args.out}")
    return OK


def _triage(args) -> int:
    from pneumocnn.clinic.triage import SCORES, triage

    if not (Path(args.out) / SCORES).exists():  # a rerun may have nothing new to score
        _require_inputs([args.folder])
    worklist = triage(args.folder, args.out, _load(args), heatmaps=args.heatmaps,
                      guard=args.guard, progress=False if args.no_progress else None)
    print(f"{len(worklist.rows) - len(worklist.failed)} scored, {len(worklist.failed)} failed; "
          f"worklist {worklist.csv_path}, report {worklist.html_path}")
    return SOME_FAILED if worklist.failed else OK


def _listen(args) -> int:
    from pneumocnn.clinic.node import serve, tls_context

    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_ca and not args.tls_cert):
        raise ValueError("--tls-cert and --tls-key go together (--tls-ca with them)")
    logging.getLogger("pneumocnn").setLevel(logging.INFO)  # each store, score and refusal
    for handler in logging.getLogger().handlers:  # a server's log needs the time
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    tls = tls_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    serve(args.out, _load(args), port=args.port, host=args.bind, ae_title=args.ae_title,
          allow=args.allow, forward=args.forward, max_associations=args.max_associations,
          max_object_mb=args.max_object_mb, tls=tls, heatmaps=args.heatmaps, guard=args.guard)
    return OK


def _info(args) -> int:
    model = _load(args)
    if args.json:
        print(model.description.to_json())
    else:
        print("\n".join(_summary(model)))
    return OK


def _summary(model) -> list[str]:
    """``pneumocnn info``'s readable lines about a loaded model: what it is, how it was made
    and checked, and what its digest is a digest of."""
    import hashlib

    from pneumocnn.clinic.site_calibration import calibration_report

    description = model.description
    info, spec = description.info, description.preprocessing
    provenance = info.get("provenance", {})
    versions = provenance.get("versions", {})
    chosen = f"; variant {model.variant}" if model.variant else ""
    steps = [name for name, used in (("margin crop", spec.crop != "none"),
                                     (spec.normalize, spec.normalize != "none")) if used]
    lines = [f"model: {model.path} ({info.get('architecture', '?')}, "
             f"{info.get('quantization', 'keras')}{chosen})",
             f"input: {spec.height} x {spec.width} px, {spec.channels} channel(s); "
             f"preprocessing: {', '.join([*steps, spec.resize + ' resize'])}",
             f"labels: {', '.join(description.labels)}; threshold {description.threshold:.3f}"
             f" ({info.get('threshold_source', 'source not recorded')}); calibration: "
             f"temperature {description.temperature:.3f}, bias {description.bias:.3f}"]
    if provenance:
        counts = provenance.get("train_counts")
        classes = (f" ({counts[0]} {description.labels[0]}, {counts[1]} {description.labels[1]})"
                   if counts else "")
        lines.append(f"trained: {provenance.get('created', '?')} with pneumocnn "
                     f"{versions.get('pneumocnn', '?')} (TensorFlow {versions.get('tensorflow', '?')})"
                     f" on {provenance.get('train_images', '?')} X-rays{classes}, "
                     f"{provenance.get('epochs', '?')} epochs")
    metrics = info.get("validation_metrics")
    if metrics:
        figures = ", ".join(f"{name} {_number(metrics.get(key))}" for name, key in (
            ("sensitivity", "sensitivity"), ("specificity", "specificity"),
            ("ROC AUC", "roc_auc"), ("ECE", "ece")))
        lines.append(f"validation: {metrics.get('n', '?')} X-rays at threshold "
                     f"{_number(metrics.get('threshold'))}: {figures}")
    lines += calibration_report(description)
    if description.sha256:
        whole = hashlib.sha256(Path(model.path).read_bytes()).hexdigest()
        lines += [f"digest: sha256 {description.sha256}, checked at load",
                  "  (the SHA-256 of the file with these 64 digits written as zeros, since a file "
                  "cannot hold its own hash;",
                  f"  so sha256sum of the file differs: it gives {whole})"]
    elif str(model.path).endswith(".keras"):
        lines.append("digest: none (a .keras file: every member's CRC-32 is checked at load)")
    else:
        lines.append("digest: none (made by pneumocnn 0.1.0 or another tool; re-stamp it with "
                     "`pneumocnn convert FILE --out FILE`)")
    lines.append("the whole description: pneumocnn info --json")
    return lines


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _train(args) -> int:
    from pneumocnn import train  # says which extra to install when TensorFlow is missing

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingConfig)
                if hasattr(args, f.name)}
    if settings.get("threshold", "sensitivity") != "sensitivity":
        settings["threshold"] = float(settings["threshold"])
    if settings.get("class_weight") == "none":
        settings["class_weight"] = None
    result = train(args.data, args.out, recipe=args.recipe, resume=args.resume, verbose=2,
                   strategy=args.strategy, **settings)
    if result.chief:
        print((result.run_dir / "report.md").read_text())
    else:
        print(f"trained as a worker of a multi-worker run; the chief wrote {result.run_dir}")
    return OK


def _convert(args) -> int:
    from pneumocnn import convert

    out = convert(args.source, args.out, quantization=args.quantization,
                  representative=args.data, threshold=args.threshold,
                  architecture=args.architecture)
    print(f"wrote {out}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
