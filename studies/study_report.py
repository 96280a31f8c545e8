"""The study's results table: every configuration's scores, mean +- sd over the folds run,
written as ``results.md`` and ``results.json``."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pneumocnn.core.durable_files import write_text

# SEED.md, "Reported results": one run each; val = the official 16-image val folder (the
# same 16 images as the val-16 column here), test = the official 624-image test split.
SEED_REPORTED = {  # configuration: (the report's row, val accuracy, test accuracy)
    "seed-to-be": ("sigmoid + binary CE, Adam (TO-BE)", 0.9375, 0.9311),
    "seed-softmax-cce": ("softmax + categorical CE, Adam", 0.8125, 0.8622),
    "seed-softmax-bce": ("softmax + binary CE, Adam", 0.6875, 0.7708),
    "seed-rmsprop": ("sigmoid + binary CE, RMSprop", 0.8750, 0.8638),
    "seed-no-augment": ("no augmentation generator", 0.7500, 0.8349),
    "seed-as-is": ("AS-IS", 0.6875, 0.7708),
}

_COLUMNS = [
    ("AUC", lambda s: s["validation"]["at_model_threshold"]["roc_auc"]),
    ("sens", lambda s: s["validation"]["at_model_threshold"]["sensitivity"]),
    ("spec", lambda s: s["validation"]["at_model_threshold"]["specificity"]),
    ("acc", lambda s: s["validation"]["at_model_threshold"]["accuracy"]),
    ("acc@0.5", lambda s: s["validation"]["at_0.5"]["accuracy"]),
    ("spec@0.5", lambda s: s["validation"]["at_0.5"]["specificity"]),
    ("ECE", lambda s: s["validation"]["at_model_threshold"]["ece"]),
    ("shift AUC", lambda s: _mean_shift(s, "roc_auc")),
    ("shift spec", lambda s: _mean_shift(s, "specificity")),
    ("worst shift spec", lambda s: min(m["at_model_threshold"]["specificity"]
                                       for m in s["shifts"].values())),
    ("val-16 acc", lambda s: s["official_val"] and s["official_val"]["at_model_threshold"]["accuracy"]),
]


def _mean_shift(scores: dict, metric: str) -> float:
    return float(np.mean([m["at_model_threshold"][metric] for m in scores["shifts"].values()]))


def _cell(values: list[float | None]) -> str:
    if None in values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def collect(configurations, runs: Path) -> dict[str, list[dict]]:
    """The scores of every finished fold, by configuration name (configurations with none are
    left out)."""
    found = {}
    for configuration in configurations:
        scores = [json.loads(path.read_text())
                  for path in sorted((runs / configuration.name).glob("fold-*/scores.json"))]
        if scores:
            found[configuration.name] = scores
    return found


def write_report(configurations, runs: Path, out: Path) -> str:
    """Write ``out/results.md`` and ``out/results.json`` over the finished runs in ``runs``;
    return the markdown."""
    found = collect(configurations, runs)
    header = "| configuration | group | folds | " + " | ".join(c for c, _ in _COLUMNS) + \
        " | calibration | epochs (exported) | train min |"
    lines = [
        "# Accuracy study",
        "",
        f"Written {datetime.now(timezone.utc).isoformat(timespec='seconds')} by "
        "`python -m studies.study --report` (see `studies/study.py`).",
        "",
        "Scores of each run's **int8** TFLite model on its validation fold (5 patient-level folds"
        " of the official train split; mean ± sd when more than one fold was run), at the "
        "threshold chosen on that fold for sensitivity >= 0.97 (calibrated probability), and "
        "at 0.5. *shift*: the same images under nine simulated acquisition shifts "
        "(`studies/shifts.py`), mean over shifts, and the worst shift's specificity. "
        "*val-16*: the official 16-image val folder. The validation fold also chose the "
        "threshold, the temperature and (for keep-best runs) the epoch, so its figures are "
        "optimistic; the shift and val-16 columns are the robustness check. *calibration*: "
        "`T` for runs exported while pneumocnn fitted a temperature only, `T + b` for runs "
        "exported with a temperature and a bias (the ECE of `T` rows is not comparable). "
        "*train min*: minutes of training epochs per run (decoding and export not included). "
        "A row's runs come from `python -m studies.study --only NAME --folds K ...` on 2 CPU "
        "cores.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for configuration in configurations:
        scores = found.get(configuration.name)
        if not scores:
            continue
        cells = [_cell([get(s) for s in scores]) for _, get in _COLUMNS]
        epochs = "/".join(f"{s['epochs_trained']} ({s['exported_epoch']})" for s in scores)
        minutes = np.mean([s["training_seconds"] for s in scores]) / 60
        calibration = "T + b" if all("bias" in s for s in scores) else "T"
        lines.append(f"| {configuration.name} | {configuration.group} | {len(scores)} | "
                     + " | ".join(cells) + f" | {calibration} | {epochs} | {minutes:.1f} |")
    lines += ["", "## Configurations", ""]
    lines += [f"- **{c.name}**: {c.note}. Settings: `{json.dumps(c.settings)}`"
              + ("" if c.name in found else " *Not run yet.*") for c in configurations]
    lines += ["", "## The seed's ablation beside the report's figures", "",
              "Here: int8, validation fold, 10 epochs, last epoch; accuracies and specificity at "
              "0.5 like the report's, shift spec at the run's threshold for sensitivity 0.97. The "
              "seed report: one run each (val on the 16 images of our val-16 column, test on "
              "the official test split).", "",
              "| configuration | acc@0.5 | AUC | spec@0.5 | shift spec | val-16 acc@0.5 | "
              "seed report's row | its val | its test |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, (row, val, test) in SEED_REPORTED.items():
        scores = found.get(name)
        if scores:
            lines.append(
                f"| {name} | {_cell([s['validation']['at_0.5']['accuracy'] for s in scores])} | "
                f"{_cell([s['validation']['at_model_threshold']['roc_auc'] for s in scores])} | "
                f"{_cell([s['validation']['at_0.5']['specificity'] for s in scores])} | "
                f"{_cell([_mean_shift(s, 'specificity') for s in scores])} | "
                f"{_cell([s['official_val'] and s['official_val']['at_0.5']['accuracy'] for s in scores])} | "
                f"{row} | {val:.4f} | {test:.4f} |")
    lines += _shift_table(found)
    markdown = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.md", markdown)
    write_text(out / "results.json", json.dumps(found, indent=1))
    return markdown


def _shift_table(found: dict[str, list[dict]]) -> list[str]:
    """Specificity per shift (mean over folds) for every configuration."""
    if not found:
        return []
    shifts = list(next(iter(found.values()))[0]["shifts"])
    lines = ["", "## Specificity under each simulated shift (int8, model threshold)", "",
             "| configuration | clean | " + " | ".join(shifts) + " |",
             "|---|---|" + "---|" * len(shifts)]
    for name, scores in found.items():
        clean = np.mean([s["validation"]["at_model_threshold"]["specificity"] for s in scores])
        cells = [np.mean([s["shifts"][k]["at_model_threshold"]["specificity"] for s in scores])
                 for k in shifts]
        lines.append(f"| {name} | {clean:.3f} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return lines
