"""The triage worklist: score a folder, most likely pneumonia first, as CSV and an HTML page.

``triage(folder, out)`` writes into ``out``:

- ``scores.csv``: one row per file, appended as each is scored (a rerun skips files already in
  it, so an interrupted run resumes where it stopped; flushed to disk at the end, so that a
  power cut may cost the last rows a rescore, a killed process nothing); its cells, as those of
  ``worklist.csv``, never start a spreadsheet formula (:mod:`pneumocnn.core.csv_cells`);
- ``images/``: each picture once, as a small JPEG file: for each scored file a thumbnail
  (``STEM-xray.jpg``, at most 320 px), and for those that get one an occlusion heatmap over
  it (``STEM-heatmap.jpg``; by default for the files at or above the threshold: see
  ``heatmaps``), and the heatmaps' colour bar (``legend.png``);
- ``worklist.csv``: the scored files sorted by probability, highest first, then the failures;
- ``report.html``: the same order as a page that opens at once however long the list: the
  rows are data in the page and a small script shows 100 at a time (paged, filtered by label
  or by text), each picture loaded only when its row is shown.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from pneumocnn._version import __version__
from pneumocnn.clinic import HEATMAPS
from pneumocnn.clinic.entry import COLUMNS, Entry
from pneumocnn.core.csv_cells import neutral, neutral_row
from pneumocnn.core.dicom import IDENTIFIERS, DicomHeader
from pneumocnn.core.durable_files import atomic_write, resume_csv, write_text
from pneumocnn.core.errors import PneumocnnError
from pneumocnn.core.inputs import expand_inputs
from pneumocnn.core.preprocessing import gray_to_pixels, load_gray
from pneumocnn.core.progress import progress_bar
from pneumocnn.runtime.explain import OCCLUSION_SCALE, colour_bar, occlusion, overlay, save_png
from pneumocnn.runtime.model import Model, Prediction, load

SCORES = "scores.csv"
THUMBNAIL = 320  # the longer side of the pictures, in pixels (shown in 160 x 120 CSS px: sharp at 2x)
JPEG_QUALITY = 80
PAGE_ROWS = 100
LEGEND = "legend.png"


@dataclass(frozen=True)
class Worklist:
    """The sorted entries of ``worklist.csv`` and where the outputs were written."""

    entries: list[Entry]
    csv_path: Path
    html_path: Path

    @property
    def rows(self) -> list[dict[str, str]]:
        """The rows of ``worklist.csv``."""
        return [entry.row() for entry in self.entries]

    @property
    def failed(self) -> list[dict[str, str]]:
        """Rows of files that could not be scored."""
        return [entry.row() for entry in self.entries if entry.error]


def triage(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    model: Model | str | os.PathLike | None = None,
    *,
    heatmaps: str = "flagged",
    progress: Callable[[int, int], None] | bool | None = None,
    guard: bool = True,
) -> Worklist:
    """Score every image and DICOM file under ``folder`` (or listed in a manifest) into the
    report folder ``out``.

    ``model`` is a :class:`Model`, a model path, or None for the bundled model. ``heatmaps``:
    ``"flagged"`` (the default) draws an occlusion heatmap for the files at or above the
    threshold, those a reader opens first; ``"all"`` for every scored file; ``"none"`` for
    none, which scores about as fast as ``predict`` (a heatmap costs 226 model calls).
    Files are decoded and scored on a few threads, their rows appended in input order.
    ``progress``: None draws a progress bar (files done, rate, time left) when stderr is a
    terminal, True always, False never; a callable is called with ``(done, total)`` after each
    file instead. A DICOM file whose tags say it is not a frontal chest X-ray is listed with
    the failures, its reason in ``error``, unless ``guard=False``.
    """
    check_heatmaps(heatmaps)
    if not isinstance(model, Model):
        model = load(model)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scores = out / SCORES
    done = {entry.file for entry in read_scores(scores)}  # drops a row a kill cut short
    todo = [(item, name) for item, name in expand_inputs(folder)
            if name is None or neutral(name) not in done]
    total = len(done) + len(todo)
    drawn = progress if isinstance(progress, bool) or progress is None else False
    with progress_bar(total, initial=len(done), enabled=drawn, description="triage") as bar:
        entries = _score_in_order(model, todo, out / "images", heatmaps, guard)
        try:
            for count, entry in enumerate(entries, start=1):
                # not flushed to disk one by one: a power cut costs the last rows a rescore
                append_score(scores, entry, durable=False)
                bar.update()
                if callable(progress):
                    progress(len(done) + count, total)
        finally:
            if scores.exists():
                with scores.open("ab") as written:
                    os.fsync(written.fileno())
    return write_worklist(out, model, heatmaps)


def _score_in_order(model: Model, todo: list, images: Path, heatmaps: str,
                    guard: bool) -> Iterable[Entry]:
    """The entries of ``todo``'s ``(item, name)`` pairs in order, each scored on a pool of
    threads (decoding and writing pictures overlap the model's calls), a few ahead."""
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[Entry]] = deque()
        for item, name in todo:
            pending.append(pool.submit(score, model, item, name, images, heatmaps, guard))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_worklist(out: str | os.PathLike, model: Model, heatmaps: str = "flagged") -> Worklist:
    """Rewrite ``worklist.csv`` and ``report.html`` in ``out`` from the rows of its
    ``scores.csv`` (each written atomically); ``heatmaps`` is what the page says about them."""
    check_heatmaps(heatmaps)
    out = Path(out)
    entries = read_scores(out / SCORES)
    entries.sort(key=_worklist_order)
    csv_path, html_path = out / "worklist.csv", out / "report.html"
    write_text(csv_path, _to_csv(entries))
    save_png(colour_bar(OCCLUSION_SCALE, 400, 16), out / "images" / LEGEND)
    write_text(html_path, report_html(entries, model, out / "images", heatmaps))
    return Worklist(entries, csv_path, html_path)


