"""``python -m studies.site_b MODEL [MODEL ...]``: how models trained on ``chest_xray/train``
transfer to a second site, measured on ``../shared/data/site-b`` (208 labelled X-rays of 143
patients from the official test split; see that folder's README).

Each MODEL is a model file (``.tflite``, ``.keras``) or a finished training run folder (its
``model-int8.tflite``). Each is scored on site B as it ships, at its own threshold: ROC AUC,
accuracy, sensitivity, specificity and ECE, clean and under the two alterations that moved
the hidden rest most (zoom in 1.2x, blur 1.5 px; :mod:`studies.shifts`). Intervals are 95 %
percentile intervals over resamples of whole patients (a patient's X-rays are not
independent); each model's AUC is also compared with the first model's on the same resamples
(paired). With ``--recipe NAME MODEL...`` (repeated) the models are grouped into recipes (seeds
of one training recipe) and each recipe's mean AUC is compared with the first recipe's. With
``--ensemble NAME MODEL...`` (repeated) the mean logit of the models is scored as one more
model (:func:`ensemble_row`). With ``--test-time`` each model is also scored through test-time
views (:func:`rows_of_model`).

Site B chooses between recipes; it never enters a fit, a threshold or a calibration of a model
scored here. The table is a development measurement, not the verdict (the hidden rest is).

    python -m studies.site_b pneumocnn/models/pneumonia-int8.tflite runs/site-b/*-s0
    python -m studies.site_b runs/a0 runs/a1 runs/b0 runs/b1 --recipe a runs/a0 runs/a1 \\
        --recipe b runs/b0 runs/b1 --out studies/results/site-b/ab
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pneumocnn  # noqa: E402
from benchmarks import SHARED_DATA  # noqa: E402
from pneumocnn.core.labelled_data import index_folder  # noqa: E402
from pneumocnn.core.metrics import (  # noqa: E402
    binary_metrics,
    logit,
    roc_auc,
    threshold_for_sensitivity,
)
from pneumocnn.core.preprocessing import load_gray  # noqa: E402
from studies import RESULTS, run_facts, write_results  # noqa: E402
from studies.robustness import TTA_VIEWS, Row, View, compare_recipes, patient_resamples  # noqa: E402
from studies.shifts import SHIFTS, model_probabilities  # noqa: E402

SITE_B = SHARED_DATA / "site-b"
ALTERATIONS = ("zoom in 1.2x", "blur r=1.5")
RESAMPLES = 2000
TARGET_SENSITIVITY = 0.97


def model_file(path: Path) -> Path:
    """``path`` itself, or a run folder's int8 model."""
    return path / "model-int8.tflite" if path.is_dir() else path


def altered(grays: list[Image.Image]) -> dict[str, list[Image.Image]]:
    """The site's images as they are (``"none"``) and under each alteration."""
    return {"none": grays, **{name: [SHIFTS[name](g) for g in grays] for name in ALTERATIONS}}


def rows_of_model(path: Path, site: dict[str, list[Image.Image]], test_time: bool = False) -> list[Row]:
    """The model at ``path`` on the site, as it is; with ``test_time`` also zoomed out 1.1x
    alone (1x the latency) and as the mean over the image, zoomed in and zoomed out 1.1x (3x),
    at the model's own threshold."""
    model = pneumocnn.load(model_file(path))
    views: dict[str, tuple[View, ...]] = {"": TTA_VIEWS[:1]}
    if test_time:
        views.update({" + zoomed out 1.1x": TTA_VIEWS[2:], " + TTA (3 views)": TTA_VIEWS})
    return [Row(str(path) + label, {name: np.mean([model_probabilities(model, [view(g) for g in images])
                                                   for view in chosen], axis=0)
                                    for name, images in site.items()}, model.threshold)
            for label, chosen in views.items()]


def ensemble_row(name: str, members: list[Row]) -> Row:
    """The members' mean logit as one model, at the mean logit of their thresholds (each
    member's threshold was chosen on its own validation images; the ensemble has none)."""
    def mean_logit(values: list[np.ndarray | float]) -> np.ndarray:
        return 1 / (1 + np.exp(-np.mean([logit(v) for v in values], axis=0)))

    return Row(name, {alteration: mean_logit([m.probabilities[alteration] for m in members])
                      for alteration in members[0].probabilities},
               float(mean_logit([m.threshold for m in members])))


def _interval(values: np.ndarray) -> list[float]:
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def figures(scored: Row, labels: np.ndarray, draws: list[np.ndarray]) -> dict:
    """Metrics at the model's threshold, clean and altered, with patient-bootstrap intervals
    for the clean AUC, sensitivity and specificity."""
    clean = scored.probabilities["none"]
    called = clean >= scored.threshold
    resampled = np.array([(roc_auc(labels[d], clean[d]), called[d][labels[d] == 1].mean(),
                           1 - called[d][labels[d] == 0].mean()) for d in draws])
    hindsight = threshold_for_sensitivity(labels, clean, TARGET_SENSITIVITY)
    return {
        "threshold": scored.threshold,
        "clean": binary_metrics(labels, clean, scored.threshold),
        "intervals": {name: _interval(resampled[:, k])
                      for k, name in enumerate(("roc_auc", "sensitivity", "specificity"))},
        "hindsight_specificity": binary_metrics(labels, clean, hindsight)["specificity"],
        "altered": {name: binary_metrics(labels, scored.probabilities[name], scored.threshold)
                    for name in ALTERATIONS},
    }


