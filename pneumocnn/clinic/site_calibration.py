"""Site calibration: refit a model's probability calibration and threshold on a clinic's own
X-rays, and write a model file whose description records it.

A model's calibration (``sigmoid(logit(p) / T + b)``) and threshold were chosen on images of
the centre it was trained at. At another site X-rays look different (framing, processing,
detectors) and pneumonia is more or less common: the probabilities drift, and the threshold no
longer gives the sensitivity it was chosen for. :func:`calibrate` refits them there:

- **labelled** (``FOLDER/{NORMAL,PNEUMONIA}``): temperature and bias fitted on the site's
  images by Platt scaling of the model's raw logit (as training fits them on validation), the
  threshold chosen for the target sensitivity, and sensitivity and specificity reported with
  bootstrap 95 % intervals, cross-validated over patient folds and on the images that chose the
  threshold (optimistic);
- **unlabelled** (any folder of X-rays): the site's pneumonia share estimated by EM on the
  model's calibrated outputs, and the calibration bias shifted to it.

A folder of variants (the bundled models) gives a folder of the same variants, each calibrated
on its own outputs for the same images (quantization moves outputs, and a shifted site can move
them apart: one calibration shared by int8 and float16 gave one of them specificity 0.92 where
the other had 0.97). Their records share an ``id``, by which ``load(SITE_MODEL)`` knows them for
variants of one model and still chooses among them by speed.
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pneumocnn.clinic.site_record import (
    KEY,
    LabelledFit,
    Origin,
    PriorShift,
    Rates,
    SiteFigures,
    SiteRecord,
    ThresholdRule,
    UnlabelledFit,
    recorded_prior,
)
from pneumocnn.core.durable_files import write_bytes
from pneumocnn.core.errors import DatasetError, ModelFileError
from pneumocnn.core.labelled_data import patient_folds
from pneumocnn.core.metrics import (
    bootstrap_interval,
    estimate_prior,
    expected_calibration_error,
    fit_calibration,
    logit,
    roc_auc,
    threshold_for_sensitivity,
)
from pneumocnn.core.modelfile import ModelDescription, embed_in_tflite
from pneumocnn.runtime.backends import read_tflite_file
from pneumocnn.runtime.evaluation import score_labelled
from pneumocnn.runtime.model import Model, bundled_models, load
from pneumocnn.runtime.variants import variant_files

TARGET_SENSITIVITY = 0.97
# Fewest images of each class to fit the calibration's two parameters on: the usual 10 events
# of the rarer outcome per fitted parameter of a logistic model.
MIN_PER_CLASS = 20
# Fewest unlabelled images: the estimated share's sampling error, at most 0.5 / sqrt(n), is
# then at most 0.1.
MIN_UNLABELLED = 25
FOLDS = 5
RESAMPLES = 2000
SEED = 0
# The order a folder's variants are reported in: most precise first.
PRECISION = ("float32", "float16", "dynamic-int8", "int8")


@dataclass(frozen=True)
class SiteCalibration:
    """What :func:`calibrate` did: the site model's ``descriptions`` and the files ``written``,
    by variant (most precise first), and the site images that could not be read
    (``"file: reason"``), which were skipped. ``str()`` is the report the command line prints."""

    descriptions: dict[str, ModelDescription]
    written: dict[str, Path]
    unreadable: tuple[str, ...]

    @property
    def sites(self) -> dict[str, SiteRecord]:
        """The site calibration each written file's description records, by variant."""
        return {name: SiteRecord.from_dict(description.info[KEY], name)
                for name, description in self.descriptions.items()}

    @property
    def records(self) -> dict[str, dict]:
        """:attr:`sites` as the JSON the descriptions hold."""
        return {name: description.info[KEY] for name, description in self.descriptions.items()}

    @property
    def record(self) -> dict:
        """The record of the most precise variant (of the one file, for a file), as JSON."""
        return next(iter(self.records.values()))

    def __str__(self) -> str:
        lines = []
        for name, description in self.descriptions.items():
            if len(self.descriptions) > 1:
                lines.append(f"{name} variant:")
            lines += calibration_report(description, detailed=True)
        lines += [f"wrote {path}" for path in self.written.values()]
        lines += [f"skipped {entry}" for entry in self.unreadable]
        return "\n".join(lines)


