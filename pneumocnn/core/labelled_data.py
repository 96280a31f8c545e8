"""Labelled image folders: index them, read patient ids from file names, split by patient.

Layouts read: ``ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/*`` (the public Kermany download) and
a single ``ROOT/{NORMAL,PNEUMONIA}/*``. Class names come from the folders; a folder named
NORMAL (any case) is the negative class, otherwise the first name in sorted order.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumocnn.core.errors import DatasetError
from pneumocnn.core.inputs import walk_images

SPLIT_NAMES = ("train", "val", "test")
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),  # personN_bacteria_M.jpeg, personN_virus_M.jpeg
    re.compile(r"^(?:NORMAL2-)?(IM-\d+)-"),  # IM-NNNN-MMMM.jpeg, NORMAL2-IM-NNNN-MMMM.jpeg
)


@dataclass(frozen=True)
class LabelledImages:
    """Image files with binary labels: ``labels[i]`` is 1 for ``class_names[1]``."""

    paths: tuple[Path, ...]
    labels: np.ndarray
    class_names: tuple[str, str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> LabelledImages:
        """Return the images at ``indices``, in that order."""
        return LabelledImages(
            tuple(self.paths[i] for i in indices), self.labels[indices], self.class_names
        )

    def counts(self) -> dict[str, int]:
        """Images per class name."""
        return {name: int((self.labels == k).sum()) for k, name in enumerate(self.class_names)}

    def patients(self) -> list[str]:
        """The patient id of each image (see :func:`patient_id`)."""
        return [patient_id(path) for path in self.paths]


def patient_id(path: str | os.PathLike) -> str:
    """Read the patient id from a Kermany file name; other names are their own patient."""
    name = Path(path).name
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return Path(name).stem


def find_splits(root: str | os.PathLike) -> dict[str, LabelledImages]:
    """Index ``root``: ``{"train": ..., "val": ..., "test": ...}`` for the split layout (splits
    that exist), or ``{"train": ...}`` for a plain ``ROOT/{class}/`` folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder does not exist")
    present = [name for name in SPLIT_NAMES if (root / name).is_dir()]
    if not present:
        return {"train": index_folder(root)}
    splits = {name: index_folder(root / name) for name in present}
    names = {split.class_names for split in splits.values()}
    if len(names) > 1:
        raise DatasetError(f"{root}: splits disagree on class folders: {sorted(names)}")
    return splits


