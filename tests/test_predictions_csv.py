"""pneumocnn.runtime.predictions_csv: the CSV of ``predict --csv`` (written a row at a time, resumed by
streaming the rows already in it) and the set of names already done, as 8-byte digests."""

from __future__ import annotations

import csv
import math
import sys
import tracemalloc

from test_cli import cut_last_row, read_csv

from pneumocnn.core.durable_files import resume_rows
from pneumocnn.runtime.model import Prediction
from pneumocnn.runtime.predictions_csv import COLUMNS, NameSet, PredictionsCSV


def test_name_set_membership():
    names = [f"/archive/{index}.dcm" for index in range(1000)] + ["r\udcf6ntgen.jpeg", ""]
    held = NameSet(iter(names))
    assert len(held) == 1002 and all(name in held for name in names)
    assert "/archive/1000.dcm" not in held and None not in held and 3 not in held
    assert len(NameSet(names + names)) == 1002 and "x" not in NameSet([])


def test_names_cost_8_bytes_each():
    names = (f"/archive/2019/study-{index:07d}/image-1.dcm" for index in range(200_000))
    held = NameSet(names)
    assert held._digests.nbytes == 8 * 200_000
    as_strings = {f"/archive/2019/study-{index:07d}/image-1.dcm" for index in range(100_000)}
    per_string = (sys.getsizeof(as_strings) + sum(map(sys.getsizeof, as_strings))) / 100_000
    assert per_string > 80  # what a set of the path strings would cost a name


def test_resume_streams_the_rows_in_flat_memory(tmp_path):
    path = tmp_path / "out.csv"
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, COLUMNS)
        writer.writeheader()
        writer.writerows(Prediction(f"/archive/{index:06d}.jpeg", "NORMAL", 0.25, 0.5).to_dict()
                         for index in range(20_000))
        writer.writerow(Prediction("/archive/broken.jpeg", None, math.nan, 0.5, "unreadable").to_dict())
    cut_last_row(path)  # the last row, cut by a kill
    tracemalloc.start()
    try:
        rows = resume_rows(path, COLUMNS, "test")
        count = sum(1 for _ in rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20_000 and peak < 1_000_000, peak  # a list of the rows: ~12 MB


def test_predictions_csv_resumes_and_appends(tmp_path):
    path = tmp_path / "out.csv"
    with PredictionsCSV(path) as sink:
        sink.write(Prediction("a.jpeg", "NORMAL", 0.25, 0.5))
        sink.write(Prediction("b.jpeg", None, math.nan, 0.5, "not an image"))
        sink.write(Prediction("c.jpeg", "PNEUMONIA", 0.75, 0.5))
    cut_last_row(path)
    with PredictionsCSV(path, resume=True) as sink:
        assert len(sink.done) == 2 and "b.jpeg" in sink.done and "c.jpeg" not in sink.done
        assert sink.failed == 1
        sink.write(Prediction("c.jpeg", "PNEUMONIA", 0.75, 0.5))
    rows = read_csv(path)
    assert [row["source"] for row in rows] == ["a.jpeg", "b.jpeg", "c.jpeg"]
    with PredictionsCSV(path) as sink:  # without resume: a fresh file
        assert len(sink.done) == 0 and sink.failed == 0
    assert read_csv(path) == []