def append_score(scores: Path, entry: Entry, *, durable: bool = True) -> None:
    """Append the row of one entry to ``scores.csv`` (with the header if the file is new or
    empty). Once this returns the row survives the process being killed; ``durable`` (the
    default) also flushes it to disk first, so that it survives a power cut (the DICOM node's
    journal)."""
    with scores.open("a", newline="", encoding="utf-8", errors="surrogateescape") as sink:
        writer = csv.DictWriter(sink, fieldnames=COLUMNS)
        if sink.tell() == 0:
            writer.writeheader()
        writer.writerow(neutral_row(entry.row()))
        sink.flush()
        if durable:
            os.fsync(sink.fileno())


def score(model: Model, item, name: str, images: Path, heatmaps: str = "flagged",
          guard: bool = True) -> Entry:
    """The worklist entry of one input (a path or anything ``predict`` takes) named ``name``,
    read once: its prediction (or why it was not scored) and, for a DICOM file, its header
    either way. Writes its thumbnail, and its heatmap as ``heatmaps`` says (see
    :func:`triage`), into ``images``."""
    check_heatmaps(heatmaps)
    spec = model.description.preprocessing
    headers: list[DicomHeader] = []  # kept for a file refused too: a clinic finds its study
    try:
        # decoded once, as predict decodes it: the model's pixels are predict's, and the
        # picture comes from the same image (at least twice the model's input size)
        gray = load_gray(item, name, spec=spec, guard=guard, on_header=headers.append)
        pixels = gray_to_pixels(gray, spec)
        prediction = model.predict_pixels(pixels, name)
        stem = _stem(name)
        thumbnail = gray.copy()
        thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
        _save_jpeg(thumbnail, images / f"{stem}-xray.jpg")
        if heatmaps == "all" or (heatmaps == "flagged" and prediction.label == model.labels[1]):
            explanation = occlusion(model, name, pixels=pixels)
            _save_jpeg(overlay(gray, explanation, THUMBNAIL, legend=False),
                       images / f"{stem}-heatmap.jpg")
    except PneumocnnError as error:
        prediction = Prediction.failed(name, model.threshold, error)
    return Entry.of(prediction, headers[0] if headers else None)


def check_heatmaps(heatmaps: str) -> None:
    """Raise ``ValueError`` unless ``heatmaps`` is one of ``HEATMAPS``."""
    if heatmaps not in HEATMAPS:
        raise ValueError(f"heatmaps must be one of {', '.join(HEATMAPS)}, got {heatmaps!r}")