def required_images(target_sensitivity: float) -> tuple[int, int]:
    """The fewest ``(normal, pneumonia)`` labelled images a calibration for
    ``target_sensitivity`` is done on: ``MIN_PER_CLASS`` of each to fit temperature and bias,
    and at least ``ceil(1 / (1 - target))`` pneumonias, the fewest among which a threshold for
    that sensitivity may miss one (34 at 0.97); with fewer, it must call every pneumonia seen,
    and rests on the single lowest-scored one."""
    if not 0.0 < target_sensitivity < 1.0:  # NaN fails too
        raise ValueError(f"target sensitivity must lie in (0, 1), got {target_sensitivity}")
    return MIN_PER_CLASS, max(MIN_PER_CLASS, math.ceil(1 / (1 - target_sensitivity) - 1e-9))


def calibrate(
    model: str | os.PathLike | None,
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    target_sensitivity: float = TARGET_SENSITIVITY,
    unlabelled: bool = False,
    training_prior: float | None = None,
) -> SiteCalibration:
    """Calibrate ``model`` on a site's X-rays in ``folder`` and write the site model to ``out``.

    ``model`` is a ``.tflite`` file (``out`` is then a file), a folder of its variants (``out``
    is then a folder of the same variants, each calibrated on its own outputs), or ``None`` for
    the bundled models. The original is never overwritten.

    Labelled (``folder/{NORMAL,PNEUMONIA}``): temperature and bias are refitted on the model's
    raw outputs for the site's images, and the threshold set to the highest whose sensitivity on
    them reaches ``target_sensitivity``. The record holds sensitivity and specificity with
    bootstrap 95 % intervals, twice: cross-validated over ``FOLDS`` patient folds (each image
    judged by a threshold chosen on the other folds: the estimate to go by) and on the images
    that chose the threshold (optimistic: at least the target by construction). Refuses
    (:class:`~pneumocnn.DatasetError`, saying how many are needed) fewer images than
    :func:`required_images`.

    ``unlabelled=True`` (any folder, searched recursively; at least ``MIN_UNLABELLED``
    images): the site's pneumonia share is estimated by EM on the model's calibrated outputs
    (:func:`~pneumocnn.core.metrics.estimate_prior`) and the bias moved by
    ``logit(share) - logit(prior)``, where ``prior`` is the share the model's calibration was
    fitted under (``training_prior``, else read from the description; see
    :func:`calibration_prior`). The probabilities then speak for the site's share. A threshold
    chosen for a sensitivity moves with the bias, so that the same images are called
    pneumonia: a sensitivity is a property of the pneumonia images' scores alone, which a
    change in how common pneumonia is does not move (keeping its value instead would call fewer
    pneumonias where they are rarer, below the target it was chosen for). A fixed probability
    threshold (such as 0.5) keeps its value: it is a decision about the probability, which now
    accounts for the share. Without labels nothing measures sensitivity or specificity.

    Unreadable images are skipped and listed in the result.
    """
    path = bundled_models() if model is None else Path(model)
    found = variant_files(path) if path.is_dir() else {_variant_name(path): path}
    sources = {name: found[name] for name in sorted(found, key=_precision)}
    targets = _targets(sources, Path(out), into_folder=path.is_dir())
    models = {name: load(source) for name, source in sources.items()}
    fitted: Mapping[str, tuple[ModelDescription, LabelledFit | UnlabelledFit]]
    if unlabelled:
        fitted, unreadable = _unlabelled(models, folder, training_prior)
    else:
        fitted, unreadable = _labelled(models, folder, target_sensitivity)
    calibration, date = uuid.uuid4().hex, _now()
    for name, (description, fit) in fitted.items():
        content, original = read_tflite_file(sources[name])
        record = SiteRecord(calibration, date, len(unreadable), name,
                            _source(sources[name], content, original), fit)
        write_bytes(targets[name],
                    embed_in_tflite(content, description.with_info(**{KEY: record.to_dict()})))
    return SiteCalibration({name: read_tflite_file(targets[name])[1] for name in sources},
                           targets, tuple(unreadable))


