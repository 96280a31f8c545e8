"""``python -m studies.study``: the accuracy study — every configuration tried, on
patient-level folds of the training data, with the seed's own ablation beside the report's
figures.

Each (configuration, fold) is an ordinary training run in ``RUNS/<name>/fold-<k>`` (checkpointed
every epoch, so an interrupted study resumes where it stopped). A finished run is scored on its
validation fold — as trained, and under simulated acquisition shifts (:mod:`studies.shifts`)
— and on the official 16-image ``val`` folder; the scores go to ``scores.json`` in the run
folder. The table over all runs is written to ``studies/results/study/results.{md,json}``.

    python -m studies.study                       # train what is missing, then tabulate
    python -m studies.study --only small-bn-eq --folds 0 1 2 3 4
    python -m studies.study --report              # score finished runs, tabulate; no training
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import REPO, SHARED_DATA  # noqa: E402
from pneumocnn.core.durable_files import write_text  # noqa: E402
from pneumocnn.training.trainer import train  # noqa: E402
from studies import RESULTS  # noqa: E402
from studies.shifts import score_model  # noqa: E402
from studies.study_report import write_report  # noqa: E402

log = logging.getLogger(__name__)

FOLDS = 5
SCREEN_EPOCHS = 15
SEED_ABLATION_EPOCHS = 10


@dataclass(frozen=True)
class Configuration:
    """One line of the study: a name, the group it belongs to and its training settings, as
    changes to the seed report's recipe (``recipe="seed"``), so that they do not move when
    pneumocnn's defaults do."""

    name: str
    group: str
    settings: dict = field(default_factory=dict)
    note: str = ""
    # Trained exactly as this other configuration, differing only in how the model is exported:
    # the run starts from a copy of that run's checkpoints instead of training again.
    derived_from: str | None = None


_SEED = {"architecture": "seed-to-be", "epochs": SEED_ABLATION_EPOCHS}
_MODERN = {"architecture": "small-bn", "augmentation": "shift", "keep_best": True,
           "epochs": SCREEN_EPOCHS}

CONFIGURATIONS = [
    # The seed's ablation (SEED.md), on the same folds and schedule, last epoch exported.
    Configuration("seed-to-be", "seed ablation", {**_SEED},
                  "TO-BE: sigmoid + binary CE, Adam, shear/zoom/flip augmentation"),
    Configuration("seed-as-is", "seed ablation", {**_SEED, "architecture": "seed-as-is"},
                  "AS-IS: 3 conv blocks, softmax + categorical CE, RMSprop"),
    Configuration("seed-softmax-cce", "seed ablation",
                  {**_SEED, "output": "softmax", "loss": "categorical_crossentropy"},
                  "TO-BE with softmax + categorical CE"),
    Configuration("seed-softmax-bce", "seed ablation",
                  {**_SEED, "output": "softmax", "loss": "binary_crossentropy"},
                  "TO-BE with softmax + binary CE"),
    Configuration("seed-rmsprop", "seed ablation", {**_SEED, "optimizer": "rmsprop"},
                  "TO-BE with RMSprop"),
    Configuration("seed-no-augment", "seed ablation", {**_SEED, "augment": False},
                  "TO-BE without augmentation"),
    Configuration("seed-1-channel", "input", {**_SEED, "channels": 1},
                  "TO-BE on one gray channel instead of three equal ones"),
    # Towards a model that holds up under acquisition shift.
    Configuration("small-bn", "robustness", {**_MODERN},
                  "small-bn (batch norm, global average pooling), shift augmentation, "
                  "lowest-validation-loss epoch"),
    Configuration("small-bn-eq", "robustness", {**_MODERN, "normalize": "equalize"},
                  "small-bn + histogram equalisation"),
    Configuration("small-bn-balanced", "robustness", {**_MODERN, "class_weight": "balanced"},
                  "small-bn + balanced class weights"),
    Configuration("small-bn-eq-balanced", "robustness",
                  {**_MODERN, "normalize": "equalize", "class_weight": "balanced"},
                  "small-bn + equalisation + balanced class weights"),
    Configuration("small-bn-eq-zoom", "robustness",
                  {**_MODERN, "normalize": "equalize", "augmentation": "shift-zoom"},
                  "small-bn + equalisation, zoom augmentation widened to 0.7-1.3"),
    Configuration("small-bn-eq-zoom-cosine", "robustness",
                  {**_MODERN, "normalize": "equalize", "augmentation": "shift-zoom",
                   "schedule": "cosine"},
                  "small-bn-eq-zoom with the learning rate decayed to 0 along a cosine"),
    Configuration("seed-to-be-eq-zoom-cosine", "robustness",
                  {**_MODERN, "architecture": "seed-to-be", "normalize": "equalize",
                   "augmentation": "shift-zoom", "schedule": "cosine"},
                  "the seed's TO-BE CNN (no batch norm) with small-bn-eq-zoom-cosine's recipe"),
    Configuration("small-bn-eq-zoom-cosine-last-bn", "robustness",
                  {**_MODERN, "normalize": "equalize", "augmentation": "shift-zoom",
                   "schedule": "cosine", "keep_best": False, "recalibrate_batchnorm": True},
                  "small-bn-eq-zoom-cosine exporting its last epoch, with batch-norm statistics "
                  "re-estimated on un-augmented training images",
                  derived_from="small-bn-eq-zoom-cosine"),
    Configuration("small-bn-autocontrast", "robustness", {**_MODERN, "normalize": "autocontrast"},
                  "small-bn + 1-99 % autocontrast"),
    Configuration("small-bn-flip", "robustness", {**_MODERN, "augmentation": "shift-flip"},
                  "small-bn, shift augmentation plus horizontal flip"),
    Configuration("small-bn-224", "input", {**_MODERN, "input_size": 224},
                  "small-bn at 224 px"),
    Configuration("seed-to-be-shift", "robustness",
                  {**_MODERN, "architecture": "seed-to-be"},
                  "the seed's TO-BE CNN with shift augmentation, lowest-validation-loss epoch"),
]
BY_NAME = {c.name: c for c in CONFIGURATIONS}
# The configuration that became pneumocnn's default recipe (TrainingConfig's defaults).
CHOSEN = "small-bn-eq-zoom-cosine-last-bn"


