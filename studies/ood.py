"""Would simple image statistics tell a chest X-ray from anything else? The measurement behind
the decision not to ship an image-level out-of-distribution check (the input guard reads DICOM
tags only).

``python -m studies.ood [--data FOLDER]`` computes seven statistics of each image (on a
128 x 128 view): colourfulness (Hasler and Suesstrunk), mean, standard deviation, left-right
symmetry, edge density (mean absolute gradient over the standard deviation), the brightness of
the mediastinum against the lung fields, and histogram entropy; then applies a candidate rule
(flag when colourfulness > 10, standard deviation < 12, entropy < 5 bits, edge density > 0.6 or
< 0.06) to every X-ray under FOLDER (default: the data set's ``train``, 5,216 X-rays) and to
700 images made here (100 each of pixel noise, linear gradients, text pages, 1/f "cloud"
textures, coloured shapes, the same shapes in gray, flat fields), and prints the false flags
and the catch rate of each rule and of all together.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from benchmarks import SHARED_DATA

SIDE = 128
RULES: dict[str, Callable[[dict[str, float]], bool]] = {
    "colourful (> 10)": lambda s: s["colour"] > 10,
    "flat (std < 12)": lambda s: s["std"] < 12,
    "few levels (entropy < 5 bits)": lambda s: s["entropy"] < 5.0,
    "busy (edges > 0.6)": lambda s: s["edges"] > 0.6,
    "smooth (edges < 0.06)": lambda s: s["edges"] < 0.06,
}
MADE = ("noise", "gradient", "text", "clouds", "shapes", "gray shapes", "flat")


def statistics(image: Image.Image) -> dict[str, float]:
    """The seven statistics of one image."""
    rgb = np.asarray(image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR),
                     dtype=np.float64)
    red_green = rgb[..., 0] - rgb[..., 1]
    yellow_blue = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colour = (np.hypot(red_green.std(), yellow_blue.std())
              + 0.3 * np.hypot(red_green.mean(), yellow_blue.mean()))
    gray = rgb @ np.array([0.299, 0.587, 0.114])
    spread = gray.std() + 1e-9
    centred = (gray - gray.mean()) / spread
    edges = (np.abs(np.diff(gray, axis=1)).mean() + np.abs(np.diff(gray, axis=0)).mean()) / spread
    middle = gray[int(0.3 * SIDE) : int(0.7 * SIDE)]

    def band(start: float, stop: float) -> float:
        return float(middle[:, int(start * SIDE) : int(stop * SIDE)].mean())

    histogram = np.bincount(np.rint(gray).astype(int).ravel(), minlength=256) / gray.size
    present = histogram[histogram > 0]
    return {
        "colour": float(colour), "mean": float(gray.mean()), "std": float(gray.std()),
        "symmetry": float((centred * centred[:, ::-1]).mean()), "edges": float(edges),
        "mediastinum": (band(0.42, 0.58) - 0.5 * (band(0.15, 0.35) + band(0.65, 0.85))) / spread,
        "entropy": float(-(present * np.log2(present)).sum()),
    }


def _file_statistics(path: Path) -> dict[str, float]:
    with Image.open(path) as image:
        image.draft("RGB" if image.mode == "RGB" else "L", (2 * SIDE, 2 * SIDE))
        return statistics(image)


def made_images(kind: str, count: int, rng: np.random.Generator) -> Iterator[Image.Image]:
    """``count`` images of one kind that are not X-rays."""
    y, x = np.mgrid[0:256, 0:256] / 255.0
    for _ in range(count):
        if kind == "noise":
            yield Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8))
        elif kind == "gradient":
            angle = rng.uniform(0, 2 * np.pi)
            ramp = np.cos(angle) * x + np.sin(angle) * y
            yield Image.fromarray(np.rint(255 * (ramp - ramp.min()) / np.ptp(ramp)).astype(np.uint8))
        elif kind == "text":
            page = Image.new("L", (256, 256), 255)
            draw = ImageDraw.Draw(page)
            for line in range(int(rng.integers(5, 20))):
                letters = "".join(chr(int(c)) for c in rng.integers(65, 91, 30))
                draw.text((int(rng.integers(0, 40)), 12 * line), letters, fill=0)
            yield page
        elif kind == "clouds":  # 1/f noise, the statistics of natural scenes
            frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.fftfreq(256)))
            frequency[0, 0] = 1.0
            spectrum = rng.normal(size=(256, 256)) + 1j * rng.normal(size=(256, 256))
            field = np.real(np.fft.ifft2(spectrum / frequency ** rng.uniform(1.5, 2.5)))
            yield Image.fromarray(np.rint(255 * (field - field.min()) / np.ptp(field)).astype(np.uint8))
        elif kind in ("shapes", "gray shapes"):
            scene = Image.new("RGB", (256, 256), tuple(int(c) for c in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(scene)
            for _ in range(int(rng.integers(3, 15))):
                left, top = (int(v) for v in rng.integers(0, 200, 2))
                width, height = (int(v) for v in rng.integers(10, 120, 2))
                draw.ellipse((left, top, left + width, top + height),
                             fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            scene = scene.filter(ImageFilter.GaussianBlur(rng.uniform(0, 3)))
            yield scene.convert("L") if kind == "gray shapes" else scene
        else:  # flat
            yield Image.new("L", (256, 256), int(rng.integers(0, 256)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "chest_xray" / "train",
                        help="a folder of real X-rays, searched recursively (default: %(default)s)")
    args = parser.parse_args()
    paths = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not paths:
        parser.error(f"no X-rays under {args.data}")
    with ThreadPoolExecutor() as pool:
        xrays = list(pool.map(_file_statistics, paths))
    rng = np.random.default_rng(0)
    made = {kind: [statistics(image) for image in made_images(kind, 100, rng)] for kind in MADE}
    columns = [*RULES, "any rule"]

    def flagged(items: list[dict[str, float]], column: str) -> int:
        rules = list(RULES.values()) if column == "any rule" else [RULES[column]]
        return sum(any(rule(s) for rule in rules) for s in items)

    print(f"| images | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    print(f"| real X-rays under {args.data} (false flags) | "
          + " | ".join(f"{flagged(xrays, c)} / {len(xrays)}" for c in columns) + " |")
    for kind, items in made.items():
        print(f"| made: {kind} (caught) | "
              + " | ".join(f"{flagged(items, c)} / {len(items)}" for c in columns) + " |")
    print("\nReal X-rays, range of each statistic (min / 1st percentile / median / 99th / max):")
    for key in xrays[0]:
        values = np.array([s[key] for s in xrays])
        print(f"- {key}: " + " / ".join(f"{v:.2f}" for v in
                                       (values.min(), *np.percentile(values, [1, 50, 99]), values.max())))


if __name__ == "__main__":
    main()