def _save_jpeg(image: Image.Image, path: Path) -> None:
    with atomic_write(path) as stream:
        image.save(stream, format="JPEG", quality=JPEG_QUALITY)


def _worklist_order(entry: Entry) -> tuple[int, float]:
    """Scored files by falling probability, then the failures."""
    return (1, 0.0) if entry.error else (0, -entry.prediction.probability)


def _stem(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def read_scores(scores: Path) -> list[Entry]:
    """The entries of ``scores.csv``, by the resume rule of :func:`~pneumocnn.core.durable_files.resume_csv`
    (a row a kill cut short is dropped); the last row of a file wins."""
    rows = [row for row in resume_csv(scores, COLUMNS, "triage scores.csv") if row["file"]]
    return [Entry.from_row(row) for row in {row["file"]: row for row in rows}.values()]


def _to_csv(entries: list[Entry]) -> str:
    from io import StringIO

    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(neutral_row(entry.row()) for entry in entries)
    return buffer.getvalue()


def shown_probabilities(probabilities: list[float]) -> list[str]:
    """The probabilities of a sorted worklist as the page prints them: three decimals, or as
    many as it takes (up to the six ``scores.csv`` keeps) to tell each from its neighbours
    and never to print a probability under 1 as 1 (or one over 0 as 0), so that the order
    shows; values equal to six decimals print alike. The printed values fall as the
    probabilities do: neighbours are printed to at least the digits from which on they differ
    at every precision."""
    values = sorted({round(p, 6) for p in probabilities}, reverse=True)  # each value once
    apart = [1 + max([2, *(d for d in range(3, 6) if round(a, d) == round(b, d))])
             for a, b in zip(values, values[1:], strict=False)]
    digits = {}
    for k, value in enumerate(values):
        needed = max([3, *apart[max(k - 1, 0):k + 1]])
        while needed < 6 and round(value, needed) in (0.0, 1.0) and value not in (0.0, 1.0):
            needed += 1
        digits[value] = needed
    return [f"{round(p, 6):.{digits[round(p, 6)]}f}" for p in probabilities]


def report_html(entries: list[Entry], model: Model, images: Path,
                heatmaps: str = "flagged") -> str:
    """The page of a sorted worklist (scored entries first, then failures): a header, and the
    rows as JSON data that the page's script shows a page at a time."""
    scored = [entry for entry in entries if not entry.error]
    failed = [entry for entry in entries if entry.error]
    positive = model.labels[1]
    present = set(os.listdir(images)) if images.is_dir() else set()
    data = []
    for rank, (entry, shown) in enumerate(
            zip(scored, shown_probabilities([e.prediction.probability for e in scored]),
                strict=True), start=1):
        stem = _stem(entry.file)
        data.append([rank, shown, entry.prediction.label or "", entry.file, _ids(entry),
                     stem if f"{stem}-xray.jpg" in present else "",
                     int(f"{stem}-heatmap.jpg" in present)])
    data += [[None, "", "", entry.file, _ids(entry), "", 0, entry.error] for entry in failed]
    flagged = sum(entry.prediction.label == positive for entry in scored)
    payload = json.dumps({"rows": data, "positive": positive, "negative": model.labels[0],
                          "pageRows": PAGE_ROWS, "threshold": f"{model.threshold:.3f}",
                          "heatmaps": heatmaps}, separators=(",", ":"))
    return _PAGE.format(
        head=_html_head(model, len(scored), flagged, len(failed), heatmaps),
        data=payload.replace("<", "\\u003c"),  # no "</script>" can end the data early
        positive=html.escape(positive), negative=html.escape(model.labels[0]),
        scored=len(scored), flagged=flagged, negative_count=len(scored) - flagged,
        failed=len(failed), script=_SCRIPT)


def _ids(entry: Entry) -> str:
    return " ".join(f"{k}: {entry.identifiers[k]}" for k in IDENTIFIERS
                    if entry.identifiers.get(k))


def _html_head(model: Model, scored: int, flagged: int, failed: int, heatmaps: str) -> str:
    info = model.description.info
    provenance = info.get("provenance", {})
    made_by = provenance.get("versions", {}).get("pneumocnn", "?")
    model_text = html.escape(f"{Path(model.path).name} ({info.get('architecture', '?')}, "
                             f"{info.get('quantization', 'keras')}, trained "
                             f"{provenance.get('created', '?')} with pneumocnn {made_by})")
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    positive = html.escape(model.labels[1])
    which = {"flagged": f"for the X-rays labelled {positive}",
             "all": "for every X-ray scored", "none": "not drawn (--heatmaps none)"}[heatmaps]
    scale = OCCLUSION_SCALE
    ticks = "".join(f'<span style="left:{100 * value / scale.top:.1f}%">{html.escape(text)}</span>'
                    for value, text in scale.ticks)
    return f"""<p class="notice"><strong>A triage aid, not a diagnosis.</strong> The order below
suggests which X-rays to read first; every X-ray still needs a radiologist's reading.</p>
<p>Model: {model_text}. Threshold: {model.threshold:.3f}: a probability at or above it is
labelled {positive}. Written by pneumocnn {__version__} at {created}; {scored:,} scored
({flagged:,} {positive}), {failed:,} not scored.</p>
<div class="legend"><div>Heatmaps {which}: occlusion sensitivity, on one scale for every
X-ray. Colour shows how much hiding that region of the X-ray lowers the pneumonia score:
{html.escape(scale.title)} (clear: hiding it changes nothing).</div>
<div class="bar"><img src="images/{LEGEND}" alt="colour bar">{ticks}</div></div>"""


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pneumocnn triage worklist</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; }}
h1 {{ margin: 0 0 .4em; font-size: 1.5em; }}
.notice {{ background: #fff4d6; border: 1px solid #e0b84c; padding: .6em 1em; }}
.legend {{ display: flex; gap: 1.5em; align-items: center; max-width: 70em; font-size: .9em; }}
.legend > div:first-child {{ flex: 1; }}
.bar {{ position: relative; width: 240px; height: 34px; flex: none; }}
.bar img {{ width: 240px; height: 14px; display: block; }}
.bar span {{ position: absolute; top: 16px; transform: translateX(-50%); font-size: .8em; }}
nav {{ display: flex; flex-wrap: wrap; gap: .6em; align-items: center; margin: 1em 0 .5em; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .3em .7em; text-align: left;
  vertical-align: top; }}
th {{ background: #f4f4f4; position: sticky; top: 0; }}
td.rank, td.p {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.positive td.p, tr.positive td.label {{ color: #b00020; font-weight: bold; }}
tr.failed td {{ color: #666; }}
tr.line td {{ border-top: 3px solid #b00020; border-bottom: none; color: #b00020;
  font-weight: bold; padding: .4em .7em; background: #fdeef0; }}
td.file {{ max-width: 24em; overflow-wrap: anywhere; }}
.ids {{ color: #666; font-size: .85em; }}
td.none {{ color: #888; font-size: .85em; }}
td.pic img {{ width: 160px; height: 120px; object-fit: contain; background: #111;
  display: block; }}
</style></head><body>
<h1>Chest X-ray triage worklist</h1>
{head}
<nav>
<label>Show <select id="filter">
<option value="all">all ({scored:,} scored, {failed:,} not scored)</option>
<option value="positive">{positive} ({flagged:,})</option>
<option value="negative">{negative} ({negative_count:,})</option>
<option value="failed">not scored ({failed:,})</option>
</select></label>
<label>Find <input id="find" type="search" placeholder="file name or patient ID"></label>
<button id="first">&laquo; first</button><button id="previous">&lsaquo; previous</button>
<span id="where"></span>
<button id="next">next &rsaquo;</button><button id="last">last &raquo;</button>
</nav>
<noscript><p>This page needs JavaScript to list its rows; the same worklist is in
worklist.csv beside it.</p></noscript>
<table><thead><tr><th>rank</th><th>probability</th><th>label</th><th>file</th><th>X-ray</th>
<th>heatmap</th></tr></thead><tbody id="rows"></tbody></table>
<script type="application/json" id="data">{data}</script>
<script>{script}</script>
</body></html>
"""

# The page's script: reads the rows from the JSON above, keeps the filter and page in the
# address (#filter=...&find=...&page=...), and builds only the rows of the page shown. Each
# row of the data: [rank, probability, label, file, identifiers, picture stem, has heatmap,
# error]; rank is null for a file not scored.
_SCRIPT = """
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const rows = data.rows, body = document.getElementById("rows");
const filter = document.getElementById("filter"), find = document.getElementById("find");
const tests = {
  all: () => true,
  positive: (r) => r[0] !== null && r[2] === data.positive,
  negative: (r) => r[0] !== null && r[2] !== data.positive,
  failed: (r) => r[0] === null,
};
const count = (n) => n.toLocaleString("en-US");
function cell(tr, className, text) {
  const td = tr.insertCell();
  td.className = className;
  if (text !== undefined) td.textContent = text;
  return td;
}
function picture(td, src, alt) {
  const a = document.createElement("a"), img = document.createElement("img");
  a.href = src;
  img.src = src; img.alt = alt; img.loading = "lazy"; img.decoding = "async";
  a.appendChild(img); td.appendChild(a);
}
function line(text) {
  const tr = body.insertRow();
  tr.className = "line";
  const td = tr.insertCell();
  td.colSpan = 6; td.textContent = text;
}
function state() {
  const args = new URLSearchParams(location.hash.slice(1));
  return {filter: tests[args.get("filter")] ? args.get("filter") : "all",
          find: args.get("find") || "", page: Math.max(1, parseInt(args.get("page"), 10) || 1)};
}
function go(changes) {
  const next = Object.assign(state(), changes);
  location.hash = new URLSearchParams(next).toString();
}
function render() {
  const s = state(), needle = s.find.toLowerCase();
  filter.value = s.filter;
  if (document.activeElement !== find) find.value = s.find;
  const shown = rows.filter((r) => tests[s.filter](r) &&
    (!needle || (r[3] + " " + r[4]).toLowerCase().includes(needle)));
  const pages = Math.max(1, Math.ceil(shown.length / data.pageRows));
  const page = Math.min(s.page, pages), start = (page - 1) * data.pageRows;
  const slice = shown.slice(start, start + data.pageRows);
  body.replaceChildren();
  slice.forEach((r, k) => {
    const before = k > 0 ? slice[k - 1] : (start > 0 ? shown[start - 1] : null);
    const positive = r[0] !== null && r[2] === data.positive;
    if (before && before[0] !== null && before[2] === data.positive && !positive) {
      line(r[0] === null ? "not scored below"
        : "threshold " + data.threshold + ": " + data.positive + " above this line, " +
          data.negative + " below");
    } else if (before && before[0] !== null && r[0] === null) {
      line("not scored below");
    }
    const tr = body.insertRow();
    tr.className = r[0] === null ? "failed" : positive ? "positive" : "";
    cell(tr, "rank", r[0] === null ? "" : r[0]);
    cell(tr, "p", r[1]);
    cell(tr, "label", r[0] === null ? "not scored" : r[2]);
    const file = cell(tr, "file", r[3]);
    const ids = document.createElement("div");
    ids.className = "ids"; ids.textContent = r[0] === null ? r[7] : r[4];
    file.appendChild(ids);
    const xray = cell(tr, "pic"), heat = cell(tr, "pic");
    if (r[5]) picture(xray, "images/" + r[5] + "-xray.jpg", "X-ray");
    if (r[5] && r[6]) picture(heat, "images/" + r[5] + "-heatmap.jpg", "heatmap");
    else if (r[0] !== null && data.heatmaps !== "none") {
      heat.className = "pic none";
      heat.textContent = positive || data.heatmaps === "all" ? "not drawn"
        : "not drawn (below the threshold)";
    }
  });
  document.getElementById("where").textContent = shown.length === 0 ? "no rows"
    : "rows " + count(start + 1) + "-" + count(start + slice.length) + " of " +
      count(shown.length) + " (page " + count(page) + " of " + count(pages) + ")";
  document.getElementById("first").disabled = document.getElementById("previous").disabled = page <= 1;
  document.getElementById("next").disabled = document.getElementById("last").disabled = page >= pages;
  document.getElementById("first").onclick = () => go({page: 1});
  document.getElementById("previous").onclick = () => go({page: page - 1});
  document.getElementById("next").onclick = () => go({page: page + 1});
  document.getElementById("last").onclick = () => go({page: pages});
}
filter.onchange = () => go({filter: filter.value, page: 1});
find.oninput = () => go({find: find.value, page: 1});
window.addEventListener("hashchange", render);
render();
"""