def fit_labelled(description: ModelDescription, labels: np.ndarray, raw: np.ndarray,
                 target_sensitivity: float = TARGET_SENSITIVITY) -> ModelDescription:
    """``description`` with temperature and bias refitted on the raw outputs ``raw`` of images
    labelled ``labels`` (1 = pneumonia), and the threshold the highest whose sensitivity on them
    reaches ``target_sensitivity``; nothing else is checked or recorded (:func:`calibrate`
    does that)."""
    temperature, bias = fit_calibration(labels, raw)
    fitted = replace(description, temperature=temperature, bias=bias)
    threshold = threshold_for_sensitivity(labels, fitted.calibrate(raw), target_sensitivity)
    rule = ThresholdRule("sensitivity", target_sensitivity, "site")
    return replace(fitted, threshold=threshold).with_info(
        threshold_source=str(rule),
        thresholds={"fixed_0.5": 0.5, f"sensitivity_{target_sensitivity}": threshold})


def fit_unlabelled(description: ModelDescription, probabilities: np.ndarray,
                   training_prior: float) -> tuple[ModelDescription, PriorShift]:
    """``description`` with its bias shifted from the pneumonia share ``training_prior`` to the
    share EM estimates from the calibrated ``probabilities`` of a site's images, and its
    threshold moved or kept as :func:`calibrate` says (by its :class:`ThresholdRule`); and
    what was found."""
    estimate = estimate_prior(probabilities, training_prior)
    shift = float(logit(estimate.prior) - logit(training_prior))
    rule = ThresholdRule.of(description).kind

    def moved(threshold: float) -> float:
        return float(1 / (1 + np.exp(-(logit(threshold) + shift))))

    thresholds = description.info.get("thresholds")
    if isinstance(thresholds, dict):  # each alternative threshold follows its own rule
        thresholds = {key: moved(value) if ThresholdRule.of_alternative(key) == "sensitivity"
                      else value for key, value in thresholds.items()}
    site = replace(description, bias=description.bias + shift,
                   threshold=moved(description.threshold) if rule == "sensitivity"
                   else description.threshold)
    found = PriorShift(estimate.prior, training_prior, shift, estimate.iterations,
                       estimate.converged, rule)
    return (site.with_info(thresholds=thresholds) if thresholds is not None else site), found


def calibration_prior(description: ModelDescription) -> tuple[float, str]:
    """The pneumonia share the model's calibrated outputs assume, and where it was read: a
    previous site calibration's share; else, for a calibrated model, its validation images'
    (where training fits the calibration), falling back to its training images'; for an
    uncalibrated one, its training images' (0.5 when trained with balanced class weights).
    Raises :class:`~pneumocnn.ModelFileError` when the description records none."""
    prior = recorded_prior(description)
    if prior is not None:
        return prior, "its previous site calibration"
    provenance = description.info.get("provenance")
    provenance = provenance if isinstance(provenance, dict) else {}
    calibrated = description.temperature != 1.0 or description.bias != 0.0
    if not calibrated and (provenance.get("config") or {}).get("class_weight") == "balanced":
        return 0.5, "balanced class weights in training"
    keys = ("validation_counts", "train_counts") if calibrated else ("train_counts",)
    for key in keys:
        counts = provenance.get(key)
        if (isinstance(counts, list) and len(counts) == 2
                and all(isinstance(n, int) and n > 0 for n in counts)):
            note = "" if key == keys[0] else " (it records no validation counts)"
            return counts[1] / sum(counts), f"its provenance's {key}{note}"
    raise ModelFileError(description.info.get("architecture", "the model"),
                         "its description records no class counts to tell the pneumonia share its "
                         "calibration assumes; give it (training_prior=, --training-prior)")


