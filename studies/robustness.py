"""``python -m studies.robustness RUN [RUN ...]``: candidate models beside the bundled one
under every simulated acquisition shift and under a prevalence shift, on the same validation
images, with what can be done at test time alone.

Each RUN is a finished training run folder; its int8 model is scored on the run's own
validation split, as it is and under each shift of :mod:`studies.shifts`. Runs are compared
only when they validate on the same images, so rows differ by the model alone. Beside each run's own row:

- *+ test-time margin crop* (runs trained without it): the margin crop of
  :func:`pneumocnn.core.preprocessing.crop_margins` applied before the run's model, untrained;
- *+ TTA*: test-time augmentation, the mean probability over the image as it is, zoomed in
  1.1x and zoomed out 1.1x (edges repeated, as the training augmentation fills);
- *ensemble*: with several runs, the mean of their probabilities (the latency of all of them).

With ``--recipe NAME RUN...`` (repeated) the runs are also grouped into recipes (seeds of one
training recipe): each recipe's mean clean ROC AUC over its runs (as they are, without the test-time
crop), and each recipe's difference to the first with a 95 % interval from resampling whole
validation patients (paired: every recipe is scored on the same resamples). One seed per
recipe cannot rank recipes when seeds of one recipe spread more than recipes differ.

Rows that average probabilities choose their threshold again on the clean validation images
(sensitivity >= 0.97), as training does. The issue's goal under each alteration is sensitivity
>= 0.95 with specificity >= 0.85; the table marks the cells that miss it.

    python -m studies.robustness benchmarks/bundled-run runs/margins-sharpness
    python -m studies.robustness benchmarks/bundled-run runs/t0 runs/t1 runs/t2 runs/student \\
        --no-tta --ensemble runs/t0 runs/t1 runs/t2
    python -m studies.robustness runs/a0 runs/a1 runs/b0 runs/b1 --no-tta \\
        --recipe a runs/a0 runs/a1 --recipe b runs/b0 runs/b1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pneumocnn  # noqa: E402
from benchmarks import SHARED_DATA  # noqa: E402
from benchmarks.inputs import RunSplits, run_splits  # noqa: E402
from pneumocnn.core.durable_files import write_text  # noqa: E402
from pneumocnn.core.metrics import roc_auc, threshold_for_sensitivity  # noqa: E402
from pneumocnn.core.preprocessing import crop_margins, load_gray  # noqa: E402
from studies import RESULTS  # noqa: E402
from studies.shifts import PREVALENCE, SHIFTS, model_probabilities, prevalence_subset, scores  # noqa: E402

GOAL_SENSITIVITY, GOAL_SPECIFICITY = 0.95, 0.85
TARGET_SENSITIVITY = 0.97
RESAMPLES = 2000
View = Callable[[Image.Image], Image.Image]


def _zoom_in(image: Image.Image) -> Image.Image:
    w, h = image.size
    return image.crop((w // 22, h // 22, w - w // 22, h - h // 22))


def _zoom_out(image: Image.Image) -> Image.Image:
    w, h = image.size
    return Image.fromarray(np.pad(np.asarray(image), ((h // 20, h // 20), (w // 20, w // 20)),
                                  mode="edge"))


TTA_VIEWS: tuple[View, ...] = (lambda image: image, _zoom_in, _zoom_out)


@dataclass
class Row:
    """One predictor's probabilities on every condition (``"none"`` and each shift) and the
    threshold it is scored at."""

    name: str
    probabilities: dict[str, np.ndarray]
    threshold: float


def shared_validation(runs: list[Path], data: Path) -> RunSplits:
    """The runs' validation split of ``data``; refuses runs that validate on different images,
    whose rows would not be comparable."""
    splits = {run: run_splits(run, data) for run in runs}
    first = splits[runs[0]]
    differing = [run for run, s in splits.items() if s.validation.paths != first.validation.paths]
    if differing:
        raise SystemExit("runs validate on different images: " + "; ".join(
            f"{run}: {splits[run].source}" for run in [runs[0], *differing]))
    return first


def _conditions(model, grays: list[Image.Image], views: tuple[View, ...]) -> dict[str, np.ndarray]:
    """Mean probability over ``views`` of each image, as it is and under each shift."""
    shifts: dict[str, View] = {"none": lambda image: image, **SHIFTS}
    return {name: np.mean([model_probabilities(model, [view(shift(g)) for g in grays])
                           for view in views], axis=0)
            for name, shift in shifts.items()}


def rows_of_run(run: Path, grays: list[Image.Image], labels: np.ndarray,
                tta: bool = True) -> list[Row]:
    """The run's int8 model as it is, with the test-time margin crop when it was trained
    without one, and with ``tta``."""
    model = pneumocnn.load(run / "model-int8.tflite")
    rows = [Row(str(run), _conditions(model, grays, TTA_VIEWS[:1]), model.threshold)]
    if model.description.preprocessing.crop == "none":
        cropped = _conditions(model, grays, (crop_margins,))
        rows.append(Row(f"{run} + test-time margin crop", cropped, model.threshold))
    if tta:
        augmented = _conditions(model, grays, TTA_VIEWS)
        rows.append(Row(f"{run} + TTA", augmented, _rechosen(labels, augmented)))
    return rows


def _rechosen(labels: np.ndarray, probabilities: dict[str, np.ndarray]) -> float:
    return threshold_for_sensitivity(labels, probabilities["none"], TARGET_SENSITIVITY)


def ensemble(rows: list[Row], labels: np.ndarray) -> Row:
    """The mean of ``rows``' probabilities, its threshold chosen again on clean images."""
    mean = {name: np.mean([row.probabilities[name] for row in rows], axis=0)
            for name in rows[0].probabilities}
    return Row("ensemble of " + " + ".join(row.name for row in rows), mean, _rechosen(labels, mean))