def run_dir(runs: Path, name: str, fold: int) -> Path:
    """Where the run of configuration ``name`` on ``fold`` lives."""
    return runs / name / f"fold-{fold}"


def study_settings(configuration: Configuration, fold: int) -> dict:
    """The settings of one study run over the seed recipe: every run validates on a patient
    fold and sets its threshold there for sensitivity >= 0.97."""
    return {"fold": fold, "folds": FOLDS, "threshold": "sensitivity", "target_sensitivity": 0.97,
            **configuration.settings}


def train_missing(configuration: Configuration, folds: list[int], runs: Path, data: Path) -> None:
    """Train (or resume) every fold of ``configuration`` that has no scores yet, then score it."""
    for fold in folds:
        folder = run_dir(runs, configuration.name, fold)
        if (folder / "scores.json").exists():
            continue
        if configuration.derived_from and not (folder / "config.json").exists():
            _copy_training(run_dir(runs, configuration.derived_from, fold), folder)
        if not (folder / "metrics.json").exists():
            started = time.monotonic()
            log.info("training %s fold %d in %s", configuration.name, fold, folder)
            train(data, folder, recipe="seed", resume=(folder / "config.json").exists(),
                  verbose=2, **study_settings(configuration, fold))
            log.info("trained %s fold %d in %.0f s", configuration.name, fold,
                     time.monotonic() - started)
        score_run(folder, data)


def _copy_training(source: Path, folder: Path) -> None:
    """Start ``folder`` from the finished training in ``source``: its decoded-image cache and
    its checkpoints, so that resuming ``folder`` trains no epoch and only exports."""
    if not (source / "metrics.json").exists():
        raise RuntimeError(f"{source} has not finished; run its configuration first")
    (folder / "checkpoints").mkdir(parents=True)
    for path in (source / "checkpoints").glob("*"):
        if path.name != "best.keras":
            shutil.copy2(path, folder / "checkpoints" / path.name)
    shutil.copytree(source / "cache", folder / "cache")


def score_run(folder: Path, data: Path) -> dict:
    """Score a finished run's int8 model; write and return ``scores.json``."""
    scores = score_model(folder, data)
    write_text(folder / "scores.json", json.dumps(scores, indent=1))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.study", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "chest_xray")
    parser.add_argument("--runs", type=Path, default=REPO.parent / "runs" / "study",
                        help="folder of the study's training runs (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=sorted(BY_NAME), help="configurations to run")
    parser.add_argument("--folds", nargs="+", type=int, default=[0],
                        help=f"folds to run, of {FOLDS} (default: 0, the screening fold)")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: score the finished runs that have no scores.json, "
                        "then tabulate")
    parser.add_argument("--out", type=Path, default=RESULTS / "study")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.report:
        for metrics in sorted(args.runs.glob("*/fold-*/metrics.json")):
            if not (metrics.parent / "scores.json").exists():
                score_run(metrics.parent, args.data)
    else:
        for configuration in [BY_NAME[n] for n in args.only] if args.only else CONFIGURATIONS:
            train_missing(configuration, args.folds, args.runs, args.data)
    write_report(CONFIGURATIONS, args.runs, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
