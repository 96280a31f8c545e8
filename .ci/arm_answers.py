"""The aarch64 job's Python side: the bundled model's answers on an emulated ARM CPU against x86-64.

Run by ``.ci/aarch64`` (which says how the emulated install is made), with three commands:

``cpuinfo``
    Under QEMU: print a ``/proc/cpuinfo`` for the CPU being emulated (its ``MIDR_EL1`` and the
    hardware capabilities the emulator gives the process). QEMU 7.2 shows an emulated program
    the host's x86 ``/proc/cpuinfo``, and LiteRT's CPU detection crashes on it; the job puts
    this file where QEMU's ``-L`` prefix makes the program read it instead.
``answers --out FILE [--pick] XRAYS...``
    Score the X-rays with every variant of the bundled model (``pneumocnn.load(variant=...)``)
    and write the answers as JSON; a variant that ``load`` refuses here (its known-answer check
    fails) is recorded with the reason. With ``--pick``, also what ``pneumocnn.load()`` picks.
``compare REFERENCE OTHER... --out DIR``
    Compare each emulated CPU's answers with the reference (x86-64) answers, write
    ``results.json`` and ``results.md`` into DIR and exit 1 when a variant that ``load`` accepts
    answers further from the reference than its known-answer tolerance on any X-ray, when a
    label differs, or when no variant is accepted on a CPU.

Only pneumocnn's public API scores (``load``, ``Model.predict``, ``Model.variant``); nothing here
times anything that is meant as a speed figure (emulated time is not).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import mmap
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

# The bit order of Linux's AT_HWCAP and AT_HWCAP2 on arm64 (asm/hwcap.h), by the names
# /proc/cpuinfo gives them.
HWCAP = (
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp",
    "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512",
    "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg"
)
HWCAP2 = (
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint",
    "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte", "ecv",
    "afp", "rpres", "mte3", "sme", "smei16i64", "smef64f64", "smei8i32", "smef16f32", "smeb16f32",
    "smef32f32", "smefa64", "wfxt", "ebf16", "sveebf16"
)
AT_HWCAP, AT_HWCAP2 = 16, 26


def cpuinfo() -> str:
    """A Linux arm64 ``/proc/cpuinfo`` for the CPU this process runs on: one entry per CPU the
    process may use, with the features of ``getauxval(AT_HWCAP/AT_HWCAP2)`` and the fields of
    ``MIDR_EL1`` (read with ``mrs``, which Linux and QEMU emulate for user programs)."""
    if platform.machine() != "aarch64":
        raise SystemExit(f"cpuinfo describes an aarch64 CPU; this is {platform.machine()}")
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    names = features(libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2))
    midr = _read_midr()
    entry = (f"BogoMIPS\t: 0.00\nFeatures\t: {' '.join(names)}\n"
             f"CPU implementer\t: {midr >> 24 & 0xff:#04x}\nCPU architecture: 8\n"
             f"CPU variant\t: {midr >> 20 & 0xf:#x}\nCPU part\t: {midr >> 4 & 0xfff:#05x}\n"
             f"CPU revision\t: {midr & 0xf}\n")
    return "".join(f"processor\t: {cpu}\n{entry}\n" for cpu in range(os.cpu_count() or 1))


def features(hwcap: int, hwcap2: int) -> list[str]:
    """The names ``/proc/cpuinfo`` gives the bits of ``AT_HWCAP`` and ``AT_HWCAP2``."""
    return [name for bits, names in ((hwcap, HWCAP), (hwcap2, HWCAP2))
            for bit, name in enumerate(names) if bits >> bit & 1]


def _read_midr() -> int:
    """``MIDR_EL1``, by running ``mrs x0, midr_el1; ret`` from an executable page."""
    code = bytes.fromhex("000038d5" "c0035fd6")
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    buffer = ctypes.c_char.from_buffer(page)
    try:
        return int(ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(buffer))())
    finally:
        del buffer
        page.close()


def cpu_description() -> str:
    """The CPU as ``/proc/cpuinfo`` tells this process: x86's model name, or arm64's MIDR
    fields (implementer, part) and features."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" in fields:
        return fields["model name"]
    return (f"implementer {fields.get('CPU implementer', '?')} part {fields.get('CPU part', '?')}"
            f"; features: {fields.get('Features', '?')}")


