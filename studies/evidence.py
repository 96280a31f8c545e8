"""Where the evidence lies: the share of each occlusion heatmap's positive heat inside the lung
fields, the mediastinum and elsewhere, on PNEUMONIA X-rays.

    python -m studies.evidence                     # the bundled model (int8), the three sets
    python -m studies.evidence --limit 40          # at most 40 X-rays of each set

For each X-ray the model's own view (``load_pixels``: margins cut, 150 x 150, equalised) is
explained by :func:`pneumocnn.runtime.explain.occlusion` twice: with each square hidden under
the image's mean (a flat gray square: what ``explain`` and ``triage`` draw) and under a
blurred copy of the image (keeps the local brightness, hides the detail; ``explain --fill
blur``), so that a region is not credited only for turning dark when hidden. The heat of a region is the sum
of the heatmap over its pixels; its share is that over the heat of the whole view.

The regions are estimated on the model's view by a documented rule (no segmentation model is
at hand; it was checked by eye on the contact sheets it writes):

1. the view is smoothed (Gaussian, sigma 4 px down the rows, which washes out the ribs, and
   1.5 px along them, which keeps the edges of the mediastinum); "dark" is below the 40th
   percentile of its inner 80 %;
2. the midline is the brightest column (mean over the middle 60 % of rows) within the middle
   30 % of the width: the spine and mediastinum;
3. in each row, walking out from the midline on each side, the lung is the first dark run that
   starts within 30 % of the width of the midline, crossing gaps of up to 2 bright pixels, cut
   at 32 % of the width (where it ran on into the air outside the body); a row holds lung when
   both sides have a run of at least 4 % of the width; the mediastinum is between the two
   runs' inner ends;
4. the lung fields' rows are the run of such rows (gaps of up to 6 rows bridged) that holds
   most of the middle 40 % of the height; each of the four edges is followed down those rows
   (rows without a value interpolated, an outer edge at the border of the view taken for the
   air outside and interpolated too) and median-filtered over 9 rows;
5. elsewhere is the rest: chest wall, shoulders, neck, abdomen, background, labels.

An X-ray is left out of the shares (not segmented) when its lung fields span under 25 % of
the height or under 60 % of the middle 40 %, or the lungs cover under 10 % of the view. The
rule misses lung that pneumonia made as bright as soft tissue where it borders the chest wall
or the mediastinum (it then counts as elsewhere or as mediastinum), and lung behind the heart
and below the domes of the diaphragm; it cannot segment a view where the lungs are no darker
than the rest, which may favour the clearer X-rays.

Writes ``results.json``, ``results.md`` and contact sheets (``sheet-SET.jpg``: the first 24
X-rays of each set, each as its mean-fill heatmap beside its blur-fill one, with the lung
outlines in cyan and the mediastinum's in green; a red stroke across an X-ray the rule did not
segment) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from benchmarks import BUNDLED_MODELS, BUNDLED_RUN, REPO, SHARED_DATA
from benchmarks.report import cpu_features, cpu_name
from pneumocnn.core.labelled_data import index_folder
from pneumocnn.core.preprocessing import load_pixels
from pneumocnn.runtime.explain import HeatScale, blend, occlusion
from pneumocnn.runtime.model import Model, load
from pneumocnn.training.settings import saved_config
from pneumocnn.training.splits import split
from studies import RESULTS

REGIONS = ("lungs", "mediastinum", "elsewhere")
SMOOTHING = (4.0, 1.5)  # pixels, (rows, columns): ribs washed out, edges between lung and
# mediastinum kept
DARK_PERCENTILE = 40  # of the view's inner 80 %: darker is taken for lung
GAP = 2  # bright pixels a lung's dark run may cross
MIN_RUN = 0.04  # of the width: the shortest run that counts as lung in a row
MAX_LUNG_WIDTH = 0.32  # of the width: a run is cut there (it ran into the air outside)
MAX_HALF_MEDIASTINUM = 0.3  # of the width: how far from the midline a lung may start
ROW_GAP = 6  # rows without a lung on both sides bridged inside the lung fields
EDGE_SMOOTHING = 9  # rows: median filter along each edge
MIN_ROWS = 0.25  # of the height: the shortest lung fields
CENTRE = (0.3, 0.7)  # of the height: the rows the lung fields must hold most of
MIN_CENTRE = 0.6  # of those rows, at least
MIN_LUNGS = 0.10  # of the view, both lungs
SHEET_COLUMNS = 4  # pairs of tiles in a row of a contact sheet
SHEET_XRAYS = 24  # the first X-rays of each set on its sheet
# the sheets' colours saturate at odds divided by 5, not 20 as explain's do: the blurred
# fill's heat, about half the mean's, would hardly show on the shipped scale
SHEET_SCALE = HeatScale(top=math.log(5), ticks=(), title="")


def pneumonia_sets(limit: int | None) -> dict[str, list[Path]]:
    """The PNEUMONIA X-rays of each set, by name: tests/data (training images of the bundled
    model), the bundled model's validation split (held out from its training) and site-b (the
    official test split's images, acquired apart), each at most ``limit``, evenly spaced."""
    validation = split(SHARED_DATA / "chest_xray", saved_config(BUNDLED_RUN))[1]
    sets = {"tests-data": index_folder(REPO / "tests" / "data" / "xrays"),
            "validation": validation, "site-b": index_folder(SHARED_DATA / "site-b")}
    sets = {name: sorted(Path(path) for path, label in zip(images.paths, images.labels,
                                                           strict=True) if label == 1)
            for name, images in sets.items()}
    if limit is None:
        return sets
    return {name: [paths[k] for k in np.unique(np.linspace(0, len(paths) - 1, limit).astype(int))]
            for name, paths in sets.items()}


