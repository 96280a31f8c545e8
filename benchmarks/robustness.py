"""``python -m benchmarks.robustness RUN [RUN ...]``: candidate models beside the bundled one
under every simulated acquisition shift and under a prevalence shift, on the same validation
images.

Each RUN is a finished training run folder; its int8 model is scored by
:func:`benchmarks.shifts.score_model` on the run's own validation split. Runs are compared only
when that split is the same (same validation settings and random seed), so rows differ by the
model alone. The issue's goal under each alteration is sensitivity >= 0.95 with specificity
>= 0.85 at the model's own threshold; the table marks the cells that miss it.

    python -m benchmarks.robustness benchmarks/bundled-run runs/margins-sharpness
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import RESULTS, SHARED_DATA  # noqa: E402
from benchmarks.shifts import PREVALENCE, SHIFTS, score_model  # noqa: E402
from pneumocnn.core.files import write_text  # noqa: E402
from pneumocnn.training.settings import saved_config  # noqa: E402

GOAL_SENSITIVITY, GOAL_SPECIFICITY = 0.95, 0.85
_SPLIT_SETTINGS = ("validation", "validation_fraction", "fold", "folds", "random_seed")


def same_split(runs: list[Path]) -> None:
    """Refuse runs whose validation images differ: their rows would not be comparable."""
    splits = {run: tuple(getattr(saved_config(run), name) for name in _SPLIT_SETTINGS)
              for run in runs}
    if len(set(splits.values())) > 1:
        raise SystemExit("runs validate on different images: " + "; ".join(
            f"{run}: {dict(zip(_SPLIT_SETTINGS, split, strict=True))}"
            for run, split in splits.items()))


def _cell(metrics: dict) -> str:
    sens, spec = metrics["sensitivity"], metrics["specificity"]
    mark = "" if sens >= GOAL_SENSITIVITY and spec >= GOAL_SPECIFICITY else " ✗"
    return f"{sens:.3f} / {spec:.3f}{mark}"


def table(scores: dict[str, dict]) -> list[str]:
    """Markdown rows: one per run, sensitivity / specificity at its threshold per alteration."""
    names = ["none", *SHIFTS]
    lines = ["| run | AUC | acc | ECE | " + " | ".join(names) + " |",
             "|---" * (len(names) + 4) + "|"]
    for run, s in scores.items():
        clean = s["validation"]["at_model_threshold"]
        cells = [_cell(clean), *(_cell(s["shifts"][name]["at_model_threshold"]) for name in SHIFTS)]
        lines.append(f"| {run} | {clean['roc_auc']:.4f} | {clean['accuracy']:.4f} | "
                     f"{clean['ece']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Worst alteration per run (lowest sensitivity; lowest specificity) and ROC AUC "
              "range over the alterations:", "",
              "| run | worst sensitivity | worst specificity | AUC min-max |", "|---|---|---|---|"]
    for run, s in scores.items():
        shifted = {name: m["at_model_threshold"] for name, m in s["shifts"].items()}
        sens = min(shifted, key=lambda n: shifted[n]["sensitivity"])
        spec = min(shifted, key=lambda n: shifted[n]["specificity"])
        aucs = [m["roc_auc"] for m in shifted.values()]
        lines.append(f"| {run} | {shifted[sens]['sensitivity']:.3f} ({sens}) | "
                     f"{shifted[spec]['specificity']:.3f} ({spec}) | "
                     f"{min(aucs):.3f}-{max(aucs):.3f} |")
    lines += ["", f"Prevalence shift: the validation images thinned to a pneumonia share of "
              f"{PREVALENCE} (the hold-out's; training's is 0.743), at the model's threshold:", "",
              "| run | images | pneumonia share | accuracy | sens | spec | ECE | mean probability |",
              "|---|---|---|---|---|---|---|---|"]
    for run, s in scores.items():
        shifted = s["prevalence"]
        m = shifted["at_model_threshold"]
        lines.append(f"| {run} | {m['n']} | {shifted['share']:.3f} | {m['accuracy']:.4f} | "
                     f"{m['sensitivity']:.3f} | {m['specificity']:.3f} | {m['ece']:.3f} | "
                     f"{shifted['mean_probability']:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.robustness",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished training run folders")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "chest_xray")
    parser.add_argument("--out", type=Path, default=RESULTS / "robustness")
    args = parser.parse_args(argv)
    same_split(args.runs)
    scores = {str(run): score_model(run, args.data) for run in args.runs}
    header = [
        "# Robustness: acquisition and prevalence shifts",
        "",
        f"Written {datetime.now(timezone.utc).isoformat(timespec='seconds')} by "
        f"`python -m benchmarks.robustness {' '.join(map(str, args.runs))}` "
        f"(Python {platform.python_version()}).",
        "",
        "Each run's **int8** model on its validation images (the same patient split for every "
        "row), at the model's own threshold (chosen on those images for sensitivity >= 0.97, "
        "so the clean column is optimistic). Cells: sensitivity / specificity; ✗ misses "
        f"sensitivity >= {GOAL_SENSITIVITY} with specificity >= {GOAL_SPECIFICITY}. The "
        "alterations are those of `benchmarks/shifts.py`, applied to the decoded image before "
        "the model's own preprocessing.",
        "",
    ]
    markdown = "\n".join(header + table(scores)) + "\n"
    write_text(args.out / "results.md", markdown)
    write_text(args.out / "results.json", json.dumps(scores, indent=1))
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
