"""``python -m studies.site_adaptation``: what a site gains from its own X-rays, measured on
site B (``../shared/data/site-b``) as a clinic would have it: every figure comes from images
that took no part in the fit.

Rows (the bundled int8 model unless ``--model``):

- *as shipped*: the model's own calibration and threshold.
- *labelled, all images*: ``pneumocnn calibrate`` (temperature, bias, threshold for sensitivity
  0.97) fitted on 4 of 5 patient folds and judged on the fifth, for each fold in turn.
- *labelled, 100 images*: fitted on 40 NORMAL + 60 PNEUMONIA X-rays drawn by patient, judged on
  the site's other X-rays; ``--draws`` draws, the mean and the range over them.
- *unlabelled*: ``pneumocnn calibrate --unlabelled`` (the site's pneumonia share by EM, the bias
  and threshold moved with it) on all the site's images without their labels, judged on them.

With ``--float-model model.keras`` (needs the ``train`` extra) three levers that change the
network itself are measured by ROC AUC, which calibration cannot move: batch-norm statistics
re-estimated on the site's unlabelled X-rays (on 4 folds, judged on the fifth), the
classifier's last layer refitted on the site's labelled X-rays (L2-pulled to the trained
weights; the same folds), and a short fine-tune of the last convolution and the classifier on
them (Adam at a small learning rate, batch-norm statistics kept; the same folds).

    python -m studies.site_adaptation --float-model benchmarks/bundled-run/model.keras
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pneumocnn  # noqa: E402
from benchmarks import shown  # noqa: E402
from pneumocnn.clinic.site_calibration import (  # noqa: E402
    calibration_prior,
    fit_labelled,
    fit_unlabelled,
)
from pneumocnn.core.labelled_data import LabelledImages, index_folder, patient_folds  # noqa: E402
from pneumocnn.core.metrics import (  # noqa: E402
    binary_metrics,
    expected_calibration_error,
    roc_auc,
    threshold_for_sensitivity,
)
from studies import RESULTS, run_facts, write_results  # noqa: E402
from studies.robustness import patient_resamples  # noqa: E402
from studies.site_b import SITE_B  # noqa: E402

FOLDS = 5
TARGET_SENSITIVITY = 0.97
SMALL_SITE = (40, 60)  # NORMAL, PNEUMONIA
HEAD_PULLS = (0.01, 0.1, 1.0)  # L2 weight pulling the refitted last layer to the trained one
FINE_TUNE_EPOCHS = (3, 10, 30)
FINE_TUNE_RATE = 1e-4


def _judged(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    metrics = binary_metrics(labels, probabilities, threshold)
    return {key: metrics[key] for key in ("sensitivity", "specificity", "accuracy", "ece")}


def labelled_cross_validated(description, labels: np.ndarray, raw: np.ndarray,
                             folds: np.ndarray) -> dict:
    """Calibration fitted on the other folds, each fold judged by it: pooled figures."""
    calibrated = np.zeros(labels.size)
    called = np.zeros(labels.size, dtype=bool)
    for fold in np.unique(folds):
        held = folds == fold
        fitted = fit_labelled(description, labels[~held], raw[~held], TARGET_SENSITIVITY)
        calibrated[held] = fitted.calibrate(raw[held])
        called[held] = calibrated[held] >= fitted.threshold
    return _pooled(labels, calibrated, called)


def _pooled(labels: np.ndarray, calibrated: np.ndarray, called: np.ndarray) -> dict:
    positive = labels.astype(bool)
    return {"sensitivity": float(called[positive].mean()),
            "specificity": float((~called[~positive]).mean()),
            "accuracy": float((called == positive).mean()),
            "ece": expected_calibration_error(labels, calibrated)}


def small_site_draw(images: LabelledImages, rng: np.random.Generator) -> np.ndarray:
    """A mask of about ``SMALL_SITE`` X-rays (NORMAL, PNEUMONIA) made of whole patients."""
    patients = np.array(images.patients())
    chosen = np.zeros(len(images), dtype=bool)
    for label, wanted in enumerate(SMALL_SITE):
        order = rng.permutation(np.unique(patients[images.labels == label]))
        for patient in order:
            if (chosen & (images.labels == label)).sum() >= wanted:
                break
            chosen |= patients == patient
    return chosen


def labelled_small(description, images: LabelledImages, raw: np.ndarray, draws: int) -> dict:
    """Fitted on a small draw, judged on the rest; mean and range over ``draws`` draws."""
    rng = np.random.default_rng(0)
    results = []
    for _ in range(draws):
        fit = small_site_draw(images, rng)
        fitted = fit_labelled(description, images.labels[fit], raw[fit], TARGET_SENSITIVITY)
        results.append(_judged(images.labels[~fit], fitted.calibrate(raw[~fit]), fitted.threshold))
    return {key: {"mean": float(np.mean([r[key] for r in results])),
                  "range": [float(min(r[key] for r in results)), float(max(r[key] for r in results))]}
            for key in results[0]}


def unlabelled(description, labels: np.ndarray, raw: np.ndarray) -> dict:
    """The prior shift fitted on every image without labels, judged on them; also the
    specificity at the threshold giving sensitivity >= 0.95 (in hindsight)."""
    prior, _ = calibration_prior(description)
    site, found = fit_unlabelled(description, description.calibrate(raw), prior)
    calibrated = site.calibrate(raw)
    hindsight = threshold_for_sensitivity(labels, calibrated, 0.95)
    return {**_judged(labels, calibrated, site.threshold), "prior": found.prior,
            "specificity_at_sensitivity_0.95": binary_metrics(labels, calibrated, hindsight)["specificity"]}


def network_levers(float_model: Path, images: LabelledImages, folds: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """The site's scores under each lever: the float model as it is, with batch-norm statistics
    re-estimated on the other folds' X-rays, with its last layer refitted on the other folds'
    labels, and with its last convolution and classifier fine-tuned on them."""
    import keras

    from pneumocnn.core.modelfile import read_keras_description
    from pneumocnn.core.preprocessing import load_pixels, to_model_inputs
    from pneumocnn.training.calibration import recalibrate_batchnorm

    spec = read_keras_description(float_model).preprocessing
    pixels = np.stack([load_pixels(path, spec) for path in images.paths])
    inputs = to_model_inputs(pixels, spec)  # once: every lever reads the same model inputs
    labels = images.labels

    def outputs(model, selection: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(inputs[selection], verbose=0))[:, -1]

    trained = keras.models.load_model(float_model, compile=False)
    every = np.ones(len(labels), dtype=bool)
    scores = {"float model as it is": outputs(trained, every)}
    adapted = np.zeros(len(labels))
    for fold in np.unique(folds):
        model = keras.models.load_model(float_model, compile=False)
        recalibrate_batchnorm(model, pixels[folds != fold], spec, batch_size=16, random_seed=0)
        adapted[folds == fold] = outputs(model, folds == fold)
    scores["batch-norm statistics of the site (unlabelled, cross-fitted)"] = adapted
    head = trained.layers[-1]
    features = keras.Model(trained.inputs, trained.layers[-2].output).predict(inputs, verbose=0)
    weights, bias = (np.asarray(value, dtype=np.float64) for value in head.get_weights())
    for pull in HEAD_PULLS:
        logits = np.zeros(len(labels))
        for fold in np.unique(folds):
            w, b = _refit_logistic(features[folds != fold], labels[folds != fold],
                                   weights[:, -1], float(bias[-1]), pull)
            logits[folds == fold] = features[folds == fold] @ w + b
        scores[f"last layer refitted on the site's labels (pull {pull}, cross-validated)"] = logits
    for epochs in FINE_TUNE_EPOCHS:
        tuned = np.zeros(len(labels))
        for fold in np.unique(folds):
            model = keras.models.load_model(float_model, compile=False)
            fit = folds != fold
            fine_tune_last_block(model, inputs[fit], labels[fit], epochs)
            tuned[folds == fold] = outputs(model, folds == fold)
        scores[f"last convolution and classifier fine-tuned on the site's labels ({epochs} "
               f"epochs, cross-validated)"] = tuned
    return scores


def compared(scores: dict[str, np.ndarray], labels: np.ndarray, patients: list[str]) -> dict:
    """Each lever's ROC AUC and its difference to the first lever's, with a 95 % interval over
    resamples of whole patients (the same resamples for every lever)."""
    names = list(scores)
    aucs = [roc_auc(labels, scores[name]) for name in names]
    draws = np.array([[roc_auc(labels[d], scores[name][d]) for name in names]
                      for d in patient_resamples(patients)])
    differences = draws - draws[:, :1]
    return {name: {"roc_auc": aucs[k], "difference": aucs[k] - aucs[0],
                   "interval": [float(np.nanpercentile(differences[:, k], q)) for q in (2.5, 97.5)]}
            for k, name in enumerate(names)}


def fine_tune_last_block(model, inputs: np.ndarray, labels: np.ndarray, epochs: int) -> None:
    """Train only ``model``'s last convolution and its last dense layer on ``inputs`` (float
    model inputs) and 0/1 ``labels``, batch-norm statistics and every other weight kept."""
    import keras

    keras.utils.set_random_seed(0)
    for layer in model.layers:
        layer.trainable = False
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    for layer in (convolutions[-1], dense[-1]):
        layer.trainable = True
    if model.outputs[0].shape[-1] == 1:
        loss, targets = keras.losses.BinaryCrossentropy(), labels.astype("float32")[:, None]
    else:
        loss, targets = keras.losses.SparseCategoricalCrossentropy(), labels.astype("int32")
    model.compile(optimizer=keras.optimizers.Adam(FINE_TUNE_RATE), loss=loss)
    model.fit(inputs, targets, batch_size=16, epochs=epochs, shuffle=True, verbose=0)


def _refit_logistic(features: np.ndarray, labels: np.ndarray, w0: np.ndarray, b0: float,
                    pull: float) -> tuple[np.ndarray, float]:
    """Newton's method on the mean log-loss + ``pull``/2 * |w - w0|^2, from ``(w0, b0)``."""
    design = np.hstack([features, np.ones((len(labels), 1))])
    theta = np.append(w0, b0)
    anchor = np.append(np.full(len(w0), pull), 0.0)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(design @ theta)))
        gradient = design.T @ (p - labels) / len(labels) + anchor * (theta - np.append(w0, b0))
        hessian = (design * (p * (1 - p))[:, None]).T @ design / len(labels) + np.diag(anchor + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-9:
            break
    return theta[:-1], float(theta[-1])


def markdown(results: dict) -> str:
    """The results as a Markdown page."""
    cpu = results["cpu_features"]
    lines = ["# Site adaptation on site B", "",
             f"`{results['command']}`, {results['written']}; CPU: {results['cpu']} ({cpu['class']}); "
             f"model `{results['model']}`; {results['images']} X-rays. Every figure is judged on "
             "X-rays that took no part in the fit (patient folds, or the X-rays left out of a "
             "draw), except the unlabelled row, which never sees a label.", "",
             "| adaptation | sensitivity | specificity | accuracy | ECE |", "|---|---|---|---|---|"]
    for name, row in results["calibration"].items():
        cells = [row[key] for key in ("sensitivity", "specificity", "accuracy", "ece")]
        if isinstance(cells[0], dict):
            text = [f"{c['mean']:.3f} ({c['range'][0]:.3f}-{c['range'][1]:.3f})" for c in cells]
        else:
            text = [f"{c:.3f}" for c in cells]
        lines.append(f"| {name} | " + " | ".join(text) + " |")
    unlabelled_row = results["calibration"]["unlabelled (prior by EM, all images)"]
    lines += ["", f"Unlabelled: estimated pneumonia share {unlabelled_row['prior']:.3f} (the site's "
              f"is {results['positive_share']:.3f}); specificity at sensitivity >= 0.95 (threshold "
              f"in hindsight) {unlabelled_row['specificity_at_sensitivity_0.95']:.3f}."]
    if results.get("network"):
        lines += ["", "Levers on the network (ROC AUC on the site, float Keras model; the "
                  "difference to the model as it is, paired, with a 95 % interval over resamples "
                  "of whole patients):", "",
                  "| lever | ROC AUC | difference [95 %] |", "|---|---|---|"]
        lines += [f"| {name} | {row['roc_auc']:.4f} | {row['difference']:+.4f} "
                  f"[{row['interval'][0]:+.4f}, {row['interval'][1]:+.4f}] |"
                  for name, row in results["network"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.site_adaptation",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a .tflite file (default: bundled int8)")
    parser.add_argument("--float-model", type=Path, help="its float .keras model, for the network levers")
    parser.add_argument("--data", type=Path, default=SITE_B)
    parser.add_argument("--draws", type=int, default=20, help="draws of the 100-image site")
    parser.add_argument("--out", type=Path, default=RESULTS / "site-adaptation")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"{args.data} does not exist: site B is in ../shared/data (see its README)")
    model = pneumocnn.load(args.model) if args.model else pneumocnn.load(variant="int8")
    images = index_folder(args.data)
    labels = images.labels
    raw = np.array([p.probability for p in model.uncalibrated().predict([str(p) for p in images.paths])])
    description = model.description
    folds = patient_folds(images, FOLDS, 0)
    calibrated = description.calibrate(raw)
    results = {
        **run_facts("studies.site_adaptation", argv), "model": shown(model.path),
        "images": len(labels), "positive_share": float(labels.mean()),
        "calibration": {
            "as shipped": _judged(labels, calibrated, description.threshold),
            "labelled, all images (5 patient folds)":
                labelled_cross_validated(description, labels, raw, folds),
            f"labelled, {sum(SMALL_SITE)} images ({args.draws} draws, judged on the rest)":
                labelled_small(description, images, raw, args.draws),
            "unlabelled (prior by EM, all images)": unlabelled(description, labels, raw),
        },
        "network": compared(network_levers(args.float_model, images, folds), labels,
                            images.patients()) if args.float_model else {},
    }
    write_results(args.out, results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
