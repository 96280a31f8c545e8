"""``pneumocnn convert``: make a self-describing ``.tflite``, or re-stamp one."""

from __future__ import annotations

import argparse

from pneumocnn.commands.command import OK, Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this verb's options to ``parser``."""
    parser.add_argument("source", help=".keras, .h5 (model or seed weights) or SavedModel folder; "
                        "or a pneumocnn .tflite to re-stamp (weights and description kept)")
    parser.add_argument("--out", required=True, help="output .tflite file (may be the source)")
    parser.add_argument("--quantization", choices=("float32", "float16", "dynamic-int8", "int8"),
                        help="default: int8 with --data, else float16; a .tflite source keeps "
                             "its own")
    parser.add_argument("--data", help="folder of X-rays to calibrate int8 quantization on")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--architecture", default="seed-to-be",
                        help="architecture of a weights-only .h5 file")


def run(args: argparse.Namespace) -> int:
    """Convert or re-stamp ``args.source`` into ``args.out``; return 0."""
    from pneumocnn import convert

    out = convert(args.source, args.out, quantization=args.quantization,
                  representative=args.data, threshold=args.threshold,
                  architecture=args.architecture)
    print(f"wrote {out}")
    return OK


COMMAND = Command("convert", "make a self-describing .tflite (needs [train]), or re-stamp a pneumocnn "
                  ".tflite with a fresh digest", add_arguments, run)
