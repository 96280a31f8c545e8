"""``python -m benchmarks.dask_scaling [--quick] [--out DIR]``: scoring on Dask against one
process, and the client's memory on long manifests.

Needs ``pneumocnn[dask]`` (and ``[bench]`` for the machine record). Every measurement runs in a
fresh child process (``python -c``, with this repository first on ``PYTHONPATH``, as are the
Dask workers it starts), one after another, so that only one thing uses the CPU at a time:

1. Throughput, on the same ``--images`` real X-rays (distinct files of
   ``../shared/data/chest_xray/train`` when present, else the 48 of ``tests/data/xrays``
   repeated), listed in a manifest, with the bundled model's variant that ``load()`` chooses on
   this CPU at 1 thread (the same file for every row):

   - *one file at a time*: a loop over the files in one process, 1 interpreter thread, each
     file read, decoded and scored as a Dask worker does it (no Dask): the work per file;
   - *predict*: ``Model.predict_iter`` as ``pneumocnn predict --csv`` runs it (interpreter on
     all cores, files decoded on a thread per core), rows written to a CSV;
   - *local:1*, *local:2*: ``predict_on_dask`` on a ``LocalCluster`` of 1 or 2 single-threaded
     worker processes (started by the run, timed with it), rows written to a CSV.

   For each: the wall time from the first import to the last row, and the rate after the first
   rows arrived (the start-up of the process, the model and the cluster left out). The Dask
   overhead per file is the steady time per file on ``local:1`` less that of one file at a
   time.
2. Client memory: ``pneumocnn predict MANIFEST --csv OUT --dask local:2`` in a child whose peak
   RSS (``VmHWM``) is recorded. With ``local:N`` the client process also holds the Dask
   scheduler. The manifests list distinct absolute paths to the 48 X-rays of
   ``tests/data/xrays``, through symbolic links to its folder, one a line. Two settings: the
   bundled model (real scoring; ``--memory-real`` entries, e.g. 10k and 100k) and the tiny
   64 px model of ``tests/data`` (a real model that runs in a fraction of the bundled one's
   time, so that reading and decoding each file dominate and a million entries go through in
   about half an hour on 2 cores; ``--memory-tiny``, e.g. 10k and 1M).
3. Resuming: ``--resume`` of the same command on a CSV that holds a row for every entry of the
   longest tiny manifest (written for the purpose, as a finished run leaves it: the rows are
   read into the set of done names and the manifest is streamed past it; no cluster is
   started), and the size of that set (8-byte digests) against a Python set of the same path
   strings.

``--parts`` measures some of the three (``throughput``, ``memory``, ``resume``) and keeps the
others from the JSON already in ``--out``; each part records its own machine state and time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from benchmarks import REPO, RESULTS, SHARED_DATA, TEST_DATA

TINY = TEST_DATA / "tiny-int8.tflite"
TEST_XRAYS = TEST_DATA / "xrays"
TRAIN_XRAYS = SHARED_DATA / "chest_xray" / "train"

PEAK = """
def peak_rss_mb():
    try:  # VmHWM: a child's ru_maxrss can report its parent's (Linux keeps it across exec)
        return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

# argv: mode, manifest, model file, CSV out; prints one JSON line
THROUGHPUT = PEAK + """
import time
started = time.perf_counter()
import json, sys
from pneumocnn.runtime.model import load
from pneumocnn.runtime.predictions_csv import PredictionsCSV
mode, manifest, model_file, out = sys.argv[1:5]
if mode == "one file at a time":
    from pneumocnn.core.inputs import read_manifest
    model = load(model_file, threads=1)
    cutoff = model.threshold
    predictions = (model._score_or_error(name, name, cutoff) for name in read_manifest(manifest))
elif mode == "predict":
    predictions = load(model_file).predict_iter(manifest)
else:
    from pneumocnn.clinic.dask_scoring import predict_on_dask
    predictions = predict_on_dask(manifest, model_file, cluster=mode)
arrived = []
failed = 0
with PredictionsCSV(out) as sink:
    for prediction in predictions:
        sink.write(prediction)
        failed += not prediction.ok
        arrived.append(time.perf_counter())
# steady: from the end of the first burst of rows (a partition's rows arrive together) to the last
burst = sum(1 for t in arrived if t <= arrived[0] + 0.005)
print(json.dumps({"mode": mode, "rows": len(arrived), "failed": failed,
                  "wall_s": arrived[-1] - started, "first_row_s": arrived[0] - started,
                  "steady_images_per_s": (len(arrived) - burst) / (arrived[-1] - arrived[burst - 1]),
                  "peak_rss_mb": peak_rss_mb()}))
"""

