"""``pneumocnn train``: train a model on a labelled folder (needs ``pneumocnn[train]``)."""

from __future__ import annotations

import argparse
import dataclasses

from pneumocnn.commands.command import OK, Command
from pneumocnn.commands.options import listing
from pneumocnn.core.preprocessing import CROPS_ABOUT, NORMALIZATIONS_ABOUT
from pneumocnn.training.settings import (
    ARCHITECTURE_NAMES,
    ARCHITECTURES_ABOUT,
    AUGMENTATIONS,
    RECIPES,
    RECIPES_ABOUT,
    STRATEGIES_ABOUT,
    TrainingConfig,
)

DESCRIPTION = ("Settings not given come from --recipe; `pneumocnn train DATA` trains the recipe the "
               "bundled model was made with.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this verb's options to ``parser``."""
    parser.add_argument("data", help="ROOT/{train,val,test}/{NORMAL,PNEUMONIA} or ROOT/{NORMAL,...}")
    parser.add_argument("--out", default="runs/pneumocnn", help="run folder (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", default=False,
                        help="continue the run in --out")
    parser.add_argument("--strategy", choices=tuple(STRATEGIES_ABOUT), default="auto",
                        help=f"{listing(STRATEGIES_ABOUT)}; --batch-size is the global batch "
                        "(default: %(default)s)")
    parser.add_argument("--recipe", default="pneumocnn", choices=sorted(RECIPES),
                        help=f"starting settings: {listing(RECIPES_ABOUT)} (default: %(default)s)")
    parser.add_argument("--architecture", choices=ARCHITECTURE_NAMES,
                        help=listing(ARCHITECTURES_ABOUT))
    parser.add_argument("--output", choices=("sigmoid", "softmax"), help="classifier head")
    parser.add_argument("--loss", choices=("binary_crossentropy", "categorical_crossentropy"))
    parser.add_argument("--optimizer", help="Keras optimizer name, e.g. adam, rmsprop")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--schedule", choices=("constant", "cosine"),
                        help="learning rate: constant, or cosine decay to 0 over the run")
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--channels", type=int, choices=(1, 3))
    parser.add_argument("--normalize", choices=tuple(NORMALIZATIONS_ABOUT),
                        help="intensity normalisation, stored in the model file: "
                        f"{listing(NORMALIZATIONS_ABOUT)}")
    parser.add_argument("--crop", choices=tuple(CROPS_ABOUT),
                        help=f"stored in the model file: {listing(CROPS_ABOUT)}")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--augmentation", choices=sorted(AUGMENTATIONS),
                        help=listing({name: augmentation.about
                                      for name, augmentation in AUGMENTATIONS.items()}))
    parser.add_argument("--class-weight", choices=("balanced", "none"))
    parser.add_argument("--validation", choices=("patients", "earliest", "folder"),
                        help="patients: a random patient split of train; earliest: the "
                        "lowest-numbered patients of each file-name series (acquisition order); "
                        "folder: ROOT/val")
    parser.add_argument("--validation-fraction", type=float)
    parser.add_argument("--fold", type=int, help="validate on this patient fold of --folds "
                        "(instead of --validation-fraction)")
    parser.add_argument("--folds", type=int)
    parser.add_argument("--early-stopping", type=int, metavar="PATIENCE")
    parser.add_argument("--keep-best", action=argparse.BooleanOptionalAction,
                        help="export the epoch with the lowest validation loss, not the last")
    parser.add_argument("--ema-momentum", type=float, metavar="M",
                        help="export an exponential moving average of the weights over the training "
                        "steps with this momentum (e.g. 0.999), not the last weights")
    parser.add_argument("--recalibrate-batchnorm", action=argparse.BooleanOptionalAction,
                        help="re-estimate batch-norm statistics on un-augmented training images "
                        "before export")
    parser.add_argument("--seed", dest="random_seed", type=int,
                        help="random seed of the split, initial weights, shuffling, augmentation and "
                        "dropout (not the seed recipe: that is --recipe seed)")
    parser.add_argument("--split-seed", type=int, help="random seed of the patient split and folds "
                        "alone (default: --seed), to vary a model on fixed validation images")
    parser.add_argument("--teacher", dest="teachers", action="append", metavar="MODEL",
                        help="distil: learn the mean probability of these .keras models (repeat "
                        "the option) on each augmented image, instead of the labels")
    parser.add_argument("--threshold", help="decision threshold, or 'sensitivity' for "
                        "--target-sensitivity")
    parser.add_argument("--target-sensitivity", type=float)
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false")


def run(args: argparse.Namespace) -> int:
    """Train the run ``args`` describe and print its report; return 0."""
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


COMMAND = Command("train", "train a model on a labelled folder (needs [train])", add_arguments, run,
                  description=DESCRIPTION,
                  argument_default=argparse.SUPPRESS)  # unset options: the recipe's value
