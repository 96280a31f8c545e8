"""pneumocnn.core.labelled_data and pneumocnn.core.inputs: patient ids, folder indexing,
patient-level splits and finding inputs, on the real data."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from helpers import FULL_DATA, XRAYS, real_images

from pneumocnn.core.errors import DatasetError
from pneumocnn.core.labelled_data import (
    LabelledImages,
    find_splits,
    index_folder,
    patient_folds,
    patient_id,
    split_by_patient,
    split_earliest_patients,
)

CHEST_XRAY = FULL_DATA / "chest_xray"  # the whole data set: tests marked full_data only
TRAIN = CHEST_XRAY / "train"

# the 24 + 24 X-rays shipped in tests/data, and the whole train split (full_data), with the
# image counts and byte-identical groups each holds
TRAIN_SETS = {
    "shipped": dict(folder=XRAYS, counts={"NORMAL": 24, "PNEUMONIA": 24}, duplicates=1),
    "full": dict(folder=TRAIN, counts={"NORMAL": 1341, "PNEUMONIA": 3875}, duplicates=24),
}


def real_xrays(label: str, count: int) -> list[Path]:
    return real_images(label, count)


# ---------------------------------------------------------------------------------------------
# patient ids


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person123_bacteria_4.jpeg", "person123"),
        ("person123_virus_9.jpeg", "person123"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("person1_virus_6.jpeg", "person1"),
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0115-0001-0002.jpeg", "IM-0115"),
        ("NORMAL2-IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0587-0001-0002.jpeg", "IM-0587"),
        ("/data/chest_xray/train/PNEUMONIA/person88_virus_166.jpeg", "person88"),
        ("scan_0001.png", "scan_0001"),  # unknown patterns: each file is its own patient
        ("IM-0115.png", "IM-0115"),
    ],
)
def test_patient_id(name, expected):
    assert patient_id(name) == expected
    assert patient_id(Path(name)) == expected


def test_patient_ids_do_not_merge_different_numbers():
    ids = {patient_id(n) for n in ("person1_virus_6.jpeg", "person12_virus_6.jpeg",
                                  "person123_virus_6.jpeg", "IM-0001-0001.jpeg",
                                  "IM-00012-0001.jpeg")}
    assert len(ids) == 5


def test_every_real_training_file_has_a_kermany_patient_id(train_index):
    patients = train_index.patients()
    for path, patient in zip(train_index.paths, patients, strict=True):
        assert patient.startswith("person" if path.parent.name == "PNEUMONIA" else "IM-"), path
    assert len(set(patients)) < len(patients)  # several images per patient


# ---------------------------------------------------------------------------------------------
# the real training split


@pytest.fixture(scope="module",
                params=["shipped", pytest.param("full", marks=pytest.mark.full_data)])
def train_set(request) -> dict:
    return TRAIN_SETS[request.param]


@pytest.fixture(scope="module")
def train_index(train_set) -> LabelledImages:
    return index_folder(train_set["folder"])


@pytest.fixture(scope="module")
def full_train_index() -> LabelledImages:
    """The whole train split (for tests marked full_data)."""
    return index_folder(TRAIN)


@pytest.fixture(scope="module")
def split_seed0(train_index):
    return split_by_patient(train_index, 0.1, seed=0)


def _sides(split: tuple[LabelledImages, LabelledImages]) -> tuple[set[Path], set[Path]]:
    return set(split[0].paths), set(split[1].paths)


def test_real_train_index(train_index, train_set):
    assert train_index.class_names == ("NORMAL", "PNEUMONIA")
    assert train_index.counts() == train_set["counts"]
    assert list(train_index.paths) == sorted(train_index.paths)
    for path, label in zip(train_index.paths, train_index.labels, strict=True):
        assert path.parent.name == train_index.class_names[label]


def test_split_covers_everything_once(train_index, split_seed0):
    train, validation = split_seed0
    kept, held = _sides(split_seed0)
    assert len(train) + len(validation) == len(train_index)
    assert not kept & held
    assert kept | held == set(train_index.paths)
    for part in split_seed0:
        assert part.class_names == train_index.class_names
        for path, label in zip(part.paths, part.labels, strict=True):
            assert path.parent.name == part.class_names[label]


def test_split_keeps_each_patient_on_one_side(split_seed0):
    train, validation = split_seed0
    assert not set(train.patients()) & set(validation.patients())


@pytest.mark.full_data
@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_split_fraction_per_class(full_train_index, fraction):
    train, validation = split_by_patient(full_train_index, fraction, seed=3)
    for name, total in full_train_index.counts().items():
        assert validation.counts()[name] / total == pytest.approx(fraction, abs=0.015), name
        assert validation.counts()[name] + train.counts()[name] == total


def test_split_is_deterministic_for_a_seed(train_index, split_seed0):
    again = split_by_patient(train_index, 0.1, seed=0)
    assert again[0].paths == split_seed0[0].paths
    assert again[1].paths == split_seed0[1].paths
    np.testing.assert_array_equal(again[1].labels, split_seed0[1].labels)


@pytest.mark.full_data
def test_split_differs_for_another_seed(full_train_index):
    split_seed0 = split_by_patient(full_train_index, 0.1, seed=0)
    other = split_by_patient(full_train_index, 0.1, seed=1)
    held0, held1 = set(split_seed0[1].paths), set(other[1].paths)
    assert held0 != held1
    assert len(held0 & held1) < 0.5 * len(held0)


def test_split_does_not_depend_on_where_the_data_lives(tmp_path, train_set, split_seed0):
    """Only names, contents and seed matter: a copy elsewhere splits the same way."""
    copy = tmp_path / "copy"
    shutil.copytree(train_set["folder"], copy)
    moved = split_by_patient(index_folder(copy), 0.1, seed=0)
    assert [p.name for p in moved[1].paths] == [p.name for p in split_seed0[1].paths]


def test_byte_identical_real_files_stay_on_one_side(train_index, train_set, split_seed0):
    by_digest: dict[str, list[Path]] = defaultdict(list)
    for path in train_index.paths:
        by_digest[hashlib.sha256(path.read_bytes()).hexdigest()].append(path)
    duplicates = [paths for paths in by_digest.values() if len(paths) > 1]
    assert len(duplicates) == train_set["duplicates"]  # as the data READMEs say
    held = set(split_seed0[1].paths)
    for paths in duplicates:
        assert len({path in held for path in paths}) == 1, paths


def test_split_rejects_bad_fractions(train_index):
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            split_by_patient(train_index, fraction)


# ---------------------------------------------------------------------------------------------
# synthetic folders: duplicates across patients and classes


def _write_folder(root: Path, files: dict[str, bytes]) -> LabelledImages:
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    return index_folder(root)


def _synthetic_files() -> dict[str, bytes]:
    files = {}
    for patient in range(1, 31):
        for image in range(1, 3):
            files[f"NORMAL/IM-{patient:04d}-{image:04d}.jpeg"] = f"n{patient}-{image}".encode()
            files[f"PNEUMONIA/person{patient}_virus_{image}.jpeg"] = f"p{patient}-{image}".encode()
    return files


def test_byte_identical_files_of_different_patients_stay_together(tmp_path):
    files = _synthetic_files()
    files["NORMAL/IM-0002-0001.jpeg"] = files["NORMAL/IM-0001-0001.jpeg"]
    files["PNEUMONIA/person9_virus_1.jpeg"] = files["PNEUMONIA/person8_virus_2.jpeg"]
    images = _write_folder(tmp_path, files)
    together = [("IM-0001", "IM-0002"), ("person8", "person9")]
    apart = 0
    for seed in range(30):
        train, validation = split_by_patient(images, 0.2, seed=seed)
        held = set(validation.patients())
        assert not held & set(train.patients())
        for a, b in together:
            assert (a in held) == (b in held), (seed, a, b)
        apart += ("IM-0003" in held) != ("IM-0004" in held)
    assert apart > 0  # unrelated patients do get separated


def test_byte_identical_files_in_both_classes_stay_together(tmp_path):
    """A file filed under both classes (a labelling error) must not straddle the split."""
    files = _synthetic_files()
    files["PNEUMONIA/person5_virus_1.jpeg"] = files["NORMAL/IM-0005-0001.jpeg"]
    images = _write_folder(tmp_path, files)
    pair = [tmp_path / "NORMAL/IM-0005-0001.jpeg", tmp_path / "PNEUMONIA/person5_virus_1.jpeg"]
    for seed in range(40):
        train, validation = split_by_patient(images, 0.2, seed=seed)
        held = set(validation.paths)
        assert (pair[0] in held) == (pair[1] in held), seed
        assert not set(train.patients()) & set(validation.patients()), seed


def test_same_file_name_in_both_classes_is_one_patient_on_one_side(tmp_path):
    """Plain names like 0001.png are read as the patient, even across class folders."""
    files = {}
    for k in range(40):
        files[f"healthy/{k:04d}.png"] = f"h{k}".encode()
        files[f"sick/{k:04d}.png"] = f"s{k}".encode()
    images = _write_folder(tmp_path, files)
    for seed in range(10):
        train, validation = split_by_patient(images, 0.25, seed=seed)
        assert not set(train.patients()) & set(validation.patients()), seed
        assert 0 < len(validation) < len(images)


def test_split_needs_enough_patients(tmp_path):
    images = _write_folder(
        tmp_path, {"NORMAL/IM-0001-0001.jpeg": b"a", "PNEUMONIA/person1_virus_1.jpeg": b"b"}
    )
    with pytest.raises(DatasetError):
        split_by_patient(images, 0.1)


def test_earliest_split_takes_the_first_patients_of_each_series(tmp_path):
    """Two NORMAL series of 20 patients and one PNEUMONIA series of 40: a quarter of each class,
    taken from the lowest numbers of every series in proportion."""
    files = {}
    for k in range(20):
        files[f"NORMAL/IM-{100 + k:04d}-0001.jpeg"] = f"a{k}".encode()
        files[f"NORMAL/NORMAL2-IM-{500 + k:04d}-0001.jpeg"] = f"b{k}".encode()
    for k in range(40):
        files[f"PNEUMONIA/person{k + 1}_{'virus' if k % 2 else 'bacteria'}_{k}.jpeg"] = f"c{k}".encode()
    images = _write_folder(tmp_path, files)
    train, validation = split_earliest_patients(images, 0.25)
    assert sorted(p.name for p in validation.paths) == sorted(
        [f"IM-{100 + k:04d}-0001.jpeg" for k in range(5)]
        + [f"NORMAL2-IM-{500 + k:04d}-0001.jpeg" for k in range(5)]
        + [f"person{k + 1}_{'virus' if k % 2 else 'bacteria'}_{k}.jpeg" for k in range(10)])
    assert len(train) == 60


def test_earliest_split_keeps_patients_and_copies_together(train_index, train_set):
    train, validation = split_earliest_patients(train_index, 0.25)
    assert not set(train.patients()) & set(validation.patients())
    assert len(train) + len(validation) == len(train_index)
    held = set(validation.paths)
    by_digest: dict[str, list[Path]] = defaultdict(list)
    for path in train_index.paths:
        by_digest[hashlib.sha256(path.read_bytes()).hexdigest()].append(path)
    for paths in by_digest.values():
        assert len({path in held for path in paths}) == 1, paths


@pytest.mark.full_data
def test_earliest_split_on_the_whole_train_split(full_train_index):
    train, validation = split_earliest_patients(full_train_index, 0.1)
    for name, total in full_train_index.counts().items():
        assert validation.counts()[name] / total == pytest.approx(0.1, abs=0.015), name
    numbers = {p.name: int(re.findall(r"\d+", patient_id(p))[-1]) for p in full_train_index.paths}
    held_normal2 = [numbers[p.name] for p in validation.paths if p.name.startswith("NORMAL2")]
    kept_normal2 = [numbers[p.name] for p in train.paths if p.name.startswith("NORMAL2")]
    assert held_normal2 and max(held_normal2) < np.median(kept_normal2)


def test_earliest_split_names_a_file_without_a_patient_number(tmp_path):
    images = _write_folder(tmp_path, {"NORMAL/IM-0001-0001.jpeg": b"a", "NORMAL/chest.png": b"b",
                                      "PNEUMONIA/person1_virus_1.jpeg": b"c"})
    with pytest.raises(DatasetError, match="chest.png"):
        split_earliest_patients(images, 0.5)


def test_patient_folds_on_the_real_train_split(train_index):
    folds = patient_folds(train_index, 5, seed=0)
    assert set(folds) == {0, 1, 2, 3, 4}
    fold_of_patient = defaultdict(set)
    for patient, fold in zip(train_index.patients(), folds, strict=True):
        fold_of_patient[patient].add(fold)
    assert all(len(f) == 1 for f in fold_of_patient.values())
    for label in (0, 1):  # each fold holds a fifth of each class, within a few images
        per_fold = np.bincount(folds[train_index.labels == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 10, per_fold
    assert np.array_equal(folds, patient_folds(train_index, 5, seed=0))
    assert not np.array_equal(folds, patient_folds(train_index, 5, seed=1))


def test_patient_folds_keep_byte_identical_files_together(tmp_path):
    files = _synthetic_files()
    files["PNEUMONIA/person5_virus_1.jpeg"] = files["NORMAL/IM-0005-0001.jpeg"]
    images = _write_folder(tmp_path, files)
    index = {path: i for i, path in enumerate(images.paths)}
    for seed in range(20):
        folds = patient_folds(images, 4, seed=seed)
        assert folds[index[tmp_path / "NORMAL/IM-0005-0001.jpeg"]] == \
            folds[index[tmp_path / "PNEUMONIA/person5_virus_1.jpeg"]]


def test_patient_folds_need_two_folds_and_enough_patients(tmp_path):
    images = _write_folder(
        tmp_path, {"NORMAL/IM-0001-0001.jpeg": b"a", "PNEUMONIA/person1_virus_1.jpeg": b"b"}
    )
    with pytest.raises(ValueError, match="at least 2"):
        patient_folds(images, 1)
    with pytest.raises(DatasetError, match="too few patients for 5 folds"):
        patient_folds(images, 5)


# ---------------------------------------------------------------------------------------------
# find_splits and index_folder


@pytest.mark.full_data
def test_find_splits_on_the_split_layout():
    splits = find_splits(CHEST_XRAY)
    assert set(splits) == {"train", "val"}
    assert splits["train"].counts() == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert splits["val"].counts() == {"NORMAL": 8, "PNEUMONIA": 8}
    assert all(path.parent.parent == CHEST_XRAY / "val" for path in splits["val"].paths)


def _copy_real(root: Path, layout: dict[str, int]) -> None:
    for relative, count in layout.items():
        (root / relative).mkdir(parents=True, exist_ok=True)
        label = "NORMAL" if Path(relative).name.upper() in ("NORMAL", "HEALTHY") else "PNEUMONIA"
        for path in real_xrays(label, count):
            shutil.copy(path, root / relative / path.name)


def test_find_splits_on_a_plain_class_folder(tmp_path):
    _copy_real(tmp_path, {"NORMAL": 3, "PNEUMONIA": 4})
    (tmp_path / "NORMAL" / "notes.txt").write_text("not an image")
    (tmp_path / "PNEUMONIA" / "more").mkdir()
    shutil.copy(real_xrays("PNEUMONIA", 5)[4], tmp_path / "PNEUMONIA" / "more" / "EXTRA.JPG")
    splits = find_splits(tmp_path)
    assert set(splits) == {"train"}
    train = splits["train"]
    assert train.class_names == ("NORMAL", "PNEUMONIA")
    assert train.counts() == {"NORMAL": 3, "PNEUMONIA": 5}
    assert tmp_path / "PNEUMONIA" / "more" / "EXTRA.JPG" in train.paths
    assert all(path.suffix != ".txt" for path in train.paths)
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1, 1, 1])


def test_find_splits_on_a_small_split_layout(tmp_path):
    _copy_real(tmp_path, {"train/NORMAL": 3, "train/PNEUMONIA": 3, "test/NORMAL": 2,
                          "test/PNEUMONIA": 1})
    splits = find_splits(tmp_path)
    assert set(splits) == {"train", "test"}
    assert splits["test"].counts() == {"NORMAL": 2, "PNEUMONIA": 1}


@pytest.mark.parametrize(
    ("classes", "negative"),
    [(("healthy", "sick"), "healthy"), (("covid", "normal"), "normal"), (("A", "B"), "A")],
)
def test_negative_class_is_normal_or_first(tmp_path, classes, negative):
    for name in classes:
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"x")
    images = index_folder(tmp_path)
    assert images.class_names[0] == negative
    assert set(images.class_names) == set(classes)


def test_missing_folder(tmp_path):
    missing = tmp_path / "no-such-data"
    for function in (find_splits, index_folder):
        with pytest.raises(DatasetError, match=re.escape(str(missing))):
            function(missing)


def test_class_folder_without_images(tmp_path):
    _copy_real(tmp_path, {"NORMAL": 2})
    (tmp_path / "PNEUMONIA").mkdir()
    (tmp_path / "PNEUMONIA" / "readme.txt").write_text("images go here")
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "PNEUMONIA"))):
        find_splits(tmp_path)


@pytest.mark.parametrize("classes", [("NORMAL", "PNEUMONIA", "COVID"), ("NORMAL",)])
def test_wrong_number_of_class_folders(tmp_path, classes):
    _copy_real(tmp_path, dict.fromkeys(classes, 1))
    with pytest.raises(DatasetError, match="two class folders") as caught:
        find_splits(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_no_class_folders(tmp_path):
    shutil.copy(real_xrays("NORMAL", 1)[0], tmp_path / "loose.jpeg")
    with pytest.raises(DatasetError, match="none"):
        find_splits(tmp_path)


def test_split_missing_a_class_folder_is_named(tmp_path):
    _copy_real(tmp_path, {"train/NORMAL": 1, "train/PNEUMONIA": 1, "val/NORMAL": 1})
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "val"))):
        find_splits(tmp_path)


def test_splits_with_different_class_names(tmp_path):
    _copy_real(tmp_path, {"train/NORMAL": 1, "train/PNEUMONIA": 1, "val/NORMAL": 1,
                          "val/COVID": 1})
    with pytest.raises(DatasetError, match="disagree"):
        find_splits(tmp_path)


# ---------------------------------------------------------------------------------------------
# manifests: lists of inputs, read lazily


def test_text_manifest_relative_paths_comments_blank_lines(tmp_path):
    from pneumocnn.core.inputs import expand_inputs, is_manifest, is_single

    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "archive.TXT"
    manifest.write_bytes("\ufeff# exported from PACS\n\n  a/one.jpeg  \r\n/abs/two.png\n"
                         "#skipped.jpeg\nthree r\u00f6ntgen.dcm\nnot-utf8-\xff.jpeg\n"
                         .encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    assert is_manifest(manifest) and not is_single(manifest) and not is_single(str(manifest))
    folder = str(tmp_path / "lists")
    assert list(expand_inputs(manifest)) == [
        (f"{folder}/a/one.jpeg",) * 2, ("/abs/two.png",) * 2,
        (f"{folder}/three r\u00f6ntgen.dcm",) * 2, (f"{folder}/not-utf8-\udcff.jpeg",) * 2]
    (tmp_path / "scans.txt").mkdir()  # a folder is a folder, whatever its name
    assert not is_manifest(tmp_path / "scans.txt")


def test_csv_manifest_takes_the_path_column(tmp_path):
    from pneumocnn.core.inputs import read_manifest

    manifest = tmp_path / "studies.csv"
    manifest.write_text('patient, Path ,note\nP1,x/1.jpeg,"a, b"\nP2,,empty\nP3,"/y/2,3.png",\n'
                        "P4\n\nP5,#4.jpeg,\n")
    assert list(read_manifest(manifest)) == [f"{tmp_path}/x/1.jpeg", "/y/2,3.png"]


def test_manifests_that_cannot_be_read_are_errors_in_place_of_inputs(tmp_path):
    from pneumocnn.core.errors import InputError
    from pneumocnn.core.inputs import expand_inputs

    no_column = tmp_path / "foreign.csv"
    no_column.write_text("patient,finding\nA,none\n")
    missing = tmp_path / "missing.lst"
    entries = list(expand_inputs([str(missing), no_column]))
    assert [type(item) for item, _ in entries] == [InputError, InputError]
    assert entries[0][1] == str(missing) and "manifest cannot be read" in entries[0][0].reason
    assert "no 'path' column" in entries[1][0].reason


def test_a_manifest_is_read_as_it_is_consumed(tmp_path):
    """A million-line manifest: its first entries come at once, in a few hundred kB."""
    import itertools
    import tracemalloc

    from pneumocnn.core.inputs import expand_inputs

    manifest = tmp_path / "million.txt"
    with manifest.open("w") as stream:
        stream.writelines(f"scans/{index:07d}.jpeg\n" for index in range(1_000_000))
    tracemalloc.start()
    try:
        first = list(itertools.islice(expand_inputs(str(manifest)), 5))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [name for _, name in first] == [f"{tmp_path}/scans/{i:07d}.jpeg" for i in range(5)]
    assert peak < 500_000, peak