# argv: the predict command line; prints one JSON line
CLIENT = PEAK + """
import time
started = time.perf_counter()
import json, sys
from pneumocnn.cli import main
code = main(sys.argv[1:])
print(json.dumps({"exit": code, "wall_s": time.perf_counter() - started,
                  "peak_rss_mb": peak_rss_mb()}))
"""

# argv: CSV; prints the traced size of a NameSet and of a set of str of its sources
NAME_SETS = """
import json, sys, tracemalloc
from pneumocnn.core.durable_files import resume_rows
from pneumocnn.runtime.predictions_csv import COLUMNS, NameSet
sizes = {}
for kind in ("NameSet", "set of str"):
    tracemalloc.start()
    names = (row["source"] for row in resume_rows(sys.argv[1], COLUMNS, "benchmark"))
    held = NameSet(names) if kind == "NameSet" else set(names)
    sizes[kind] = {"names": len(held), "mb": tracemalloc.get_traced_memory()[0] / 2**20}
    if kind == "NameSet":
        sizes[kind]["digests_mb"] = held._digests.nbytes / 2**20
    del held
    tracemalloc.stop()
print(json.dumps(sizes))
"""


def child(script: str, *argv: str) -> dict:
    """Run ``script`` in a fresh interpreter (this repository first on the path, for it and the
    Dask workers it spawns) and return the JSON of its last line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *argv], cwd=REPO,
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_manifest(path: Path, files: list[Path], count: int) -> Path:
    """A manifest of ``count`` lines cycling through ``files``."""
    with path.open("w") as stream:
        for index in range(count):
            stream.write(f"{files[index % len(files)]}\n")
    return path


def distinct_manifest(path: Path, links: Path, count: int) -> Path:
    """A manifest of ``count`` distinct paths to the 48 X-rays of tests/data/xrays: each
    ``LINKS/dNNNNNN/`` is a symbolic link to that folder, as many as it takes."""
    shipped = sorted(p.relative_to(TEST_XRAYS) for p in TEST_XRAYS.glob("*/*.jpeg"))
    links.mkdir(exist_ok=True)
    with path.open("w") as stream:
        for index in range(count):
            folder = links / f"d{index // len(shipped):06d}"
            if index % len(shipped) == 0 and not folder.exists():
                folder.symlink_to(TEST_XRAYS, target_is_directory=True)
            stream.write(f"{folder / shipped[index % len(shipped)]}\n")
    return path


def throughput_files(count: int) -> tuple[list[Path], str]:
    """``count`` distinct real X-rays when ../shared is here, else the 48 shipped, cycled."""
    if TRAIN_XRAYS.is_dir():
        found = sorted(TRAIN_XRAYS.glob("*/*.jpeg"))[:count]
        if len(found) == count:
            return found, f"{count} distinct files of ../shared/data/chest_xray/train (224 px JPEG)"
    shipped = sorted(TEST_XRAYS.glob("*/*.jpeg"))
    return shipped, f"the 48 X-rays of tests/data/xrays (224 px JPEG), cycled to {count}"


def model_file() -> tuple[str, str]:
    """The bundled model's file that ``load()`` chooses on this CPU at 1 thread, and why."""
    from pneumocnn.runtime.model import load

    chosen = load(threads=1)
    return chosen.path, str(chosen.variant)


def throughput(args: argparse.Namespace, scratch: Path) -> dict:
    """Images/s of each way of scoring the same files."""
    model, why = model_file()
    files, source = throughput_files(args.images)
    manifest = write_manifest(scratch / "throughput.txt", files, args.images)
    part: dict = {"model": {"file": Path(model).name, "variant": why}, "inputs": source,
                  "rows": []}
    for mode in ("one file at a time", "predict", "local:1", "local:2"):
        row = child(THROUGHPUT, mode, str(manifest), model, str(scratch / "out.csv"))
        print(f"  {mode}: {row['steady_images_per_s']:.0f} images/s steady, "
              f"{row['wall_s']:.1f} s wall", file=sys.stderr)
        part["rows"].append(row)
    return part


