"""The triage worklist: score a folder, most likely pneumonia first, as CSV and an HTML page.

``triage(folder, out)`` writes into ``out``:

- ``scores.csv``: one row per file, appended as each is scored (a rerun skips files already in
  it, so an interrupted run resumes where it stopped); its cells, as those of ``worklist.csv``,
  never start a spreadsheet formula (:mod:`pneumocnn.core.csv_cells`);
- ``images/``: for each scored file a thumbnail and an occlusion heatmap overlay (PNG);
- ``worklist.csv``: the scored files sorted by probability, highest first, then the failures;
- ``report.html``: one self-contained page (images inlined) with the same order.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pneumocnn._version import __version__
from pneumocnn.core.csv_cells import neutral, neutral_row
from pneumocnn.core.dicom import IDENTIFIERS
from pneumocnn.core.durable_files import atomic_write, resume_csv, write_text
from pneumocnn.core.errors import PneumocnnError
from pneumocnn.core.inputs import expand_inputs
from pneumocnn.core.preprocessing import load_gray, load_pixels
from pneumocnn.core.progress import progress_bar
from pneumocnn.runtime.explain import occlusion, overlay, save_png
from pneumocnn.runtime.model import Model, load

SCORES = "scores.csv"
COLUMNS = ["probability", "label", "threshold", "file", *IDENTIFIERS, "error"]
THUMBNAIL = 384


@dataclass(frozen=True)
class Worklist:
    """The sorted rows of ``worklist.csv`` and where the outputs were written."""

    rows: list[dict[str, str]]
    csv_path: Path
    html_path: Path

    @property
    def failed(self) -> list[dict[str, str]]:
        """Rows of files that could not be scored."""
        return [row for row in self.rows if row["error"]]


def triage(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    model: Model | str | os.PathLike | None = None,
    *,
    heatmaps: bool = True,
    progress: Callable[[int, int], None] | bool | None = None,
    guard: bool = True,
) -> Worklist:
    """Score every image and DICOM file under ``folder`` (or listed in a manifest) into the
    report folder ``out``.

    ``model`` is a :class:`Model`, a model path, or None for the bundled model. ``progress``:
    None draws a progress bar (files done, rate, time left) when stderr is a terminal, True
    always, False never; a callable is called with ``(done, total)`` after each file instead.
    A DICOM file whose tags say it is not a frontal chest X-ray is listed with the failures,
    its reason in ``error``, unless ``guard=False``.
    """
    if not isinstance(model, Model):
        model = load(model)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scores = out / SCORES
    done = {row["file"] for row in read_scores(scores)}  # drops a row a kill cut short
    todo = [(item, name) for item, name in expand_inputs(folder)
            if name is None or neutral(name) not in done]
    total = len(done) + len(todo)
    drawn = progress if isinstance(progress, bool) or progress is None else False
    with progress_bar(total, initial=len(done), enabled=drawn, description="triage") as bar:
        for count, (item, name) in enumerate(todo, start=1):
            assert name is not None  # what a path expands to is named
            append_score(scores, score(model, item, name, out / "images", heatmaps, guard))
            bar.update()
            if callable(progress):
                progress(len(done) + count, total)
    return write_worklist(out, model)


def write_worklist(out: str | os.PathLike, model: Model) -> Worklist:
    """Rewrite ``worklist.csv`` and ``report.html`` in ``out`` from the rows of its
    ``scores.csv`` (each written atomically)."""
    out = Path(out)
    rows = read_scores(out / SCORES)
    rows.sort(key=_worklist_order)
    csv_path, html_path = out / "worklist.csv", out / "report.html"
    write_text(csv_path, _to_csv(rows))
    _write_html(html_path, rows, model, out / "images")
    return Worklist(rows, csv_path, html_path)


def append_score(scores: Path, row: dict[str, str]) -> None:
    """Append one row to ``scores.csv`` (with the header if the file is new or empty) and flush
    it to disk before returning: once this returns, the row survives a crash."""
    with scores.open("a", newline="", encoding="utf-8", errors="surrogateescape") as sink:
        writer = csv.DictWriter(sink, fieldnames=COLUMNS)
        if sink.tell() == 0:
            writer.writeheader()
        writer.writerow(neutral_row(row))
        sink.flush()
        os.fsync(sink.fileno())


def score(model: Model, item, name: str, images: Path, heatmaps: bool = True,
          guard: bool = True) -> dict[str, str]:
    """The worklist row of one input (a path or anything ``predict`` takes) named ``name``:
    its probability, label and threshold, or its ``error``; with the study identifiers of a
    DICOM file either way. Writes its thumbnail (and heatmap) PNGs into ``images``."""
    row = dict.fromkeys(COLUMNS, "")
    row["file"] = name
    row.update(_identifiers(item))  # on failed rows too: a clinic matches them to its studies
    try:
        # Decode twice, not once per use: the model's pixels exactly as predict(path) makes
        # them (scored as they are: predict(pixels) would normalise them again), and the
        # full-size image for display.
        pixels = load_pixels(item, model.description.preprocessing, name, guard=guard)
        gray = load_gray(item, name)
        prediction = model.predict_pixels(pixels, name)
        stem = _stem(name)
        thumbnail = gray.copy()
        thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
        save_png(thumbnail, images / f"{stem}-xray.png")
        if heatmaps:
            save_png(overlay(gray, occlusion(model, name, pixels=pixels)),
                     images / f"{stem}-heatmap.png")
    except PneumocnnError as error:
        row["error"] = getattr(error, "reason", str(error))
        return row
    row.update(probability=f"{prediction.probability:.6f}", label=prediction.label or "",
               threshold=f"{prediction.threshold:.6f}")
    return row


def _worklist_order(row: dict[str, str]) -> tuple[int, float]:
    """Scored files by falling probability, then the failures."""
    return (1, 0.0) if row["error"] else (0, -float(row["probability"]))


def _identifiers(item) -> dict[str, str]:
    from pneumocnn.core.dicom import read_identifiers

    return read_identifiers(item) if isinstance(item, (str, os.PathLike)) else {}


def _stem(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def read_scores(scores: Path) -> list[dict[str, str]]:
    """The rows of ``scores.csv``, by the resume rule of :func:`~pneumocnn.core.durable_files.resume_csv`
    (a row a kill cut short is dropped); the last row of a file wins."""
    rows = [row for row in resume_csv(scores, COLUMNS, "triage scores.csv") if row["file"]]
    return list({row["file"]: row for row in rows}.values())


def _to_csv(rows: list[dict[str, str]]) -> str:
    from io import StringIO

    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(map(neutral_row, rows))
    return buffer.getvalue()


def _inline_png(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="">'


def _write_html(path: Path, rows: list[dict[str, str]], model: Model, images: Path) -> None:
    """Write the report a row at a time, so a large worklist never sits in memory as HTML."""
    scored = [row for row in rows if not row["error"]]
    failed = [row for row in rows if row["error"]]
    with atomic_write(path) as stream:
        stream.write(_html_head(model, len(scored), len(failed)).encode())
        for rank, row in enumerate(scored, start=1):
            stream.write(_html_row(rank, row, model, images).encode())
        errors = "".join(f"<li>{html.escape(row['file'])}: {html.escape(row['error'])}</li>"
                         for row in failed)
        stream.write(f"""</tbody></table>
