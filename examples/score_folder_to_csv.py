"""Integration example: score every X-ray under a folder into a CSV, streaming.

    python examples/score_folder_to_csv.py SCANS_FOLDER results.csv [--model my.tflite]

Rows are written as results arrive, so a large folder never sits in memory; an unreadable
file gets a row with its error and the run goes on. Exit code 1 if any file failed.
"""

import argparse
import csv
import sys

import pneumocnn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("csv")
    parser.add_argument("--model", help="model file (default: the bundled model)")
    args = parser.parse_args()

    model = pneumocnn.load(args.model)
    failed = 0
    with open(args.csv, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["file", "label", "probability", "threshold", "error"])
        for p in model.predict_iter(args.folder):
            writer.writerow([p.source, p.label or "", f"{p.probability:.4f}", p.threshold,
                             p.error or ""])
            failed += not p.ok
    print(f"scored {args.folder} into {args.csv}; {failed} file(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
