"""Options and steps several verbs share: which model to load and how, the input guard,
heatmaps, the progress bar, and the refusal of inputs that hold no image."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from pneumocnn.clinic import HEATMAPS
from pneumocnn.runtime.model import Model, load


def listing(about: Mapping[str, str]) -> str:
    """``"name: what it is; name: ..."``, for a help text, from a registry's ``{name: phrase}``
    (so that the help names every entry the registry holds)."""
    return "; ".join(f"{name}: {phrase}" for name, phrase in about.items()).replace("%", "%%")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Add ``--model`` and ``--variant`` (read by :func:`load_model`) to ``p``."""
    p.add_argument("--model", help="model file, or folder of variants of one model (default: "
                                   "the bundled models); from a folder, the variant fastest on "
                                   "this CPU is used")
    p.add_argument("--variant", help="the variant to use (int8, float16, ...) instead of the "
                                     "fastest")


def add_guard_option(p: argparse.ArgumentParser) -> None:
    """Add ``--no-guard`` (``args.guard``) to ``p``."""
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="score DICOM files whose tags say they are not a frontal chest X-ray "
                        "(another modality or body part, a lateral view, an animal), which "
                        "are otherwise reported as not scored")


def add_heatmap_options(p: argparse.ArgumentParser) -> None:
    """Add ``--heatmaps`` and ``--no-heatmaps`` (``args.heatmaps``) to ``p``."""
    p.add_argument("--heatmaps", choices=HEATMAPS, default="flagged",
                   help="which X-rays get an occlusion heatmap: flagged (those at or above the "
                        "threshold), all, or none (scores as fast as predict); default: "
                        "%(default)s")
    p.add_argument("--no-heatmaps", dest="heatmaps", action="store_const", const="none",
                   help="the same as --heatmaps none")


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """Add ``--no-progress`` to ``p``."""
    p.add_argument("--no-progress", action="store_true",
                   help="draw no progress bar (drawn by default when stderr is a terminal)")


def load_model(args: argparse.Namespace, threads: int | None = None) -> Model:
    """The model ``--model`` and ``--variant`` name, with ``threads`` interpreter threads."""
    return load(args.model, threads=threads, variant=args.variant)


def require_inputs(inputs: Sequence[str]) -> None:
    """Refuse inputs that hold no image at all (an empty folder, a folder of other files, an
    empty manifest), naming them and what is looked for."""
    from pneumocnn.core.inputs import IMAGE_SUFFIXES, expand_inputs

    if next(iter(expand_inputs(inputs)), None) is None:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ValueError(f"no images in {', '.join(inputs)}: found no {kinds} or DICOM file "
                         "(folders are searched recursively)")