def answers(xrays: list[str], pick: bool) -> dict:
    """Every bundled variant's answers to ``xrays`` here, or why ``load`` refused it; with
    ``pick``, the variant ``pneumocnn.load()`` picks and its reason."""
    import pneumocnn
    from pneumocnn.runtime.model import bundled_models
    from pneumocnn.runtime.variants import variant_files

    started = time.monotonic()
    found: dict = {"machine": platform.machine(), "cpu": cpu_description(),
                   "python": platform.python_version(), "pneumocnn": pneumocnn.__version__,
                   "ai-edge-litert": metadata.version("ai-edge-litert"),
                   "numpy": metadata.version("numpy"), "pillow": metadata.version("pillow"),
                   "variants": {}}
    for name in variant_files(bundled_models()):
        try:
            model = pneumocnn.load(variant=name)
        except pneumocnn.ModelFileError as error:
            found["variants"][name] = {"accepted": False, "refused": error.reason}
            print(f"  {name}: {error.reason}", file=sys.stderr)
            continue
        predictions = model.predict(xrays)
        assert isinstance(predictions, list)
        failed = [p for p in predictions if not p.ok]
        if failed:
            raise SystemExit(f"{failed[0].source}: {failed[0].error}")
        known = model.description.known_answers
        found["variants"][name] = {
            "accepted": True, "tolerance": known.tolerance if known else None,
            "answers": {p.source: {"probability": p.probability, "label": p.label}
                        for p in predictions}}
        print(f"  {name}: {len(predictions)} X-rays scored", file=sys.stderr)
    if pick:
        try:
            choice = pneumocnn.load().variant
            assert choice is not None
            found["load"] = {"variant": choice.variant, "reason": choice.reason,
                             "refused": choice.refused}
        except pneumocnn.ModelFileError as error:
            found["load"] = {"variant": None, "reason": error.reason, "refused": {}}
        print(f"  load() picks {found['load']['variant']}: {found['load']['reason']}",
              file=sys.stderr)
    found["seconds"] = round(time.monotonic() - started, 1)
    return found


def compare(reference: dict, others: dict[str, dict]) -> tuple[dict, list[str]]:
    """Each CPU's answers against ``reference``: per variant whether ``load`` accepted it, the
    largest absolute difference in probability, on which X-ray, and whether every label is
    the same. Returns the comparison and the failures (sentences)."""
    failures = []
    rows = {}
    for cpu, found in others.items():
        accepted = [name for name, got in found["variants"].items() if got["accepted"]]
        if not accepted:
            failures.append(f"{cpu}: load() accepts no variant")
        rows[cpu] = {}
        for name, got in found["variants"].items():
            expected = reference["variants"][name]
            if not expected["accepted"]:
                raise SystemExit(f"the reference ({reference['machine']}) refused {name}: "
                                 f"{expected['refused']}")
            if not got["accepted"]:
                rows[cpu][name] = {"accepted": False, "refused": got["refused"]}
                continue
            if set(got["answers"]) != set(expected["answers"]):
                raise SystemExit(f"{cpu} {name}: scored other X-rays than the reference")
            differences = {source: abs(answer["probability"]
                                       - expected["answers"][source]["probability"])
                           for source, answer in got["answers"].items()}
            worst = max(differences, key=differences.__getitem__)
            mislabelled = sorted(source for source, answer in got["answers"].items()
                                 if answer["label"] != expected["answers"][source]["label"])
            tolerance = expected["tolerance"]
            rows[cpu][name] = {"accepted": True, "xrays": len(differences),
                               "max_abs_difference": differences[worst], "worst_xray": worst,
                               "tolerance": tolerance, "labels_equal": not mislabelled,
                               "labels_differing": mislabelled}
            if not math.isfinite(differences[worst]) or differences[worst] > tolerance:
                failures.append(f"{cpu} {name}: {worst} scored "
                                f"{got['answers'][worst]['probability']:.6f} against "
                                f"{expected['answers'][worst]['probability']:.6f} on x86-64 "
                                f"(tolerance {tolerance:g})")
            if mislabelled:
                more = ", ..." if len(mislabelled) > 3 else ""
                failures.append(f"{cpu} {name}: {len(mislabelled)} labels differ from x86-64's "
                                f"({', '.join(mislabelled[:3])}{more})")
    return rows, failures