<h2>Files not scored (unreadable, or not a frontal chest X-ray)</h2>
<ul>{errors or "<li>none</li>"}</ul>
</body></html>
""".encode())


def _html_row(rank: int, row: dict[str, str], model: Model, images: Path) -> str:
    stem = _stem(row["file"])
    ids = " ".join(f"{k}: {html.escape(row[k])}" for k in IDENTIFIERS if row.get(k))
    flag = "flag" if row["label"] == model.labels[1] else ""
    return (f'<tr class="{flag}"><td>{rank}</td><td class="p">{float(row["probability"]):.3f}</td>'
            f'<td>{html.escape(row["label"])}</td>'
            f'<td class="file">{html.escape(row["file"])}<div class="ids">{ids}</div></td>'
            f"<td>{_inline_png(images / f'{stem}-xray.png')}</td>"
            f"<td>{_inline_png(images / f'{stem}-heatmap.png')}</td></tr>\n")


def _html_head(model: Model, scored: int, failed: int) -> str:
    info = model.description.info
    provenance = info.get("provenance", {})
    made_by = provenance.get("versions", {}).get("pneumocnn", "?")
    model_text = html.escape(f"{Path(model.path).name} ({info.get('architecture', '?')}, "
                             f"{info.get('quantization', 'keras')}, trained "
                             f"{provenance.get('created', '?')} with pneumocnn {made_by})")
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pneumocnn triage worklist</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.notice {{ background: #fff4d6; border: 1px solid #e0b84c; padding: .8em 1em; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .4em .8em; text-align: left; vertical-align: top; }}
tr.flag td.p {{ color: #b00020; font-weight: bold; }}
img {{ height: 192px; }} .ids {{ color: #666; font-size: .85em; }}
td.file {{ max-width: 22em; overflow-wrap: anywhere; }}
</style></head><body>
<h1>Chest X-ray triage worklist</h1>
<p class="notice"><strong>A triage aid, not a diagnosis.</strong> The order below suggests which
X-rays to read first; every X-ray still needs a radiologist's reading.</p>
<p>Model: {model_text}. Threshold: {model.threshold:.3f} — a probability at or above it is
labelled {html.escape(model.labels[1])}. Heatmaps: occlusion sensitivity on the model's square
view of the X-ray (brighter: hiding that region lowers the pneumonia score more). Written by
pneumocnn {__version__} at {created}; {scored} scored, {failed} failed.</p>
<table><thead><tr><th>#</th><th>probability</th><th>label</th><th>file</th><th>X-ray</th>
<th>heatmap</th></tr></thead><tbody>
"""