def patient_resamples(patients: list[str], resamples: int = RESAMPLES,
                      seed: int = 0) -> list[np.ndarray]:
    """Image indices of ``resamples`` draws of whole patients with replacement."""
    _, patient_of = np.unique(patients, return_inverse=True)
    images_of = [np.flatnonzero(patient_of == k) for k in range(patient_of.max() + 1)]
    rng = np.random.default_rng(seed)
    return [np.concatenate([images_of[k] for k in rng.integers(0, len(images_of), len(images_of))])
            for _ in range(resamples)]


def compare_recipes(recipes: dict[str, list[Row]], labels: np.ndarray,
                    patients: list[str]) -> dict[str, dict]:
    """Each recipe's mean clean ROC AUC over its rows and its difference to the first recipe's,
    with a 95 % interval over ``RESAMPLES`` resamples of whole patients (the same resamples for
    every recipe)."""

    def mean_aucs(images: np.ndarray) -> np.ndarray:
        return np.array([np.mean([roc_auc(labels[images], row.probabilities["none"][images])
                                  for row in rows]) for rows in recipes.values()])

    draws = np.array([mean_aucs(images) for images in patient_resamples(patients)])
    observed = mean_aucs(np.arange(len(labels)))
    differences = draws - draws[:, :1]
    return {name: {"runs": len(rows), "mean_auc": float(observed[i]),
                   "difference": float(observed[i] - observed[0]),
                   "interval": [float(np.nanpercentile(differences[:, i], q)) for q in (2.5, 97.5)]}
            for i, (name, rows) in enumerate(recipes.items())}


def recipe_table(compared: dict[str, dict]) -> list[str]:
    """Markdown for :func:`compare_recipes`."""
    first = next(iter(compared))
    lines = ["", f"Recipes: mean clean ROC AUC over each recipe's runs (without the test-time "
             f"crop) and the difference to {first}'s, with a 95 % interval from {RESAMPLES} "
             "resamples of the validation patients:", "",
             "| recipe | runs | mean AUC | difference | 95 % interval |", "|---|---|---|---|---|"]
    for name, c in compared.items():
        low, high = c["interval"]
        lines.append(f"| {name} | {c['runs']} | {c['mean_auc']:.4f} | {c['difference']:+.4f} | "
                     f"{low:+.4f} to {high:+.4f} |")
    return lines


def _cell(metrics: dict) -> str:
    sens, spec = metrics["sensitivity"], metrics["specificity"]
    mark = "" if sens >= GOAL_SENSITIVITY and spec >= GOAL_SPECIFICITY else " ✗"
    return f"{sens:.3f} / {spec:.3f}{mark}"


def score_rows(rows: list[Row], labels: np.ndarray) -> dict[str, dict]:
    """Every row's metrics on each condition and under the prevalence shift."""
    subset = prevalence_subset(labels)
    return {row.name: {
        "threshold": row.threshold,
        "conditions": {name: scores(labels, p, row.threshold)
                       for name, p in row.probabilities.items()},
        "prevalence": scores(labels[subset], row.probabilities["none"][subset], row.threshold),
    } for row in rows}


