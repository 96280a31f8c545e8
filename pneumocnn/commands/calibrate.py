"""``pneumocnn calibrate``: refit a model's calibration and threshold on a site's own X-rays."""

from __future__ import annotations

import argparse
import sys

from pneumocnn.commands.command import OK, SOME_FAILED, Command
from pneumocnn.core import strictjson

DESCRIPTION = ("Labelled: refit temperature and bias on the site's X-rays and choose the threshold for "
               "--target-sensitivity there; report sensitivity and specificity with bootstrap 95 %% "
               "intervals. --unlabelled: estimate the site's pneumonia share and shift the calibration to "
               "it. Writes a new model whose description records the calibration.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this verb's options to ``parser``."""
    parser.add_argument("model", nargs="?", help=".tflite file, or folder of variants of one model "
                                                 "(default: the bundled models)")
    parser.add_argument("folder", help="the site's X-rays: NORMAL/ and PNEUMONIA/ subfolders (with "
                                       "--unlabelled: any folder, searched recursively)")
    parser.add_argument("--out", required=True, help="the site model to write: a .tflite file, or a "
                                                     "folder for a folder of variants")
    parser.add_argument("--target-sensitivity", type=float, default=0.97,
                        help="sensitivity the threshold is chosen for (default: %(default)s)")
    parser.add_argument("--unlabelled", action="store_true",
                        help="FOLDER holds unlabelled X-rays: re-estimate the pneumonia share only")
    parser.add_argument("--training-prior", type=float,
                        help="with --unlabelled: the pneumonia share the model's calibration assumes "
                             "(default: read from its description)")
    parser.add_argument("--json", action="store_true",
                        help="print the recorded calibration of each variant written as JSON")


def run(args: argparse.Namespace) -> int:
    """Write the site model calibrated on ``args.folder`` and report it; return the exit code."""
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


COMMAND = Command(
    "calibrate", "refit a model's calibration and threshold on a site's own X-rays", add_arguments, run,
    description=DESCRIPTION)
