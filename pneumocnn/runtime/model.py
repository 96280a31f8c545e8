"""``load`` a self-describing model file and ``predict`` on X-rays; no TensorFlow for ``.tflite``."""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Container, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from pneumocnn.core.errors import InputError, ModelFileError, NotFrontalChestError, PneumocnnError
from pneumocnn.core.inputs import expand_inputs, is_single
from pneumocnn.core.modelfile import ModelDescription
from pneumocnn.core.preprocessing import ImageInput, load_pixels, source_name
from pneumocnn.runtime.backends import Backend, open_backend
from pneumocnn.runtime.variants import VariantChoice, open_variant

# the fields of a Prediction that its dict, JSON line and CSV row hold
RECORD_FIELDS = ("source", "label", "probability", "threshold", "error")


@dataclass(frozen=True)
class Prediction:
    """One answer: ``label`` is the positive label when ``probability >= threshold``.

    When the input could not be used, ``label`` is ``None``, ``probability`` is NaN and
    ``error`` says why (only in results of many inputs; a single input raises instead). So too
    when the input guard held it back: then ``error`` begins ``not a frontal chest X-ray: ``
    and ``flagged`` is true.
    """

    source: str
    label: str | None
    probability: float
    threshold: float
    error: str | None = None
    # True when the input guard held the input back: its DICOM tags say it is not a frontal
    # chest X-ray (see :mod:`pneumocnn.core.guard`); set where that error becomes a result
    flagged: bool = field(default=False, kw_only=True)

    @property
    def ok(self) -> bool:
        """True when the input was scored."""
        return self.error is None

    def to_dict(self) -> dict:
        """A plain dict of :data:`RECORD_FIELDS`, for JSON and CSV: a probability that is not a
        number (an input not scored) is ``None``, so that JSON holds ``null``, never ``NaN``."""
        fields = {name: getattr(self, name) for name in RECORD_FIELDS}
        if not math.isfinite(self.probability):
            fields["probability"] = None
        return fields

    @classmethod
    def failed(cls, source: str, threshold: float, error: Exception) -> Prediction:
        """The result for an input that could not be scored because of ``error``: a pneumocnn
        error gives its reason, any other its type and message; ``flagged`` when it is the
        input guard's :class:`~pneumocnn.NotFrontalChestError`."""
        reason = (getattr(error, "reason", str(error)) if isinstance(error, PneumocnnError)
                  else f"{type(error).__name__}: {error}")
        return cls(source, None, math.nan, threshold, reason,
                   flagged=isinstance(error, NotFrontalChestError))

    def __str__(self) -> str:
        if not self.ok:
            return f"{self.source}: error: {self.error}"
        return (f"{self.source}: {self.label} (probability {self.probability:.3f}, "
                f"threshold {self.threshold:.3f})")