def calibration_report(description: ModelDescription, detailed: bool = False) -> list[str]:
    """Readable lines about the site calibration a description records (``[]`` when none):
    two for ``pneumocnn info``; with ``detailed``, the report of :func:`calibrate`."""
    record = SiteRecord.of(description)
    if record is None:
        return []
    source, fit = record.source, record.fit
    before = (f"recalibrated from {source.file} (sha256 {source.sha256[:16]}...: temperature "
              f"{source.temperature:.3f}, bias {source.bias:.3f}, threshold "
              f"{source.threshold:.3f}) to temperature {description.temperature:.3f}, bias "
              f"{description.bias:.3f}, threshold {description.threshold:.3f}")
    if isinstance(fit, UnlabelledFit):
        shift = fit.shift
        lines = [f"site calibration: unlabelled, {fit.images} images, {record.date}: "
                 f"estimated pneumonia share {shift.prior:.3f} (the calibration assumed "
                 f"{shift.prior_before:.3f}); threshold {shift.to_dict()['threshold_rule']}",
                 f"  {before}"]
        if detailed:
            em = "converged" if shift.converged else "stopped unconverged"
            lines.append(f"  EM {em} after {shift.iterations} iterations; the assumed share "
                         f"from {fit.prior_before_source}. Without labels, sensitivity "
                         "and specificity were not measured: validate on labelled images")
        return lines
    counts = ", ".join(f"{n} {name}" for name, n in fit.images.items())
    figures = fit.figures
    cv = figures.cross_validated
    lines = [f"site calibration: labelled, {counts}, {record.date}: threshold for "
             f"sensitivity >= {fit.target_sensitivity}; cross-validated sensitivity "
             f"{_interval(cv.sensitivity, cv.sensitivity_ci)}, specificity "
             f"{_interval(cv.specificity, cv.specificity_ci)}",
             f"  {before}"]
    if detailed:
        seen = figures.in_sample
        lines += [f"  cross-validated: {figures.folds} patient folds, each image judged by a "
                  "threshold chosen on the others; 95 % percentile bootstrap intervals",
                  f"  on the images that chose the threshold (optimistic): sensitivity "
                  f"{_interval(seen.sensitivity, seen.sensitivity_ci)}, specificity "
                  f"{_interval(seen.specificity, seen.specificity_ci)}"
                  f", ECE {figures.ece:.3f}, ROC AUC {figures.roc_auc:.4f}"]
    return lines


def _interval(value: float, interval: tuple[float, float]) -> str:
    low, high = interval
    return f"{value:.3f} (95 % CI {low:.3f}-{high:.3f})"


def _labelled(models: dict[str, Model], folder: str | os.PathLike, target: float
              ) -> tuple[dict[str, tuple[ModelDescription, LabelledFit]], list[str]]:
    """Each variant fitted on its own raw outputs for the site's readable images, with its
    figures."""
    first, *others = models
    need_normal, need_pneumonia = required_images(target)
    images, predictions = score_labelled(models[first].uncalibrated(), folder)
    scored = np.array([p.ok for p in predictions])
    unreadable = [f"{p.source}: {p.error}" for p in predictions if not p.ok]
    images = images.subset(np.flatnonzero(scored))
    labels = images.labels
    have = (int((labels == 0).sum()), int((labels == 1).sum()))
    if have[0] < need_normal or have[1] < need_pneumonia:
        negative, positive = images.class_names
        raise DatasetError(
            f"{folder}: too few readable images to calibrate for sensitivity {target} honestly: "
            f"{have[1]} {positive} (at least {need_pneumonia} needed) and {have[0]} {negative} "
            f"(at least {need_normal} needed). A threshold for sensitivity {target} must be "
            f"able to miss one pneumonia in {need_pneumonia}, and temperature and bias are "
            f"fitted on at least {MIN_PER_CLASS} images of each class")
    folds = patient_folds(images, FOLDS, SEED)
    outputs = {first: np.array([p.probability for p in predictions])[scored]}
    for name in others:
        outputs[name] = _probabilities(models[name].uncalibrated(),
                                       [str(path) for path in images.paths])
    bootstrap = {"resamples": RESAMPLES, "level": 0.95, "seed": SEED}
    fits = {}
    for name, model in models.items():
        fitted = fit_labelled(model.description, labels, outputs[name], target)
        figures = site_figures(fitted, labels, outputs[name], folds, target)
        fits[name] = fitted, LabelledFit(images.counts(), target, have[1] / sum(have), bootstrap,
                                         figures)
    return fits, unreadable


def site_figures(fitted: ModelDescription, labels: np.ndarray, raw: np.ndarray,
                 folds: np.ndarray, target: float) -> SiteFigures:
    """Sensitivity and specificity, with their bootstrap intervals, of the calibration
    ``fitted`` (by :func:`fit_labelled`) on the raw outputs ``raw`` it was fitted on: at its
    threshold (``in_sample``, optimistic; with ECE and ROC AUC), and ``cross_validated`` over
    the patient ``folds``, each image called by a threshold chosen on the other folds.
    Calibration is increasing in the raw logit, so a threshold for a sensitivity is one cut of
    the raw logit whatever temperature and bias the other folds would refit: each fold's cut is
    taken on the others' raw logits."""
    calibrated = fitted.calibrate(raw)
    logits = logit(raw)
    held_out_called = np.zeros(labels.size, dtype=bool)
    for fold in np.unique(folds):
        held = folds == fold
        threshold = threshold_for_sensitivity(labels[~held], logits[~held], target)
        held_out_called[held] = logits[held] >= threshold
    return SiteFigures(_rates(labels, calibrated >= fitted.threshold),
                       expected_calibration_error(labels, calibrated), roc_auc(labels, raw),
                       int(np.unique(folds).size), _rates(labels, held_out_called))


