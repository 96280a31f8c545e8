"""Choose, among the variants of one model in a folder, the one that runs fastest on this CPU.

A model folder (the bundled models, or a run folder of ``pneumocnn train``) may hold the same
model as several ``.tflite`` files that differ only in quantization. Which one is fastest
depends on the CPU: int8 convolutions beat float32 by 2-3x where the CPU has int8 dot-product
instructions (AVX-512 VNNI, AVX-VNNI, ARM dotprod) and lose to it without them. Rather than keep
a table of CPUs, :func:`open_variant` times each candidate here, in interleaved rounds through
the same path ``predict`` takes, and remembers the choice in a small cache file keyed by the
candidates' bytes, the CPU, the thread count and the runtime's version, so that later loads on
this machine open one file only. The cache lives in ``PNEUMOCNN_CACHE_DIR`` when set, else in
the user's cache folder; a cache that cannot be read or written only costs the timing again.

A variant that cannot run correctly here is refused and the next one used: opening a file runs
its known answers (see :class:`~pneumocnn.core.modelfile.KnownAnswers`), and a file whose answers
are off, or that LiteRT cannot load or run, is left out of the choice with a warning that says
why; the choice's reason says so too. Only a variant asked for by name, or the only one, is
refused with an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pneumocnn.core.durable_files import write_text
from pneumocnn.core.errors import ModelFileError
from pneumocnn.core.modelfile import ModelDescription
from pneumocnn.runtime.backends import TFLiteBackend, read_tflite_file, runtime_version

log = logging.getLogger(__name__)

# Candidates within this fraction of the fastest count as equally fast; the smallest file of
# those is chosen (timings on a busy machine vary by a few percent from round to round).
TIE = 0.05
ROUNDS = 7
CALLS_PER_ROUND = 4
RETIMINGS = 2  # times again when a timing's two halves disagree (see _fastest)
_CACHE_FILE = "variants.json"
_CACHE_ENTRIES = 64


@dataclass(frozen=True)
class VariantChoice:
    """Which variant of a model folder was loaded, and why.

    ``variant`` is the chosen file's quantization (``"int8"``, ``"float16"``, ...),
    ``candidates`` every variant the folder offers, ``timings_ms`` the median time of one answer
    of each as measured on this machine (empty when not timed), ``refused`` why each variant
    left out of the choice was (it failed its known-answer check, or could not run here),
    ``reason`` a sentence."""

    variant: str
    candidates: tuple[str, ...]
    reason: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.variant} ({self.reason})"


def open_variant(folder: Path, threads: int | None, variant: str | None
                 ) -> tuple[TFLiteBackend, ModelDescription, Path, VariantChoice]:
    """Open the fastest (or the asked-for) variant among the ``.tflite`` files of ``folder``.

    Returns the backend, its description, the chosen file and the :class:`VariantChoice`.
    Raises :class:`~pneumocnn.ModelFileError` when the folder holds no ``.tflite`` file or
    files of different models, or when no variant passes its known-answer check here (nor the
    one asked for), and ``ValueError`` when ``variant`` is not among them."""
    candidates = _candidates(folder)
    names = tuple(candidates)
    choice: VariantChoice | None
    if variant is not None:
        if variant not in candidates:
            raise ValueError(f"{folder} has no {variant!r} variant; it has {', '.join(names)}")
        choice = VariantChoice(variant, names, f"asked for: variant={variant!r}")
        return _opened(candidates[variant], threads, choice)
    if len(names) == 1:
        return _opened(candidates[names[0]], threads, VariantChoice(names[0], names, "the only variant"))
    key = _cache_key(candidates, threads)
    refused: dict[str, str] = {}
    remembered = _remembered(key, names)
    if remembered is not None:
        try:
            return _opened(candidates[remembered.variant], threads, remembered)
        except ModelFileError as error:
            refused[remembered.variant] = _refuse(remembered.variant, error)
    opened = {}
    for name, candidate in candidates.items():
        if name not in refused:
            try:
                opened[name] = candidate.open(threads)
            except ModelFileError as error:
                refused[name] = _refuse(name, error)
    if not opened:
        raise ModelFileError(str(folder), "no variant can run on this CPU: " + "; ".join(
            f"{name}: {why}" for name, why in refused.items()))
    choice = _fastest(opened, candidates, names, refused)
    _remember(key, choice)
    chosen = candidates[choice.variant]
    return opened[choice.variant], chosen.description, chosen.path, choice


def _opened(candidate: _Candidate, threads: int | None, choice: VariantChoice
            ) -> tuple[TFLiteBackend, ModelDescription, Path, VariantChoice]:
    return candidate.open(threads), candidate.description, candidate.path, choice


def _refuse(name: str, error: ModelFileError) -> str:
    """Warn that variant ``name`` is left out because of ``error``; return the reason."""
    log.warning("%s; the %s variant is left out and the next one used", error, name)
    return error.reason


def variant_files(folder: Path) -> dict[str, Path]:
    """The ``.tflite`` files of a model folder by variant name (``"int8"``, ``"float16"``, ...),
    checked to be variants of one model as :func:`open_variant` checks them; nothing is timed."""
    return {name: candidate.path for name, candidate in _candidates(folder).items()}


@dataclass(frozen=True)
class _Candidate:
    path: Path
    content: bytes
    description: ModelDescription

    def open(self, threads: int | None) -> TFLiteBackend:
        return TFLiteBackend(self.content, self.description, str(self.path), threads)


def _candidates(folder: Path) -> dict[str, _Candidate]:
    """The ``.tflite`` files of ``folder`` by quantization; they must describe one model (see
    :func:`_model_of`)."""
    found: dict[str, _Candidate] = {}
    for path in sorted(folder.glob("*.tflite")):
        candidate = _Candidate(path, *read_tflite_file(path))
        name = candidate.description.info.get("quantization") or path.stem
        if name in found:
            raise ModelFileError(str(folder), f"holds two {name} models: "
                                              f"{found[name].path.name} and {path.name}")
        first = next(iter(found.values()), candidate)
        if _model_of(candidate.description) != _model_of(first.description):
            raise ModelFileError(str(folder), f"holds files of different models: {path.name} "
                                              f"differs from {first.path.name} (labels, "
                                              f"preprocessing, threshold, calibration or site "
                                              f"calibration)")
        found[name] = candidate
    if not found:
        raise ModelFileError(str(folder), "holds no .tflite model file")
    return found


def _model_of(description: ModelDescription) -> tuple:
    """What variants of one model share: labels, preprocessing, threshold and calibration; or,
    for files calibrated to a site together (each variant on its own outputs, see
    :mod:`pneumocnn.clinic.site_calibration`), labels, preprocessing and that calibration's id."""
    site = description.info.get("site_calibration")
    if isinstance(site, dict) and "id" in site:
        return description.labels, description.preprocessing, site["id"]
    return (description.labels, description.preprocessing, description.threshold,
            description.temperature, description.bias)