class Model:
    """A loaded model: its description, and ``predict`` for one or many inputs.

    ``path`` is the model file; ``variant`` says, when it was chosen among the variants of a
    model folder, which one and why (``None`` when a file was loaded directly)."""

    def __init__(self, backend: Backend, description: ModelDescription, path: str,
                 variant: VariantChoice | None = None) -> None:
        self._backend = backend
        self.description = description
        self.path = path
        self.variant = variant

    @property
    def backend(self) -> Backend:
        """The runtime that runs the model file, seen through the
        :class:`~pneumocnn.runtime.backends.Backend` protocol (and, for a ``.keras`` file,
        :class:`~pneumocnn.runtime.backends.ClassActivationBackend`)."""
        return self._backend

    @property
    def labels(self) -> tuple[str, str]:
        """``(negative, positive)`` class names."""
        return self.description.labels

    @property
    def threshold(self) -> float:
        """The decision threshold stored in the model file."""
        return self.description.threshold

    def __repr__(self) -> str:
        info = self.description.info
        chosen = f", variant: {self.variant}" if self.variant else ""
        return (f"Model({self.path!r}, {info.get('architecture', '?')}, "
                f"{info.get('quantization', 'keras')}, threshold={self.threshold:.4f}{chosen})")

    def uncalibrated(self) -> Model:
        """This model answering with its raw output, before the description's temperature and
        bias (on the same interpreter, through the same ``predict`` path); what a calibration
        is fitted on."""
        raw = replace(self.description, temperature=1.0, bias=0.0)
        return Model(self._backend, raw, self.path, self.variant)

    def predict(
        self, inputs: ImageInput | Iterable[ImageInput], threshold: float | None = None, *,
        guard: bool = True,
    ) -> Prediction | list[Prediction]:
        """Score one input (a path, bytes, binary file, PIL image or array) or many (a folder,
        or a list or iterable of inputs).

        One input returns a :class:`Prediction` and raises :class:`~pneumocnn.InputError` if it
        cannot be read; many return a list in input order, where unreadable inputs carry an
        ``error`` instead of a label. ``threshold`` overrides the model's for this call.
        With ``guard`` (the default), a DICOM file whose tags say it is not a frontal chest
        X-ray is not scored: one input raises :class:`~pneumocnn.NotFrontalChestError`, among
        many it gets a ``flagged`` result; ``guard=False`` scores it all the same.
        """
        if is_single(inputs):
            source = source_name(inputs)
            return self._score(inputs, source, threshold, guard)
        return list(self.predict_iter(inputs, threshold, guard=guard))

    def predict_iter(
        self, inputs: ImageInput | Iterable[ImageInput], threshold: float | None = None,
        *, skip: Container[str] = (), guard: bool = True,
    ) -> Generator[Prediction, None, None]:
        """Like :meth:`predict` on many inputs, yielding each result in input order as soon as
        it is ready. Inputs are decoded on a few threads ahead of the one being yielded; inputs
        are listed as they are needed (a folder or manifest is never held whole). Inputs whose
        name is in ``skip`` (those already scored, say) are left out."""
        cutoff = self._threshold(threshold)
        workers = os.cpu_count() or 1
        with ThreadPoolExecutor(workers) as pool:
            pending: deque[Future[Prediction]] = deque()
            for index, (item, source) in enumerate(expand_inputs(inputs)):
                if source in skip:
                    continue
                pending.append(pool.submit(self._score_or_error, item,
                                           source or f"inputs[{index}]", cutoff, guard))
                if len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Calibrated positive-class probabilities, float64 ``(N,)``, of a batch of uint8
        pixels ``(N, H, W)`` as :func:`~pneumocnn.core.preprocessing.load_pixels` gives them
        with this model's ``description.preprocessing`` (the path ``predict`` takes)."""
        spec = self.description.preprocessing
        if pixels.dtype != np.uint8 or pixels.shape[1:] != (spec.height, spec.width):
            raise ValueError(f"probabilities takes uint8 pixels (N, {spec.height}, {spec.width}) "
                             f"as load_pixels gives them, got {pixels.dtype} {pixels.shape}")
        return self.description.calibrate(self._backend.probabilities(pixels))

    def _score_or_error(self, item: ImageInput | InputError, source: str, threshold: float,
                        guard: bool) -> Prediction:
        try:
            if isinstance(item, InputError):  # a folder that could not be listed
                raise item
            return self._score(item, source, threshold, guard)
        except PneumocnnError as error:
            return Prediction.failed(source, threshold, error)

    def predict_pixels(self, pixels: np.ndarray, source: str,
                       threshold: float | None = None) -> Prediction:
        """Score one input's uint8 pixels ``(H, W)`` as
        :func:`~pneumocnn.core.preprocessing.load_pixels` made them for this model (resized and
        normalised already, so not normalised again, as :meth:`predict` of an array would),
        under the name ``source``: the answer :meth:`predict` gives for that input."""
        probability = float(self.probabilities(pixels[np.newaxis])[0])
        cutoff = self._threshold(threshold)
        label = self.labels[1] if probability >= cutoff else self.labels[0]
        return Prediction(source, label, probability, cutoff)

    def _score(self, item: ImageInput, source: str, threshold: float | None,
               guard: bool) -> Prediction:
        pixels = load_pixels(item, self.description.preprocessing, source, guard=guard)
        return self.predict_pixels(pixels, source, threshold)

    def _threshold(self, threshold: float | None) -> float:
        return self.threshold if threshold is None else check_threshold(threshold)


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float; ``ValueError`` unless it lies in [0, 1]."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    return float(threshold)


def load(path: str | os.PathLike | None = None, *, threads: int | None = None,
         variant: str | None = None) -> Model:
    """Load a model file (``.tflite``, or ``.keras`` with TensorFlow installed) or a folder of
    variants of one model (``.tflite`` files that differ in quantization, as the bundled models
    and a ``pneumocnn train`` run folder are); with no path, the models bundled with pneumocnn.

    From a folder, the variant that answers fastest on this CPU is loaded (timed once, then
    remembered; see :mod:`pneumocnn.runtime.variants`), or ``variant`` (``"int8"``,
    ``"float16"``, ...) when given; ``Model.variant`` says which and why. ``threads`` sets the
    interpreter's CPU threads (default: all cores)."""
    path = bundled_models() if path is None else Path(path)
    backend: Backend
    if path.is_dir():
        backend, description, file, choice = open_variant(path, threads, variant)
        return Model(backend, description, str(file), choice)
    backend, description = open_backend(path, threads)
    own = description.info.get("quantization", "keras")
    if variant is not None and variant != own:
        raise ValueError(f"{path} is the {own} variant, not {variant!r}; pass its folder to "
                         f"choose among variants")
    return Model(backend, description, str(path))


def bundled_models() -> Path:
    """The folder of the models bundled with pneumocnn (what ``load()`` loads)."""
    path = Path(str(resources.files("pneumocnn") / "models"))
    if not any(path.glob("*.tflite")):
        raise ModelFileError(str(path), "the bundled models are missing from this install")
    return path


_default: Model | None = None


def predict(
    inputs: ImageInput | Iterable[ImageInput], threshold: float | None = None, *,
    guard: bool = True,
) -> Prediction | list[Prediction]:
    """Score inputs with the bundled model (loaded once); see :meth:`Model.predict`."""
    global _default
    if _default is None:
        _default = load()
    return _default.predict(inputs, threshold, guard=guard)