def _pair(metrics: dict) -> str:
    return f"{metrics['sensitivity']:.3f} / {metrics['specificity']:.3f}"


def markdown(results: dict) -> str:
    """The results as a Markdown page."""
    cpu = results["cpu_features"]
    lines = ["# Transfer to a second site (site B)", "",
             f"`{results['command']}`, {results['written']}; CPU: {results['cpu']} "
             f"({cpu['class']}; flags {', '.join(cpu['flags'] or [])}); "
             f"{results['images']} X-rays of {results['patients']} patients "
             f"({results['positives']} PNEUMONIA). Each model at its own threshold; 95 % intervals "
             f"from {RESAMPLES} resamples of whole patients. A development measurement on the "
             "site that chooses recipes, not the verdict.", "",
             "| model | threshold | AUC [95 %] | AUC - first [95 %] | accuracy | sensitivity / "
             "specificity [95 %] | ECE | spec. at sens >= 0.97 in hindsight | "
             + " | ".join(ALTERATIONS) + " |",
             "|---" * (8 + len(ALTERATIONS)) + "|"]
    for name, f in results["models"].items():
        c, i = f["clean"], f["intervals"]
        d = results["differences"][name]
        lines.append(
            f"| {name} | {f['threshold']:.3f} | {c['roc_auc']:.4f} [{i['roc_auc'][0]:.4f}, "
            f"{i['roc_auc'][1]:.4f}] | {d['difference']:+.4f} [{d['interval'][0]:+.4f}, "
            f"{d['interval'][1]:+.4f}] | {c['accuracy']:.3f} | {_pair(c)} "
            f"[{i['sensitivity'][0]:.3f}-{i['sensitivity'][1]:.3f} / {i['specificity'][0]:.3f}-"
            f"{i['specificity'][1]:.3f}] | {c['ece']:.3f} | {f['hindsight_specificity']:.3f} | "
            + " | ".join(_pair(f["altered"][a]) for a in ALTERATIONS) + " |")
    if results.get("recipes"):
        first = next(iter(results["recipes"]))
        lines += ["", f"Recipes: mean AUC over each recipe's models and the difference to {first}'s "
                  "(paired, the same patient resamples):", "",
                  "| recipe | models | mean AUC | difference [95 %] |", "|---|---|---|---|"]
        for name, r in results["recipes"].items():
            lines.append(f"| {name} | {r['runs']} | {r['mean_auc']:.4f} | {r['difference']:+.4f} "
                         f"[{r['interval'][0]:+.4f}, {r['interval'][1]:+.4f}] |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.site_b", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="model files or training run folders")
    parser.add_argument("--recipe", nargs="+", action="append", default=[], metavar=("NAME", "MODEL"),
                        help="a recipe's name and its models (seeds); repeat for each recipe")
    parser.add_argument("--ensemble", nargs="+", action="append", default=[], metavar=("NAME", "MODEL"),
                        help="score the mean logit of these models as one more model; repeatable")
    parser.add_argument("--data", type=Path, default=SITE_B, help="the site's NORMAL/ and PNEUMONIA/")
    parser.add_argument("--test-time", action="store_true",
                        help="also score each model zoomed out 1.1x and through 3 test-time views")
    parser.add_argument("--out", type=Path, default=RESULTS / "site-b")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"{args.data} does not exist: site B is in ../shared/data (see its README)")
    images = index_folder(args.data)
    labels, patients = images.labels, images.patients()
    site = altered([load_gray(path) for path in images.paths])
    draws = patient_resamples(patients)
    scored = {row.name: row for path in args.models for row in rows_of_model(path, site, args.test_time)}

    def row_of(path: str) -> Row:
        return scored.get(str(Path(path))) or rows_of_model(Path(path), site)[0]

    for spec in args.ensemble:
        scored[spec[0]] = ensemble_row(spec[0], [row_of(p) for p in spec[1:]])
    recipes = {spec[0]: [row_of(p) for p in spec[1:]]
               for spec in args.recipe}
    results = {
        **run_facts("studies.site_b", argv),
        "images": len(labels), "patients": len(set(patients)), "positives": int(labels.sum()),
        "models": {name: figures(row, labels, draws) for name, row in scored.items()},
        "differences": compare_recipes({name: [row] for name, row in scored.items()}, labels, patients),
        "recipes": compare_recipes(recipes, labels, patients) if recipes else {},
    }
    write_results(args.out, results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
