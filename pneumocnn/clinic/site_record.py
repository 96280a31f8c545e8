"""The record of a site calibration and the rule a threshold was chosen by, as types.

A site model's description holds its :class:`SiteRecord` as JSON under
``info["site_calibration"]`` (:data:`KEY`), and the rule its threshold was chosen by as text
under ``info["threshold_source"]`` (``"validation sensitivity >= 0.97"``, written by training;
``"site sensitivity >= 0.9"``; ``"fixed"``), which :class:`ThresholdRule` reads and writes. The
JSON is the one pneumocnn has written since site calibration began (``to_dict`` writes it,
``from_dict`` reads it, the files of earlier versions included); a record that is not one
raises :class:`~pneumocnn.ModelFileError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pneumocnn.core.errors import ModelFileError
from pneumocnn.core.modelfile import ModelDescription

KEY = "site_calibration"  # the record's key in the description's info
RuleKind = Literal["sensitivity", "fixed"]
_RULE = re.compile(r"(?P<images>\w+) sensitivity >= (?P<target>[0-9.eE+-]+)")
_ALTERNATIVE = re.compile(r"(?P<kind>sensitivity|fixed)_[0-9.eE+-]+")
# what an unlabelled calibration did to the threshold, as its record says it
_MOVED: dict[RuleKind, str] = {"sensitivity": "moved with the bias: the same images are called pneumonia",
                               "fixed": "kept: a fixed probability threshold"}


@dataclass(frozen=True)
class ThresholdRule:
    """How a threshold was chosen: for a ``target`` sensitivity on some ``images``
    (``"validation"``, ``"site"``), or a ``"fixed"`` probability. A shift of the calibration's
    bias moves a threshold chosen for a sensitivity with it (the same images stay called
    pneumonia) and keeps a fixed one."""

    kind: RuleKind
    target: float | None = None
    images: str | None = None

    @classmethod
    def of(cls, description: ModelDescription) -> ThresholdRule:
        """The rule of ``description``'s threshold, from its ``threshold_source`` (none
        recorded: a fixed threshold). Raises :class:`~pneumocnn.ModelFileError` for a text
        that names no rule pneumocnn writes."""
        text = description.info.get("threshold_source")
        if text is None or text == "fixed":
            return cls("fixed")
        match = _RULE.fullmatch(str(text))
        if match is None:
            raise ModelFileError(description.info.get("architecture", "the model"),
                                 f"its threshold_source {str(text)[:80]!r} names no threshold "
                                 "rule pneumocnn knows ('<images> sensitivity >= <target>' or "
                                 "'fixed')")
        return cls("sensitivity", float(match["target"]), match["images"])

    @classmethod
    def of_alternative(cls, key: str) -> RuleKind:
        """The kind of rule of an alternative threshold in the description's ``thresholds``
        (``"sensitivity_0.97"``, ``"fixed_0.5"``); unknown keys are kept as fixed."""
        match = _ALTERNATIVE.fullmatch(key)
        return "sensitivity" if match and match["kind"] == "sensitivity" else "fixed"

    def __str__(self) -> str:
        """The ``threshold_source`` text of the rule."""
        return "fixed" if self.kind == "fixed" else f"{self.images} sensitivity >= {self.target}"


@dataclass(frozen=True)
class Rates:
    """Sensitivity and specificity with their bootstrap 95 % intervals."""

    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"sensitivity": self.sensitivity, "sensitivity_ci": list(self.sensitivity_ci),
                "specificity": self.specificity, "specificity_ci": list(self.specificity_ci)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rates:
        """Read the JSON form."""
        return cls(float(data["sensitivity"]), _pair(data["sensitivity_ci"]),
                   float(data["specificity"]), _pair(data["specificity_ci"]))


@dataclass(frozen=True)
class SiteFigures:
    """What a labelled calibration measured: at its threshold on the images that chose it
    (``in_sample``, optimistic; with ECE and ROC AUC), and ``cross_validated`` over ``folds``
    patient folds."""

    in_sample: Rates
    ece: float
    roc_auc: float
    folds: int
    cross_validated: Rates

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"in_sample": {**self.in_sample.to_dict(), "ece": self.ece, "roc_auc": self.roc_auc},
                "cross_validated": {"folds": self.folds, **self.cross_validated.to_dict()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteFigures:
        """Read the JSON form."""
        seen, held_out = data["in_sample"], data["cross_validated"]
        return cls(Rates.from_dict(seen), float(seen["ece"]), float(seen["roc_auc"]),
                   int(held_out["folds"]), Rates.from_dict(held_out))


@dataclass(frozen=True)
class LabelledFit:
    """A calibration on labelled images: their count by class, the target sensitivity, their
    pneumonia share (``prior``), the bootstrap's settings and the figures."""

    images: dict[str, int]
    target_sensitivity: float
    prior: float
    bootstrap: dict[str, float]
    figures: SiteFigures

    mode: ClassVar[Literal["labelled"]] = "labelled"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the record's fields of this mode)."""
        return {"mode": self.mode, "images": dict(self.images),
                "target_sensitivity": self.target_sensitivity, "prior": self.prior,
                "bootstrap": dict(self.bootstrap), **self.figures.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelledFit:
        """Read the JSON form."""
        return cls({str(k): int(n) for k, n in data["images"].items()},
                   float(data["target_sensitivity"]), float(data["prior"]),
                   dict(data["bootstrap"]), SiteFigures.from_dict(data))


@dataclass(frozen=True)
class PriorShift:
    """What an unlabelled calibration found: the site's pneumonia share estimated by EM
    (``prior``) from ``prior_before``, the bias shift between them, EM's ``iterations`` and
    whether it ``converged``, and the rule of the threshold it moved (``"sensitivity"``) or
    kept (``"fixed"``)."""

    prior: float
    prior_before: float
    bias_shift: float
    iterations: int
    converged: bool
    threshold_rule: RuleKind

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"prior": self.prior, "prior_before": self.prior_before,
                "bias_shift": self.bias_shift, "iterations": self.iterations,
                "converged": self.converged, "threshold_rule": _MOVED[self.threshold_rule]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriorShift:
        """Read the JSON form."""
        rule = next((kind for kind, text in _MOVED.items() if text == data["threshold_rule"]),
                    None)
        if rule is None:
            raise ValueError(f"threshold_rule {str(data['threshold_rule'])[:80]!r}")
        return cls(float(data["prior"]), float(data["prior_before"]), float(data["bias_shift"]),
                   int(data["iterations"]), bool(data["converged"]), rule)


@dataclass(frozen=True)
class UnlabelledFit:
    """A calibration on unlabelled images: their count, the shift found, and where the share
    the calibration assumed before was read."""

    images: int
    shift: PriorShift
    prior_before_source: str

    mode: ClassVar[Literal["unlabelled"]] = "unlabelled"

    @property
    def prior(self) -> float:
        """The site's estimated pneumonia share."""
        return self.shift.prior

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the record's fields of this mode)."""
        return {"mode": self.mode, "images": self.images, **self.shift.to_dict(),
                "prior_before_source": self.prior_before_source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnlabelledFit:
        """Read the JSON form."""
        return cls(int(data["images"]), PriorShift.from_dict(data),
                   str(data["prior_before_source"]))


@dataclass(frozen=True)
class Origin:
    """What a site model was made from: the file, the SHA-256 of its bytes (as ``sha256sum``
    gives it), its stamped digest (as ``pneumocnn info`` shows it), its calibration and
    threshold."""

    file: str
    sha256: str
    digest: str | None
    temperature: float
    bias: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"file": self.file, "sha256": self.sha256, "digest": self.digest,
                "temperature": self.temperature, "bias": self.bias, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Origin:
        """Read the JSON form."""
        return cls(str(data["file"]), str(data["sha256"]), data.get("digest"),
                   float(data["temperature"]), float(data["bias"]), float(data["threshold"]))


@dataclass(frozen=True)
class SiteRecord:
    """One site calibration of one variant: its ``id`` (shared by the variants calibrated
    together), ``date``, how many site images were ``unreadable``, the ``variant``, its
    ``source`` and what the ``fit`` did."""

    id: str
    date: str
    unreadable: int
    variant: str
    source: Origin
    fit: LabelledFit | UnlabelledFit

    @property
    def mode(self) -> Literal["labelled", "unlabelled"]:
        """``"labelled"`` or ``"unlabelled"``."""
        return self.fit.mode

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the description."""
        return {"id": self.id, "date": self.date, "unreadable": self.unreadable,
                **self.fit.to_dict(), "variant": self.variant, "source": self.source.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, name: str = "the model") -> SiteRecord:
        """Read the JSON form; :class:`~pneumocnn.ModelFileError` naming ``name`` if it is not
        a site record."""
        try:
            mode = data["mode"]
            if mode not in ("labelled", "unlabelled"):
                raise ValueError(f"mode {str(mode)[:40]!r}")
            fit = LabelledFit.from_dict(data) if mode == "labelled" else UnlabelledFit.from_dict(data)
            return cls(str(data["id"]), str(data["date"]), int(data["unreadable"]),
                       str(data["variant"]), Origin.from_dict(data["source"]), fit)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ModelFileError(name, f"its {KEY} record is incomplete or invalid "
                                       f"({type(error).__name__}: {error})") from error

    @classmethod
    def of(cls, description: ModelDescription) -> SiteRecord | None:
        """The record ``description`` holds; None when it holds none."""
        data = description.info.get(KEY)
        name = str(description.info.get("architecture", "the model"))
        return None if data is None else cls.from_dict(data, name)


def recorded_prior(description: ModelDescription) -> float | None:
    """The pneumonia share a previous site calibration recorded in ``description`` (None: none
    recorded); read alone, so that a record from which only the share can be used still
    gives it."""
    data = description.info.get(KEY)
    prior = data.get("prior") if isinstance(data, dict) else None
    return prior if isinstance(prior, float) else None


def _pair(values: Any) -> tuple[float, float]:
    low, high = values
    return float(low), float(high)
