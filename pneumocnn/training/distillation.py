"""Knowledge distillation: train a model to match the mean probability of teacher models.

Each training batch is augmented once; every teacher scores that same augmented batch and the
student learns their mean probability instead of the label ("function matching": Hinton et
al. 2015, Beyer et al. 2022): an attempt to fold an ensemble's ranking into one model of one
model's size and latency (whether it does is for ``studies.robustness`` to say). Teachers
are ``.keras`` files that pneumocnn wrote: their embedded description must declare the
student's preprocessing, so that both see the same input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from pneumocnn.core.durable_files import write_text
from pneumocnn.core.errors import DatasetError
from pneumocnn.core.preprocessing import Preprocessing
from pneumocnn.runtime.backends import KerasBackend, open_backend


def load_teachers(paths: Sequence[str], spec: Preprocessing) -> list[keras.Model]:
    """Load each ``.keras`` teacher as the runtime loads one (safe mode, description checked),
    refusing (``ValueError`` naming the file) one that is no pneumocnn model file or whose
    preprocessing differs from ``spec``, the student's."""
    teachers = []
    for path in map(Path, paths):
        if path.suffix != ".keras":
            raise ValueError(f"{path}: a teacher must be a .keras model file")
        backend, description = open_backend(path)  # ModelFileError names the file
        if description.preprocessing != spec:
            raise ValueError(f"{path}: the teacher's preprocessing "
                             f"{description.preprocessing.to_dict()} differs from the "
                             f"student's {spec.to_dict()}")
        assert isinstance(backend, KerasBackend)  # what a .keras file opens as
        teachers.append(backend.keras_model)
    return teachers


def record_teachers(run_dir: Path, paths: Sequence[str]) -> dict[str, str]:
    """``{path: SHA-256}`` of each teacher file, kept in ``run_dir/teachers.json`` when the run
    starts. A resumed run checks its teachers against that record and raises ``DatasetError``
    naming one whose file changed since: the student would learn from two ensembles."""
    digests = {path: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in paths}
    record = run_dir / "teachers.json"
    if record.exists():
        started = json.loads(record.read_text())
        for path, digest in digests.items():
            if started.get(path) != digest:
                raise DatasetError(f"{path}: this teacher's file changed since {run_dir} started "
                                   f"(SHA-256 {started.get(path)}, now {digest}); restore it or "
                                   "start a new run")
    else:
        write_text(record, json.dumps(digests, indent=1))
    return digests


def with_teacher_targets(dataset: tf.data.Dataset, teachers: Sequence[keras.Model],
                         one_hot: bool) -> tf.data.Dataset:
    """``dataset`` of ``(images, labels)`` batches with each label replaced by the teachers'
    mean positive-class probability on those images (two columns when ``one_hot``)."""

    def targets(images: tf.Tensor, _labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        mean = tf.add_n([_positive(teacher(images, training=False)) for teacher in teachers])
        mean = mean / len(teachers)
        return images, tf.concat([1.0 - mean, mean], axis=1) if one_hot else mean

    return dataset.map(targets, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _positive(outputs: tf.Tensor) -> tf.Tensor:
    """``(B, 1)`` positive-class probabilities from a sigmoid ``(B, 1)`` or softmax ``(B, 2)``."""
    return outputs[:, -1:]