def regions(pixels: np.ndarray) -> dict[str, np.ndarray] | None:
    """The masks of the lung fields, the mediastinum and elsewhere on a model view (uint8
    ``(H, W)``) by the rule in the module's docstring; None where it finds no lungs."""
    height, width = pixels.shape
    smooth = ndimage.gaussian_filter(pixels.astype(np.float64), SMOOTHING)  # ribs washed out
    inner = smooth[height // 10: -height // 10, width // 10: -width // 10]
    dark = smooth < np.percentile(inner, DARK_PERCENTILE)
    band = slice(round(0.35 * width), round(0.65 * width))
    profile = smooth[round(0.2 * height): round(0.8 * height), band].mean(axis=0)
    midline = band.start + int(np.argmax(profile))
    # each row's lung on each side: its first dark run outwards from the midline
    edges = np.full((height, 4), np.nan)  # left outer, left inner, right inner, right outer
    for row in range(height):
        left = _dark_run(dark[row, midline::-1], width)
        right = _dark_run(dark[row, midline:], width)
        if left is not None and right is not None:
            edges[row] = (midline - left[1] + 1, midline - left[0] + 1,
                          midline + right[0], midline + right[1])
    found = ~np.isnan(edges[:, 1])
    block = _central_block(ndimage.binary_closing(found, iterations=ROW_GAP))
    centre = slice(round(CENTRE[0] * height), round(CENTRE[1] * height))
    if block.sum() < MIN_ROWS * height or block[centre].mean() < MIN_CENTRE:
        return None
    rows = np.flatnonzero(block)
    # an outer edge at the border of the view is the air outside, not the chest wall
    edges[(edges[:, 0] <= 0), 0] = np.nan
    edges[(edges[:, 3] >= width), 3] = np.nan
    lungs = np.zeros_like(dark)
    mediastinum = np.zeros_like(dark)
    for column, cap in zip(range(4), (midline - MAX_LUNG_WIDTH * width, None, None,
                                      midline + MAX_LUNG_WIDTH * width), strict=True):
        known = rows[~np.isnan(edges[rows, column])]
        if known.size == 0:
            edges[rows, column] = cap
            continue
        # each edge followed down the rows, gaps bridged, smoothed
        edges[rows, column] = ndimage.median_filter(
            np.interp(rows, known, edges[known, column]), size=EDGE_SMOOTHING, mode="nearest")
    for row in rows:
        a, b, c, d = np.rint(edges[row]).astype(int)
        lungs[row, a:b], lungs[row, c:d], mediastinum[row, b:c] = True, True, True
    if lungs.sum() < MIN_LUNGS * height * width:
        return None
    return {"lungs": lungs, "mediastinum": mediastinum, "elsewhere": ~(lungs | mediastinum)}


def _dark_run(line: np.ndarray, width: int) -> tuple[int, int] | None:
    """The first run of dark pixels along ``line`` (from the midline outwards), bridging gaps
    of up to ``GAP`` bright pixels: ``(start, end)``, or None when there is none long enough
    or it starts too far out (no mediastinum edge in reach)."""
    on = np.flatnonzero(line)
    if on.size == 0 or on[0] > MAX_HALF_MEDIASTINUM * width:
        return None
    end = on[0]
    for k in on[1:]:
        if k - end > GAP + 1:
            break
        end = k
    start, end = int(on[0]), int(end) + 1
    end = min(end, start + round(MAX_LUNG_WIDTH * width))
    return (start, end) if end - start >= MIN_RUN * width else None


def _central_block(rows: np.ndarray) -> np.ndarray:
    """Of the runs of consecutive true rows, the one most of whose rows lie in the middle
    ``CENTRE`` of the height (the lung fields, not dark corners at the neck or abdomen)."""
    labelled, count = ndimage.label(rows)
    if count == 0:
        return rows
    middle = np.zeros_like(rows)
    low, high = CENTRE
    middle[round(low * rows.size): round(high * rows.size)] = True
    overlap = ndimage.sum(middle, labelled, index=range(1, count + 1))
    return labelled == 1 + int(np.argmax(overlap))


def measure(model: Model, paths: list[Path]) -> tuple[list[dict], list[Image.Image]]:
    """Each X-ray's probability, its regions' areas and heat shares under both fills, and a
    tile for the contact sheet."""
    spec = model.description.preprocessing
    rows, tiles = [], []
    for path in paths:
        pixels = load_pixels(path, spec, str(path))
        masks = regions(pixels)
        row = {"file": str(path.relative_to(path.parents[2])), "segmented": masks is not None}
        maps = {fill: occlusion(model, str(path), pixels=pixels, fill=fill)
                for fill in ("mean", "blur")}
        row["probability"] = maps["mean"].probability
        if masks is not None:
            row["area"] = {name: float(mask.mean()) for name, mask in masks.items()}
            for fill, explanation in maps.items():
                heat = explanation.heatmap.astype(np.float64)
                total = heat.sum()
                row[f"heat_{fill}"] = {name: float(heat[mask].sum() / total) if total > 0
                                       else None for name, mask in masks.items()}
        rows.append(row)
        if len(tiles) < SHEET_XRAYS:
            tiles.append(_pair(pixels, maps, masks))
    return rows, tiles


def _pair(pixels: np.ndarray, maps: dict, masks: dict | None) -> Image.Image:
    """The mean-fill tile beside the blur-fill tile."""
    left, right = (_tile(pixels, maps[fill].heatmap, masks) for fill in ("mean", "blur"))
    pair = Image.new("RGB", (2 * left.width + 4, left.height), "white")
    pair.paste(left, (0, 0))
    pair.paste(right, (left.width + 4, 0))
    return pair


def _tile(pixels: np.ndarray, heatmap: np.ndarray, masks: dict | None) -> Image.Image:
    """The view with its heatmap (on ``SHEET_SCALE``) and the regions' outlines, at 2x."""
    picture = Image.fromarray(blend(pixels.astype(np.float64), heatmap, SHEET_SCALE))
    picture = picture.resize((2 * pixels.shape[1], 2 * pixels.shape[0]), Image.Resampling.NEAREST)
    if masks is None:
        ImageDraw.Draw(picture).line([(0, 0), picture.size], fill="red", width=3)
        return picture
    outline = np.zeros(picture.size[::-1] + (3,), np.uint8)
    for name, colour in (("lungs", (0, 255, 255)), ("mediastinum", (0, 255, 0))):
        mask = np.kron(masks[name], np.ones((2, 2), bool))
        edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
        outline[edge] = colour
    array = np.asarray(picture).copy()
    drawn = outline.any(axis=-1)
    array[drawn] = outline[drawn]
    return Image.fromarray(array)


def summarise(rows: list[dict]) -> dict:
    """Median and interquartile range of each share over the segmented X-rays, and how many
    X-rays put most of their heat in each region."""
    kept = [row for row in rows if row["segmented"] and row["heat_mean"]["lungs"] is not None]
    summary = {"xrays": len(rows), "segmented": len(kept)}
    for key in ("area", "heat_mean", "heat_blur"):
        summary[key] = {name: _quartiles([row[key][name] for row in kept]) for name in REGIONS}
    for fill in ("mean", "blur"):
        summary[f"most_heat_{fill}"] = {
            name: sum(max(REGIONS, key=lambda r, row=row: row[f"heat_{fill}"][r]) == name
                      for row in kept) for name in REGIONS}
        summary[f"density_ratio_{fill}"] = _quartiles([
            (row[f"heat_{fill}"]["mediastinum"] / row["area"]["mediastinum"])
            / (row[f"heat_{fill}"]["lungs"] / row["area"]["lungs"])
            for row in kept if row["area"]["mediastinum"] > 0 and row[f"heat_{fill}"]["lungs"] > 0])
    return summary


def _quartiles(values: list[float]) -> dict:
    if not values:
        return {"median": None, "q1": None, "q3": None}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def sheet(tiles: list[Image.Image]) -> Image.Image:
    """The tiles in rows of ``SHEET_COLUMNS``."""
    width, height = tiles[0].size
    rows = -(-len(tiles) // SHEET_COLUMNS)
    canvas = Image.new("RGB", (SHEET_COLUMNS * width, rows * height), "white")
    for k, tile in enumerate(tiles):
        canvas.paste(tile, ((k % SHEET_COLUMNS) * width, (k // SHEET_COLUMNS) * height))
    return canvas


def markdown(results: dict) -> str:
    """The table of ``results``."""
    def share(entry: dict) -> str:
        return f"{entry['median']:.2f} ({entry['q1']:.2f}-{entry['q3']:.2f})"

    lines = [
        "# Where the evidence lies",
        "",
        f"`{results['command']}`, {results['date']}, {results['seconds']} s on {results['cpu']}; "
        f"model `{results['model']}`. Share of each X-ray's positive occlusion heat (log-odds "
        "drop) in each region of the model's view, median (interquartile range) over the "
        "X-rays the lung-field rule segmented; the regions' share of the view's area beside "
        "them. Fill: what hides a square (the image's mean, a flat gray square, as `explain` "
        "and `triage` draw; or a blurred copy of the view, which keeps its brightness, "
        "`explain --fill blur`). The rule and its limits: `studies/evidence.py`; the contact "
        "sheets `sheet-SET.jpg` show each set's first 24 X-rays, mean fill left, blur fill "
        "right, coloured to saturate at odds divided by 5 (the shipped scale: 20).",
        "",
        "| set | X-rays (segmented) | region | area | heat, mean fill | heat, blur fill | "
        "X-rays with most heat there (mean / blur) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["sets"].items():
        s = entry["summary"]
        for k, region in enumerate(REGIONS):
            head = (f"{name} ({entry['about']}) | {s['xrays']} ({s['segmented']})" if k == 0
                    else " | ")
            lines.append(f"| {head} | {region} | {share(s['area'][region])} | "
                         f"{share(s['heat_mean'][region])} | {share(s['heat_blur'][region])} | "
                         f"{s['most_heat_mean'][region]} / {s['most_heat_blur'][region]} |")
    lines += ["", "Heat per unit area, mediastinum over lungs (median, IQR): " + "; ".join(
        f"{name}: {share(entry['summary']['density_ratio_mean'])} (mean fill), "
        f"{share(entry['summary']['density_ratio_blur'])} (blur fill)"
        for name, entry in results["sets"].items()), ""]
    return "\n".join(lines)


ABOUT = {"tests-data": "training images", "validation": "held out from training",
         "site-b": "acquired apart"}


def main(argv: list[str] | None = None) -> int:
    """Measure, and write the results and contact sheets; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m studies.evidence",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="int8", help="bundled variant (default: int8)")
    parser.add_argument("--limit", type=int, help="at most this many X-rays of each set")
    parser.add_argument("--out", type=Path, default=RESULTS / "evidence")
    args = parser.parse_args(argv)
    model = load(BUNDLED_MODELS, variant=args.variant)
    started = time.monotonic()
    results = {"command": " ".join(["python -m studies.evidence", *(argv or sys.argv[1:])]),
               "date": datetime.now(timezone.utc).date().isoformat(),
               "cpu": f"{cpu_name()} ({cpu_features().get('class', '?')})",
               "model": str(Path(model.path).relative_to(REPO)), "sets": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, paths in pneumonia_sets(args.limit).items():
        rows, tiles = measure(model, paths)
        results["sets"][name] = {"about": ABOUT[name], "summary": summarise(rows), "xrays": rows}
        sheet(tiles).save(args.out / f"sheet-{name}.jpg", quality=80)
        print(f"{name}: {len(rows)} X-rays, {time.monotonic() - started:.0f} s", file=sys.stderr)
    results["seconds"] = round(time.monotonic() - started)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