def _rates(labels: np.ndarray, called: np.ndarray) -> Rates:
    positive = labels.astype(bool)
    hits, misses = called[positive], ~called[~positive]

    def interval(hit: np.ndarray) -> tuple[float, float]:
        low, high = bootstrap_interval(hit, resamples=RESAMPLES, seed=SEED)
        return float(low), float(high)

    return Rates(float(hits.mean()), interval(hits), float(misses.mean()), interval(misses))


def _unlabelled(models: dict[str, Model], folder: str | os.PathLike, training_prior: float | None
                ) -> tuple[dict[str, tuple[ModelDescription, UnlabelledFit]], list[str]]:
    """Each variant's bias shifted by EM on its own calibrated outputs for the site's images."""
    if not Path(folder).is_dir():
        raise DatasetError(f"{folder}: folder does not exist")
    first, *others = models
    predictions = list(models[first].predict_iter(folder))
    unreadable = [f"{p.source}: {p.error}" for p in predictions if not p.ok]
    readable = [p.source for p in predictions if p.ok]
    if len(readable) < MIN_UNLABELLED:
        raise DatasetError(
            f"{folder}: {len(readable)} readable images; estimating the site's pneumonia "
            f"share needs at least {MIN_UNLABELLED} (its sampling error is then at most 0.1; "
            "100 or more are better)")
    outputs = {first: np.array([p.probability for p in predictions if p.ok])}
    for name in others:
        outputs[name] = _probabilities(models[name], readable)
    fits = {}
    for name, model in models.items():
        prior, prior_source = ((training_prior, "given") if training_prior is not None
                               else calibration_prior(model.description))
        site, found = fit_unlabelled(model.description, outputs[name], prior)
        fits[name] = site, UnlabelledFit(len(readable), found, prior_source)
    return fits, unreadable


def _probabilities(model: Model, paths: list[str]) -> np.ndarray:
    """A variant's probabilities for images another variant read; unreadable now, they fail."""
    predictions = list(model.predict_iter(paths))
    failed = [f"{p.source}: {p.error}" for p in predictions if not p.ok]
    if failed:
        raise DatasetError(f"{failed[0]} (it was read a moment before: has it changed?)")
    return np.array([p.probability for p in predictions])


def _source(path: Path, content: bytes, description: ModelDescription) -> Origin:
    """What the site model was made from (see :class:`Origin`)."""
    return Origin(path.name, hashlib.sha256(content).hexdigest(), description.sha256,
                  description.temperature, description.bias, description.threshold)


def _precision(name: str) -> int:
    return PRECISION.index(name) if name in PRECISION else len(PRECISION)


def _variant_name(path: Path) -> str:
    """A model file's variant name: its quantization; refuses what is not a ``.tflite``."""
    if path.suffix == ".keras":
        raise ModelFileError(str(path), "calibrate writes .tflite files: give this model's "
                                        ".tflite export (or its run folder)")
    return read_tflite_file(path)[1].info.get("quantization") or path.stem


def _targets(sources: dict[str, Path], out: Path, into_folder: bool) -> dict[str, Path]:
    """Where each source is written: ``out`` for a file; ``out/<its name>`` for a folder of
    variants. Refuses to overwrite an original, or to mix other models' files into ``out``."""
    if into_folder:
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out} is a file: a folder of variants is calibrated into a folder")
        targets = {name: out / path.name for name, path in sources.items()}
        others = sorted(p.name for p in out.glob("*.tflite") if p not in targets.values())
        if others:
            raise ValueError(f"{out} holds other model files ({', '.join(others)}): a folder of "
                             "variants must hold the files of one model only")
    elif out.is_dir():
        raise ValueError(f"{out} is a folder: give the site model's file name (.tflite)")
    else:
        targets = {name: out for name in sources}
    for name, target in targets.items():
        if target.exists() and target.resolve() == sources[name].resolve():
            raise ValueError(f"{target} is the model being calibrated: write the site model "
                             "elsewhere, and keep the original")
    return targets


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
