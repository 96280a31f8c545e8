"""``pneumocnn info``: describe a model file: what it is, how it was made and checked."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumocnn.commands.command import OK, Command
from pneumocnn.commands.options import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this verb's options to ``parser``."""
    parser.add_argument("model", nargs="?", help="model file or folder of variants (default: the "
                                                 "bundled models)")
    parser.add_argument("--variant", help="with a folder: load this variant (int8, float16, ...) "
                                          "instead of the fastest")
    parser.add_argument("--json", action="store_true",
                        help="print the embedded description itself (JSON)")


def run(args: argparse.Namespace) -> int:
    """Print what the model is, how it was made and checked (``--json``: its description); return 0."""
    model = load_model(args)
    if args.json:
        print(model.description.to_json())
    else:
        print("\n".join(_summary(model)))
    return OK


def _summary(model) -> list[str]:
    """``pneumocnn info``'s readable lines about a loaded model: what it is, how it was made
    and checked, and what its digest is a digest of."""
    import hashlib

    from pneumocnn.clinic.site_calibration import calibration_report

    description = model.description
    info, spec = description.info, description.preprocessing
    provenance = info.get("provenance", {})
    versions = provenance.get("versions", {})
    chosen = f"; variant {model.variant}" if model.variant else ""
    steps = [name for name, used in (("margin crop", spec.crop != "none"),
                                     (spec.normalize, spec.normalize != "none")) if used]
    lines = [f"model: {model.path} ({info.get('architecture', '?')}, "
             f"{info.get('quantization', 'keras')}{chosen})",
             f"input: {spec.height} x {spec.width} px, {spec.channels} channel(s); "
             f"preprocessing: {', '.join([*steps, spec.resize + ' resize'])}",
             f"labels: {', '.join(description.labels)}; threshold {description.threshold:.3f}"
             f" ({info.get('threshold_source', 'source not recorded')}); calibration: "
             f"temperature {description.temperature:.3f}, bias {description.bias:.3f}"]
    if provenance:
        counts = provenance.get("train_counts")
        classes = (f" ({counts[0]} {description.labels[0]}, {counts[1]} {description.labels[1]})"
                   if counts else "")
        lines.append(f"trained: {provenance.get('created', '?')} with pneumocnn "
                     f"{versions.get('pneumocnn', '?')} (TensorFlow {versions.get('tensorflow', '?')})"
                     f" on {provenance.get('train_images', '?')} X-rays{classes}, "
                     f"{provenance.get('epochs', '?')} epochs")
    metrics = info.get("validation_metrics")
    if metrics:
        figures = ", ".join(f"{name} {_number(metrics.get(key))}" for name, key in (
            ("sensitivity", "sensitivity"), ("specificity", "specificity"),
            ("ROC AUC", "roc_auc"), ("ECE", "ece")))
        lines.append(f"validation: {metrics.get('n', '?')} X-rays at threshold "
                     f"{_number(metrics.get('threshold'))}: {figures}")
    lines += calibration_report(description)
    if description.sha256:
        whole = hashlib.sha256(Path(model.path).read_bytes()).hexdigest()
        lines += [f"digest: sha256 {description.sha256}, checked at load",
                  "  (the SHA-256 of the file with these 64 digits written as zeros, since a file "
                  "cannot hold its own hash;",
                  f"  so sha256sum of the file differs: it gives {whole})"]
    elif str(model.path).endswith(".keras"):
        lines.append("digest: none (a .keras file: every member's CRC-32 is checked at load)")
    else:
        lines.append("digest: none (made by pneumocnn 0.1.0 or another tool; re-stamp it with "
                     "`pneumocnn convert FILE --out FILE`)")
    lines.append("the whole description: pneumocnn info --json")
    return lines


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


COMMAND = Command("info", "describe a model file: what it is, how it was made and checked", add_arguments,
                  run)