def markdown(reference: dict, others: dict[str, dict], rows: dict, failures: list[str],
             job_seconds: float | None) -> str:
    """The comparison as a page: the setup, one row per CPU and variant, the failures."""
    first = next(iter(others.values()))
    lines = [
        "# The bundled model on aarch64 (QEMU user mode) against x86-64",
        "",
        f"Made by `bash .ci/aarch64` on {datetime.now(timezone.utc).date().isoformat()}: "
        f"pneumocnn {first['pneumocnn']}, ai-edge-litert {first['ai-edge-litert']}, numpy "
        f"{first['numpy']}, Pillow {first['pillow']}, Python {first['python']} (aarch64 wheels "
        f"in a Debian bookworm arm64 root); the reference: {reference['machine']}, "
        f"{reference['cpu']}, ai-edge-litert {reference['ai-edge-litert']}.",
        "Each X-ray scored by every variant `pneumocnn.load(variant=...)` accepts on the CPU; "
        "difference = |probability on the emulated CPU - probability on x86-64| (calibrated, "
        "as `predict` gives it); tolerance = the variant's known-answer tolerance.",
        "",
        "| emulated CPU | what the program saw | variant | accepted by load | X-rays "
        "| max abs difference | tolerance | labels equal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cpu, variants in rows.items():
        for name, row in variants.items():
            if row["accepted"]:
                cells = ["yes", str(row["xrays"]), f"{row['max_abs_difference']:.2g}",
                         f"{row['tolerance']:g}",
                         "yes" if row["labels_equal"] else
                         f"**no ({len(row['labels_differing'])})**"]
            else:
                cells = [f"**no**: {row['refused']}", "-", "-", "-", "-"]
            seen = others[cpu]["cpu"].split(";")[0]
            lines.append(f"| {cpu} | {seen} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "What `pneumocnn.load()` picked on each CPU (the timings are emulated ones: "
                  "they say nothing of speed on a real ARM CPU):", ""]
    for cpu, found in others.items():
        if "load" in found:
            lines.append(f"- {cpu}: {found['load']['variant']} ({found['load']['reason']})")
    features = {cpu: found["cpu"].partition("; features: ")[2] for cpu, found in others.items()}
    lines += ["", "Features each emulated CPU gave the program (`/proc/cpuinfo`, made from its "
                  "`AT_HWCAP` and `AT_HWCAP2`):", ""]
    lines += [f"- {cpu}: `{text}`" for cpu, text in features.items()]
    lines += ["", "Result: " + ("**failed**: " + "; ".join(failures) if failures else
                                "passed: every accepted variant within its tolerance of "
                                "x86-64 on every X-ray, every label the same.")]
    if job_seconds is not None:
        lines += ["", f"Wall time of the whole job (install included): {job_seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module's docstring); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("cpuinfo", help="print a /proc/cpuinfo for this aarch64 CPU")
    scoring = commands.add_parser("answers", help="score X-rays with every bundled variant")
    scoring.add_argument("xrays", nargs="+")
    scoring.add_argument("--out", type=Path, required=True)
    scoring.add_argument("--pick", action="store_true", help="also record load()'s pick")
    comparing = commands.add_parser("compare", help="compare CPUs' answers with the reference")
    comparing.add_argument("reference", type=Path)
    comparing.add_argument("others", type=Path, nargs="+", help="CPU.json files")
    comparing.add_argument("--out", type=Path, required=True)
    comparing.add_argument("--job-seconds", type=float)
    args = parser.parse_args(argv)
    if args.command == "cpuinfo":
        sys.stdout.write(cpuinfo())
        return 0
    if args.command == "answers":
        args.out.write_text(json.dumps(answers(args.xrays, args.pick), indent=1))
        return 0
    reference = json.loads(args.reference.read_text())
    others = {path.stem: json.loads(path.read_text()) for path in args.others}
    rows, failures = compare(reference, others)
    page = markdown(reference, others, rows, failures, args.job_seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {"reference": {key: reference[key] for key in reference if key != "variants"},
         "cpus": {cpu: {"seen": found["cpu"], "load": found.get("load"),
                        "seconds": found["seconds"], "variants": rows[cpu]}
                  for cpu, found in others.items()},
         "failures": failures, "job_seconds": args.job_seconds}, indent=1))
    (args.out / "results.md").write_text(page)
    print(page)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