def _fastest(opened: dict[str, TFLiteBackend], candidates: dict[str, _Candidate],
             names: tuple[str, ...], refused: dict[str, str]) -> VariantChoice:
    """Time every opened variant: the fastest wins, the smallest file among near ties. When the
    first and the second half of the rounds choose differently (a busy CPU), the variants are
    timed again, up to ``RETIMINGS`` times, and the choice is made on all the rounds; if the
    last timing is still unsteady, the reason says so. The choice is remembered all the same, so
    that the same command keeps giving the same answers on this machine (delete the cache file,
    or pass ``variant=``, to choose again).
    A single variant left (the others ``refused``) is chosen untimed."""
    if len(opened) == 1:
        only = next(iter(opened))
        return VariantChoice(only, names, f"the only variant that runs here{_refused_text(refused)}",
                             refused=dict(refused))
    spec = next(iter(candidates.values())).description.preprocessing
    sizes = {name: len(candidates[name].content) for name in opened}
    samples: dict[str, list[float]] = {name: [] for name in opened}
    for _ in range(1 + RETIMINGS):
        timed = _time(opened, spec.height, spec.width)
        for name, ms in timed.items():
            samples[name] += ms
        steady = _steady(timed, sizes)
        if steady:
            break
    timings = {name: _median(ms) for name, ms in samples.items()}
    chosen = _winner(timings, sizes)
    reason = f"fastest here, timed at load: {_timings_text(timings)}"
    if not steady:
        reason += "; the timings were unsteady (a busy CPU?)"
    return VariantChoice(chosen, names, reason + _refused_text(refused), timings, dict(refused))