def table(scored: dict[str, dict]) -> list[str]:
    """Markdown: sensitivity / specificity per alteration, worst cases, prevalence shift."""
    names = ["none", *SHIFTS]
    lines = ["| predictor | AUC | acc | ECE | " + " | ".join(names) + " |",
             "|---" * (len(names) + 4) + "|"]
    for name, s in scored.items():
        clean = s["conditions"]["none"]["at_model_threshold"]
        cells = [_cell(s["conditions"][c]["at_model_threshold"]) for c in names]
        lines.append(f"| {name} | {clean['roc_auc']:.4f} | {clean['accuracy']:.4f} | "
                     f"{clean['ece']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Worst alteration (lowest sensitivity; lowest specificity) and the ROC AUC "
              "range over the alterations:", "",
              "| predictor | worst sensitivity | worst specificity | AUC min-max |",
              "|---|---|---|---|"]
    for name, s in scored.items():
        shifted = {c: s["conditions"][c]["at_model_threshold"] for c in SHIFTS}
        sens = min(shifted, key=lambda c: shifted[c]["sensitivity"])
        spec = min(shifted, key=lambda c: shifted[c]["specificity"])
        aucs = [m["roc_auc"] for m in shifted.values()]
        lines.append(f"| {name} | {shifted[sens]['sensitivity']:.3f} ({sens}) | "
                     f"{shifted[spec]['specificity']:.3f} ({spec}) | "
                     f"{min(aucs):.4f}-{max(aucs):.4f} |")
    lines += ["", f"Prevalence shift: the validation images thinned to a pneumonia share of "
              f"{PREVALENCE} (the hold-out's; training's is 0.743), at each predictor's "
              "threshold:", "",
              "| predictor | images | pneumonia share | accuracy | sens | spec | ECE | "
              "mean probability |", "|---|---|---|---|---|---|---|---|"]
    for name, s in scored.items():
        shifted = s["prevalence"]
        m = shifted["at_model_threshold"]
        lines.append(f"| {name} | {m['n']} | {shifted['share']:.3f} | {m['accuracy']:.4f} | "
                     f"{m['sensitivity']:.3f} | {m['specificity']:.3f} | {m['ece']:.3f} | "
                     f"{shifted['mean_probability']:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.robustness",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished training run folders")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "chest_xray")
    parser.add_argument("--out", type=Path, default=RESULTS / "robustness")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="add each run's test-time augmentation row (default: yes)")
    parser.add_argument("--ensemble", nargs="+", type=Path, metavar="RUN",
                        help="the runs whose mean makes the ensemble row (default: all RUNs)")
    parser.add_argument("--recipe", nargs="+", action="append", metavar=("NAME", "RUN"),
                        help="name the seeds of one recipe (runs also given as RUN); repeat "
                             "for each recipe, the first is the reference")
    args = parser.parse_args(argv)
    members = args.ensemble or args.runs
    if not set(members) <= set(args.runs):
        parser.error("--ensemble takes runs that are also given as RUN")
    recipes = {name: [Path(run) for run in runs] for name, *runs in args.recipe or []}
    if any(not runs or not set(runs) <= set(args.runs) for runs in recipes.values()):
        parser.error("--recipe takes a name and runs that are also given as RUN")
    validation = shared_validation(args.runs, args.data)
    images = validation.validation
    grays = [load_gray(path) for path in images.paths]
    rows = {run: rows_of_run(run, grays, images.labels, args.tta) for run in args.runs}
    flat = [row for run_rows in rows.values() for row in run_rows]
    if len(members) > 1:
        flat.append(ensemble([rows[run][0] for run in members], images.labels))
    scored = score_rows(flat, images.labels)
    compared = compare_recipes({name: [rows[run][0] for run in runs]
                                for name, runs in recipes.items()},
                               images.labels, images.patients()) if recipes else {}
    header = [
        "# Robustness: acquisition and prevalence shifts",
        "",
        f"Written {datetime.now(timezone.utc).isoformat(timespec='seconds')} by "
        f"`python -m studies.robustness {' '.join(sys.argv[1:] if argv is None else argv)}` "
        f"(Python {platform.python_version()}).",
        "",
        f"Each predictor on the same {len(images.labels)} validation images "
        f"({validation.source}), **int8** models, at the predictor's threshold (chosen on those clean images "
        "for sensitivity >= 0.97, so the clean column is optimistic). Cells: sensitivity / "
        f"specificity; ✗ misses sensitivity >= {GOAL_SENSITIVITY} with specificity >= "
        f"{GOAL_SPECIFICITY}. The alterations are those of `studies/shifts.py`, applied to "
        "the decoded image before the model's own preprocessing; the predictors are described "
        "in `studies/robustness.py`.",
        "",
    ]
    lines = header + table(scored) + (recipe_table(compared) if compared else [])
    markdown = "\n".join(lines) + "\n"
    write_text(args.out / "results.md", markdown)
    write_text(args.out / "results.json",
               json.dumps({**scored, "recipes": compared} if compared else scored, indent=1))
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