def memory(args: argparse.Namespace, scratch: Path) -> dict:
    """The client's peak RSS on manifests of growing length, and the cost of resuming."""
    model, _ = model_file()
    part: dict = {"rows": []}
    runs = [("bundled", model, n) for n in args.memory_real]
    runs += [("tiny", str(TINY), n) for n in args.memory_tiny]
    for name, model_path, count in runs:
        listed = distinct_manifest(scratch / f"manifest-{count}.txt", scratch / "links", count)
        out = scratch / f"memory-{name}-{count}.csv"
        argv = ["predict", str(listed), "--model", model_path, "--csv", str(out), "--dask",
                "local:2", "--no-progress"]
        row = {"model": name, "entries": count, "command": "predict --dask local:2",
               **child(CLIENT, *argv)}
        print(f"  {name} model, {count:,} entries: client peak RSS {row['peak_rss_mb']:.0f} MB, "
              f"{row['wall_s']:.0f} s", file=sys.stderr)
        part["rows"].append(row)
        listed.unlink()
        out.unlink()
    return part


def resume(args: argparse.Namespace, scratch: Path) -> dict:
    """``--resume`` of a CSV holding a row for every entry of the longest tiny manifest (as the
    run that wrote it leaves it): the done names read, the manifest streamed past them, no
    cluster started. And the done names as a NameSet against a set of the path strings."""
    from pneumocnn.core.inputs import read_manifest
    from pneumocnn.runtime.model import Prediction
    from pneumocnn.runtime.predictions_csv import PredictionsCSV

    count = max(args.memory_tiny)
    listed = distinct_manifest(scratch / "manifest.txt", scratch / "links", count)
    out = scratch / "done.csv"
    with PredictionsCSV(out) as sink:
        for name in read_manifest(listed):
            sink.write(Prediction(name, "NORMAL", 0.125, 0.5))
    argv = ["predict", str(listed), "--model", str(TINY), "--csv", str(out), "--dask", "local:2",
            "--no-progress", "--resume"]
    row = {"model": "tiny", "entries": count, "command": "predict --dask local:2 --resume "
           "(every row done)", **child(CLIENT, *argv)}
    print(f"  resume of {count:,} rows: peak RSS {row['peak_rss_mb']:.0f} MB", file=sys.stderr)
    return {"rows": [row], "done_names": child(NAME_SETS, str(out))}


PARTS = {"throughput": throughput, "memory": memory, "resume": resume}


def _taken(part: dict) -> str:
    machine = part["machine"]
    return (f"Taken {part['taken']} in {part['wall_seconds']:.0f} s; load average at start "
            f"{[round(x, 2) for x in machine['load_average_at_start'] or []]}, at the end "
            f"{[round(x, 2) for x in part['load_average_at_end'] or []]}.")