def index_folder(folder: str | os.PathLike) -> LabelledImages:
    """Index ``folder/{negative,positive}/*`` into sorted paths and 0/1 labels."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder does not exist")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) != 2:
        raise DatasetError(
            f"{folder}: expected exactly two class folders (e.g. NORMAL and PNEUMONIA), "
            f"found {classes or 'none'}"
        )
    negative = next((c for c in classes if c.upper() == "NORMAL"), classes[0])
    class_names = (negative, next(c for c in classes if c != negative))
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        files = [p for p in walk_images(folder / name) if isinstance(p, Path)]
        if not files:
            raise DatasetError(f"{folder / name}: class folder holds no images")
        paths += files
        labels += [label] * len(files)
    return LabelledImages(tuple(paths), np.array(labels, dtype=np.int64), class_names)


def split_by_patient(
    images: LabelledImages, fraction: float = 0.1, seed: int = 0
) -> tuple[LabelledImages, LabelledImages]:
    """Split into ``(train, validation)`` with about ``fraction`` of each class's images in
    validation and every patient on one side only. Byte-identical files are kept together
    too. The split depends only on the file names, contents and ``seed``."""
    groups = _patient_groups(images)
    rng = np.random.default_rng(seed)
    return _hold_out(images, groups, fraction,
                     lambda label: _shuffled_group_sizes(groups, images.labels, label, rng))


def split_earliest_patients(
    images: LabelledImages, fraction: float = 0.1
) -> tuple[LabelledImages, LabelledImages]:
    """Split into ``(train, validation)`` in acquisition order: validation holds the patients
    with the lowest numbers in their file names, about ``fraction`` of each class's images,
    taken from each file-name series in proportion (the name up to the patient id, with the id's
    digits masked: ``IM-#``, ``NORMAL2-IM-#``, ``person#``). A temporal hold-out where the numbers
    follow acquisition; patients and byte-identical files stay on one side. Raises
    ``DatasetError`` naming a file whose patient id holds no number."""
    groups, patients = _patient_groups(images), images.patients()
    return _hold_out(images, groups, fraction,
                     lambda label: _earliest_group_sizes(images, patients, groups, label))


def _hold_out(images: LabelledImages, groups: list[str], fraction: float,
              ordered: Callable[[int], tuple[dict[str, int], list[str]]],
              ) -> tuple[LabelledImages, LabelledImages]:
    """``(train, validation)``: for each class, the patient groups in the order ``ordered(label)``
    gives (with each group's image count in that class) go to validation until about
    ``fraction`` of the class's images are there."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must lie in (0, 1), got {fraction}")
    chosen: set[str] = set()
    decided: set[str] = set()  # a group with images in both classes is placed once, by class 0
    for label in (0, 1):
        sizes, order = ordered(label)
        target = fraction * sum(sizes.values())
        taken = sum(n for group, n in sizes.items() if group in chosen)
        for group in order:
            if taken >= target:
                break
            if group not in decided:
                chosen.add(group)
                taken += sizes[group]
        decided.update(sizes)
    in_validation = np.array([group in chosen for group in groups], dtype=bool)
    if in_validation.all() or not in_validation.any():
        raise DatasetError("too few patients to split off a validation set")
    return (
        images.subset(np.flatnonzero(~in_validation)),
        images.subset(np.flatnonzero(in_validation)),
    )


def patient_folds(images: LabelledImages, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Assign every image to one of ``folds`` patient-level folds: returns the fold index
    (0 to ``folds - 1``) of each image. Each patient (and each byte-identical file) lies in one
    fold; within each class, patients are dealt in a ``seed``-shuffled order to the fold that
    holds the fewest images of that class, so folds are near-equal in size and class mix."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    groups = _patient_groups(images)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for label in (0, 1):
        sizes, order = _shuffled_group_sizes(groups, images.labels, label, rng)
        filled = np.zeros(folds, dtype=np.int64)
        for group, fold in fold_of.items():  # mixed-class groups already placed
            filled[fold] += sizes.get(group, 0)
        for group in order:
            if group not in fold_of:
                fold_of[group] = int(np.argmin(filled))
                filled[fold_of[group]] += sizes[group]
    assignment = np.array([fold_of[group] for group in groups], dtype=np.int64)
    if len(np.unique(assignment)) < folds:
        raise DatasetError(f"too few patients for {folds} folds")
    return assignment


def _shuffled_group_sizes(groups: list[str], labels: np.ndarray, label: int,
                          rng: np.random.Generator) -> tuple[dict[str, int], list[str]]:
    """Images of class ``label`` per patient group, and those groups in a ``rng``-shuffled
    order (shuffled from sorted, so the order depends only on the names and the seed)."""
    sizes: dict[str, int] = defaultdict(int)
    for i in np.flatnonzero(labels == label):
        sizes[groups[i]] += 1
    order = sorted(sizes)
    rng.shuffle(order)
    return sizes, order


def _earliest_group_sizes(images: LabelledImages, patients: list[str], groups: list[str],
                          label: int) -> tuple[dict[str, int], list[str]]:
    """Images of class ``label`` per patient group, and those groups in acquisition order: by
    their earliest image's rank within its file-name series, as a fraction of the series, so
    that every series gives up its earliest share."""
    series: dict[str, list[tuple[int, str]]] = defaultdict(list)
    sizes: dict[str, int] = defaultdict(int)
    for i in np.flatnonzero(images.labels == label):
        digits = re.findall(r"\d+", patients[i])
        if not digits:
            raise DatasetError(f"{images.paths[i]}: the file name carries no patient number "
                               "to order patients by; use validation='patients'")
        prefix = images.paths[i].name.partition(patients[i])[0]
        series[prefix + re.sub(r"\d+", "#", patients[i])].append((int(digits[-1]), groups[i]))
        sizes[groups[i]] += 1
    place: dict[str, float] = {}
    for members in series.values():
        for rank, (_, group) in enumerate(sorted(members)):
            place[group] = min(place.get(group, 1.0), rank / len(members))
    return sizes, sorted(place, key=lambda group: (place[group], group))


def _patient_groups(images: LabelledImages) -> list[str]:
    """Patient id per image, with patients that share a byte-identical file merged."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.get(key, key) != key:
            key = parent[key]
        return key

    first_patient_of: dict[str, str] = {}
    patients = images.patients()
    for path, patient in zip(images.paths, patients, strict=True):
        try:
            digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        except OSError:  # unreadable files are reported when decoded; here they stay apart
            digest = str(path)
        other = first_patient_of.setdefault(digest, patient)
        a, b = root(patient), root(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [root(p) for p in patients]