def _steady(samples: dict[str, list[float]], sizes: dict[str, int]) -> bool:
    """Whether the first and the second half of one timing's rounds choose the same variant."""
    half = ROUNDS * CALLS_PER_ROUND // 2
    halves = {_winner({name: _median(ms[part]) for name, ms in samples.items()}, sizes)
              for part in (slice(None, half), slice(half, None))}
    return len(halves) == 1


def _refused_text(refused: dict[str, str]) -> str:
    return "".join(f"; {name} left out: {why}" for name, why in refused.items())


def _winner(timings: dict[str, float], sizes: dict[str, int]) -> str:
    fastest = min(timings.values())
    tied = [name for name in timings if timings[name] <= fastest * (1 + TIE)]
    return min(tied, key=sizes.__getitem__)


def _median(ms: list[float]) -> float:
    return round(float(np.median(ms)), 3)


def _remembered(key: str, names: tuple[str, ...]) -> VariantChoice | None:
    entry = _read_cache().get(key)
    if not isinstance(entry, dict) or entry.get("variant") not in names:
        return None
    try:
        timings = {str(name): float(ms) for name, ms in entry.get("timings_ms", {}).items()}
        refused = {str(name): str(why) for name, why in entry.get("refused", {}).items()}
    except (AttributeError, TypeError, ValueError):  # an entry damaged or edited by hand
        return None
    found = (f"fastest here when timed on {entry.get('measured', '?')}: {_timings_text(timings)}"
             if timings else f"the only variant that ran here on {entry.get('measured', '?')}")
    return VariantChoice(entry["variant"], names, found + _refused_text(refused), timings, refused)


def _time(opened: dict[str, TFLiteBackend], height: int, width: int) -> dict[str, list[float]]:
    """Milliseconds of each answer of each backend, on the same pixels, in interleaved rounds
    after one warm-up round, in the order taken."""
    samples: dict[str, list[float]] = {name: [] for name in opened}
    pixels = np.random.default_rng(0).integers(0, 256, (1, height, width), np.uint8)
    for round_ in range(ROUNDS + 1):
        for name, backend in opened.items():
            for _ in range(CALLS_PER_ROUND):
                start = time.perf_counter()
                backend.probabilities(pixels)
                if round_:
                    samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def _timings_text(timings: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(timings.items(),
                                                                  key=lambda item: item[1]))


def _cache_key(candidates: dict[str, _Candidate], threads: int | None) -> str:
    """What the choice depends on: the files, the CPU, the thread count, the runtime."""
    digest = hashlib.sha256()
    for name in sorted(candidates):
        candidate = candidates[name]
        # a stamped file's digest was checked against its bytes when it was read: reuse it
        own = candidate.description.sha256 or hashlib.sha256(candidate.content).hexdigest()
        digest.update(f"{name} {own}\n".encode())
    parts = [digest.hexdigest(), _cpu(), str(threads or os.cpu_count()), runtime_version()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _cpu() -> str:
    """The CPU's model name and instruction-set flags, as exactly as the system tells them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def cache_path() -> Path:
    """The file where choices are remembered (``PNEUMOCNN_CACHE_DIR`` or the user's cache
    folder, ``variants.json``)."""
    folder = os.environ.get("PNEUMOCNN_CACHE_DIR")
    if not folder:
        from platformdirs import user_cache_dir

        folder = user_cache_dir("pneumocnn", appauthor=False)
    return Path(folder) / _CACHE_FILE


def _read_cache() -> dict:
    try:
        entries = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _remember(key: str, choice: VariantChoice) -> None:
    entries = _read_cache()
    entries.pop(key, None)
    entries[key] = {"variant": choice.variant, "timings_ms": choice.timings_ms,
                    "refused": choice.refused,
                    "measured": datetime.now(timezone.utc).date().isoformat()}
    kept = dict(list(entries.items())[-_CACHE_ENTRIES:])  # the newest
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(kept, indent=1))
    except OSError as error:
        log.debug("cannot remember the variant choice in %s: %s", path, error)