def table(results: dict) -> str:
    """The markdown report of the parts measured."""
    first = next(iter(results["parts"].values()))["machine"]
    flags = first["cpu_features"]
    lines = [
        "# Scoring on Dask: throughput against one process, and client memory", "",
        f"`python -m benchmarks.dask_scaling{' --quick' if results['quick'] else ''}`. Machine: "
        f"{first['cpu']} ({flags['class']}; flags {' '.join(flags['flags'] or [])}), "
        f"{first['cores']} cores, Python {first['python']}, dask {first['versions'].get('dask')}, "
        f"ai-edge-litert {first['versions'].get('ai-edge-litert')}. Each figure from one run of "
        "a fresh child process, one at a time."]
    part = results["parts"].get("throughput")
    if part:
        rows = {row["mode"]: row for row in part["rows"]}
        base = rows["one file at a time"]["steady_images_per_s"]
        one, local1 = 1000 / base, 1000 / rows["local:1"]["steady_images_per_s"]
        lines += [
            "", f"## Throughput: {part['inputs']}", "", _taken(part), "",
            f"Model: the bundled `{part['model']['file']}` (`load()` at 1 thread: "
            f"{part['model']['variant']}), the same file in every row. Steady: after the first "
            "rows arrived (process, model and cluster start-up left out); wall: from the first "
            "import to the last row, start-up included.", "",
            "| how | steady images/s | vs one file at a time | wall s | first row after s |",
            "|---|---|---|---|---|"]
        for mode, row in rows.items():
            lines.append(f"| {mode} | {row['steady_images_per_s']:.0f} | "
                         f"{row['steady_images_per_s'] / base:.2f}x | {row['wall_s']:.1f} | "
                         f"{row['first_row_s']:.1f} |")
        lines += ["", f"Dask overhead per file (steady `local:1` less one file at a time, 1 "
                  f"worker against 1 thread): {local1 - one:.3f} ms on {one:.3f} ms of work "
                  f"({(local1 - one) / one:.1%})."]
    part = results["parts"].get("memory")
    if part:
        lines += ["", "## Client memory: `pneumocnn predict MANIFEST --csv OUT --dask local:2 "
                  "--no-progress`", "", _taken(part), "",
                  "Peak RSS (VmHWM) of the client process, which with `local:2` also runs the "
                  "scheduler; the workers are other processes. Manifests of distinct absolute "
                  "paths to the 48 X-rays of tests/data/xrays (through symbolic links to its "
                  "folder).", "",
                  "| model | entries | command | client peak RSS MB | wall s |",
                  "|---|---|---|---|---|"]
        for row in part["rows"]:
            lines.append(f"| {row['model']} | {row['entries']:,} | {row['command']} | "
                         f"{row['peak_rss_mb']:.0f} | {row['wall_s']:.0f} |")
    part = results["parts"].get("resume")
    if part:
        row, names = part["rows"][0], part["done_names"]
        lines += ["", f"## Resuming {row['entries']:,} rows", "", _taken(part), "",
                  f"`pneumocnn predict MANIFEST --csv OUT --dask local:2 --no-progress --resume` "
                  f"on a CSV holding a row for each of the manifest's {row['entries']:,} entries "
                  f"(written for the purpose, as a finished run leaves it): client peak RSS "
                  f"{row['peak_rss_mb']:.0f} MB, {row['wall_s']:.0f} s (the rows read, the "
                  "manifest streamed past them; nothing left to score, so no cluster started). "
                  f"The done names, held after reading the CSV (tracemalloc): as a `NameSet` "
                  f"{names['NameSet']['mb']:.1f} MB (its digests "
                  f"{names['NameSet']['digests_mb']:.1f} MB), as a Python set of the path "
                  f"strings {names['set of str']['mb']:.1f} MB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Measure, write ``dask_scaling.md`` and ``dask_scaling.json`` to ``--out`` (a part not
    measured this time is kept from the JSON already there), print the table; returns the
    results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dask_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "quick",
                        help="folder for dask_scaling.md / .json (default: benchmarks/results/"
                             "quick, which git ignores)")
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=sorted(PARTS),
                        help="what to measure (default: all); the others are kept from --out")
    parser.add_argument("--quick", action="store_true",
                        help="development: 200 images, 1k/5k real and 1k/20k tiny entries")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--memory-real", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--memory-tiny", type=int, nargs="+", default=[10_000, 1_000_000])
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.memory_real, args.memory_tiny = 200, [1_000, 5_000], [1_000, 20_000]
    from benchmarks import report

    saved = args.out / "dask_scaling.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    results = {"quick": args.quick, "parts": results.get("parts", {})}
    for name in args.parts:
        started = time.perf_counter()
        machine = report.machine()
        for package in ("dask", "distributed", "tqdm"):
            machine["versions"][package] = metadata.version(package)
        if (machine["load_average_at_start"] or [0])[0] > 0.5:
            print(f"warning: load average {machine['load_average_at_start']}: other work is "
                  "running, timings will be low", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="pneumocnn-dask-") as scratch:
            part = PARTS[name](args, Path(scratch))
        results["parts"][name] = {
            "machine": machine, **part, "wall_seconds": time.perf_counter() - started,
            "load_average_at_end": report.load_average(),
            "taken": datetime.now(timezone.utc).isoformat(timespec="minutes")}
    text = table(results)
    from pneumocnn.core.durable_files import write_text

    write_text(args.out / "dask_scaling.md", text)
    write_text(saved, json.dumps(results, indent=1))
    print(text)
    return results


if __name__ == "__main__":
    main()
