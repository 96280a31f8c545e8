"""The one resume rule of the CSV files written a row at a time (``core.files.resume_csv``):
a last line that a kill cut short is dropped and cut off, in ``predict --csv --resume`` and in
triage's ``scores.csv`` alike."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from pneumocnn.cli import main
from pneumocnn.core.files import resume_csv

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "xrays").glob("*.jpeg"))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as stream:
        return list(csv.DictReader(stream))


def cut_last_row(path: Path) -> str:
    """Replace the last row of ``path`` by its first half, as a kill mid-write leaves it;
    return the line that was cut."""
    lines = path.read_bytes().splitlines(keepends=True)
    last = lines[-1]
    path.write_bytes(b"".join(lines[:-1]) + last[: len(last) // 2])
    return last.decode()


def test_resume_csv_drops_and_cuts_off_an_unfinished_last_row(tmp_path):
    path = tmp_path / "rows.csv"
    assert resume_csv(path, ["a", "b"], "test") == [] and not path.exists()
    path.write_bytes(b"a,b\n1,2\n3,")
    assert resume_csv(path, ["a", "b"], "test") == [{"a": "1", "b": "2"}]
    assert path.read_bytes() == b"a,b\n1,2\n"
    path.write_bytes(b"a,")  # killed while writing the header
    assert resume_csv(path, ["a", "b"], "test") == [] and path.read_bytes() == b""


def test_resume_csv_refuses_a_foreign_file_and_leaves_it_alone(tmp_path):
    path = tmp_path / "foreign.csv"
    path.write_bytes(b"patient,finding\nA,none\nB,")
    with pytest.raises(ValueError, match="not a test file"):
        resume_csv(path, ["a", "b"], "test")
    assert path.read_bytes() == b"patient,finding\nA,none\nB,"


def test_predict_csv_resume_after_a_row_cut_in_half(tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for path in EXAMPLES[:3]:
        shutil.copy(path, scans / path.name)
    out = tmp_path / "out.csv"
    assert main(["predict", str(scans), "--csv", str(out)]) == 0
    complete = read_csv(out)
    cut = cut_last_row(out)
    assert main(["predict", str(scans), "--csv", str(out), "--resume"]) == 0
    assert "2 input(s) already in" in capsys.readouterr().err
    rows = read_csv(out)
    assert rows[:2] == complete[:2] and len(rows) == 3
    assert sorted(r["source"] for r in rows) == sorted(r["source"] for r in complete)
    assert out.read_bytes().endswith(cut.encode())  # the cut row is written again, whole


def test_triage_resumes_after_a_row_cut_in_half(tmp_path):
    from pneumocnn.runtime.triage import triage

    scans = tmp_path / "scans"
    scans.mkdir()
    for path in EXAMPLES[:3]:
        shutil.copy(path, scans / path.name)
    first = triage(scans, tmp_path / "report", heatmaps=False, progress=lambda d, t: None)
    scores = tmp_path / "report" / "scores.csv"
    complete = read_csv(scores)
    cut_last_row(scores)
    seen = []
    again = triage(scans, tmp_path / "report", heatmaps=False,
                   progress=lambda d, t: seen.append((d, t)))
    assert seen == [(3, 3)]  # only the file whose row was cut is scored again
    rows = read_csv(scores)
    assert rows[:2] == complete[:2] and len(rows) == 3
    assert sorted(r["file"] for r in rows) == sorted(r["file"] for r in complete)
    assert again.rows == first.rows
