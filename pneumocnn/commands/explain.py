"""``pneumocnn explain``: draw what drove the answer for one X-ray."""

from __future__ import annotations

import argparse

from pneumocnn.commands.command import OK, Command
from pneumocnn.commands.options import add_guard_option, add_model_options, load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this verb's options to ``parser``."""
    parser.add_argument("image", help="image or DICOM file")
    parser.add_argument("--out", required=True, help="PNG to write: the heatmap over the X-ray")
    add_model_options(parser)
    parser.add_argument("--method", choices=("occlusion", "grad-cam"), default="occlusion",
                        help="grad-cam needs a .keras model and TensorFlow")
    parser.add_argument("--fill", choices=("mean", "blur"), default="mean",
                        help="occlusion: hide each square under the image's mean, or under a "
                             "blurred copy of the X-ray, which keeps its brightness and hides its "
                             "detail only (default: %(default)s)")
    add_guard_option(parser)


def run(args: argparse.Namespace) -> int:
    """Write the heatmap of ``args.image`` to ``args.out`` and print the answer; return 0."""
    from pneumocnn.runtime.explain import grad_cam, occlusion, overlay, save_png

    model = load_model(args)
    if args.method == "grad-cam":
        explanation = grad_cam(model, args.image, guard=args.guard)
    else:
        explanation = occlusion(model, args.image, guard=args.guard, fill=args.fill)
    save_png(overlay(args.image, explanation), args.out)
    print(f"{explanation.source}: {explanation.label} (probability "
          f"{explanation.probability:.6f}, threshold {explanation.threshold:.3f}); "
          f"{explanation.method} heatmap written to {args.out}")
    return OK


COMMAND = Command("explain", "draw what drove the answer for one X-ray", add_arguments, run)
