"""pneumocnn.clinic.dask_scoring and ``predict --dask``: real LocalClusters of worker processes
scoring the real X-rays of tests/data into the CSV single-process ``predict`` writes; resume,
manifests, a worker killed mid-run, a file that kills its worker, and Dask absent."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_INT8, XRAYS, real_images
from test_cli import cut_last_row, read_csv

import pneumocnn
from pneumocnn.cli import main

pytestmark = pytest.mark.dask

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    """One LocalCluster of 2 single-threaded worker processes for the tests of this module that
    take a scheduler address (as ``--dask tcp://HOST:PORT`` on a cluster of one's own)."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def scans_with_a_bad_file(folder: Path) -> list[Path]:
    """The 48 shipped X-rays, a broken JPEG and (with pydicom) a DICOM file, in ``folder``."""
    folder.mkdir()
    files = []
    for path in sorted(XRAYS.glob("*/*.jpeg")):
        files.append(folder / path.name)
        files[-1].write_bytes(path.read_bytes())
    files.append(folder / "broken.jpeg")
    files[-1].write_bytes(b"\xff\xd8\xff not a whole JPEG")
    try:
        from test_dicom import write_dicom
    except ImportError:  # no pydicom: no DICOM file
        return files
    from PIL import Image

    with Image.open(real_images("PNEUMONIA", 1)[0]) as image:
        write_dicom(folder / "study.dcm", np.asarray(image.convert("L")))
    files.append(folder / "study.dcm")
    return files


def by_source(rows: list[dict]) -> dict[str, dict]:
    found = {row["source"]: row for row in rows}
    assert len(found) == len(rows), "a source appears twice"
    return found


def assert_same_rows(rows: list[dict], expected: list[dict]) -> None:
    """The same inputs, labels, thresholds and errors, probabilities within 1e-6 (any order)."""
    got, want = by_source(rows), by_source(expected)
    assert set(got) == set(want)
    for source, row in want.items():
        other = got[source]
        assert (other["label"], other["error"]) == (row["label"], row["error"]), source
        assert float(other["threshold"]) == pytest.approx(float(row["threshold"]), abs=1e-12)
        if row["error"]:
            assert other["probability"] == row["probability"] == ""  # not scored: no number
        else:
            assert float(other["probability"]) == pytest.approx(float(row["probability"]), abs=1e-6)


def test_local_cluster_csv_is_the_single_process_csv(tmp_path, capsys):
    """``--dask local:2`` starts a LocalCluster of 2 worker processes and closes it; its CSV
    holds the rows single-process ``predict --csv`` writes, error rows and exit code included."""
    files = scans_with_a_bad_file(tmp_path / "scans")
    single, dask = tmp_path / "single.csv", tmp_path / "dask.csv"
    argv = ["predict", str(tmp_path / "scans"), "--model", str(TINY_INT8)]
    assert main([*argv, "--csv", str(single)]) == 1
    assert main([*argv, "--csv", str(dask), "--dask", "local:2", "--partition-size", "7"]) == 1
    assert "1 input(s) could not be scored" in capsys.readouterr().err
    rows = read_csv(dask)
    assert_same_rows(rows, read_csv(single))
    assert len(rows) == len(files)
    assert [r["source"] for r in rows if r["error"]] == [str(tmp_path / "scans" / "broken.jpeg")]


def test_resume_on_a_cluster_scores_only_what_is_missing(client, tmp_path, capsys):
    scans_with_a_bad_file(tmp_path / "scans")
    out = tmp_path / "out.csv"
    argv = ["predict", str(tmp_path / "scans"), "--model", str(TINY_INT8), "--csv", str(out),
            "--dask", client.scheduler.address, "--partition-size", "5"]
    assert main(argv) == 1
    complete = read_csv(out)
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:20]))  # as if killed after 19 rows...
    cut_last_row(out)  # ...the last of them cut in half
    kept = read_csv(out)[:-1]
    assert main([*argv, "--resume"]) == 1  # the broken file's row is kept, and counted
    assert "18 input(s) already in" in capsys.readouterr().err
    rows = read_csv(out)
    assert rows[:18] == kept
    assert_same_rows(rows, complete)
    assert main([*argv, "--resume"]) == 1 and read_csv(out) == rows  # nothing left to do


def test_manifests_text_and_csv(client, tmp_path):
    """A .txt manifest (relative paths against its folder, comments, blank lines) and a .csv
    manifest (a path column among others) score on the cluster as their files do alone."""
    files = scans_with_a_bad_file(tmp_path / "scans")
    lists = tmp_path / "lists"
    lists.mkdir()
    text = lists / "archive.txt"
    text.write_text("# the archive\n\n" + "".join(f"../scans/{p.name}\n" for p in files[:30])
                    + "  \n# end\n")
    table = lists / "archive.csv"
    table.write_text("patient,path\n" + "".join(f"P{i},{p}\n" for i, p in enumerate(files[30:])))
    expected = tmp_path / "expected.csv"
    assert main(["predict", *map(str, files), "--model", str(TINY_INT8), "--csv",
                 str(expected)]) == 1
    want = [{**row, "source": row["source"].replace(str(tmp_path / "scans"), str(lists / "../scans"))}
            if Path(row["source"]) in files[:30] else row for row in read_csv(expected)]
    out = tmp_path / "out.csv"
    assert main(["predict", str(text), str(table), "--model", str(TINY_INT8), "--csv", str(out),
                 "--dask", client.scheduler.address, "--partition-size", "8"]) == 1
    assert_same_rows(read_csv(out), want)


def test_manifest_entries_naming_a_folder_or_a_manifest_get_the_same_error_rows(client,
                                                                                  tmp_path):
    """A worker scores each entry as one file, as ``predict`` does without Dask: a folder or
    a manifest listed in a manifest is an error row, not expanded."""
    from pneumocnn.clinic.dask_scoring import predict_on_dask

    shutil.copy(real_images("NORMAL", 1)[0], tmp_path / "a.jpeg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "inner.txt").write_text("a.jpeg\n")
    manifest = tmp_path / "list.txt"
    manifest.write_text("a.jpeg\nsub\ninner.txt\n")
    alone = {row.source: row for row in pneumocnn.load(TINY_INT8).predict(manifest)}
    on_dask = {row.source: row for row in predict_on_dask(manifest, TINY_INT8, cluster=client)}
    assert {name: row.error for name, row in on_dask.items()} == {
        name: row.error for name, row in alone.items()}
    assert on_dask[str(tmp_path / "a.jpeg")].ok and not on_dask[str(tmp_path / "sub")].ok


def test_a_worker_killed_mid_run_loses_and_repeats_no_row(client, tmp_path):
    """SIGKILL to a worker process while it holds tasks: its tasks run again on the other (and
    on its restarted self); the CSV gets each input exactly once and the run exits 0."""
    count = 2000
    links = tmp_path / "links"
    links.mkdir()
    images = sorted(XRAYS.glob("*/*.jpeg"))
    names = []
    for index in range(count):  # distinct names for the 48 real files
        names.append(links / f"xray-{index:05d}.jpeg")
        names[-1].symlink_to(images[index % len(images)])
    manifest = tmp_path / "manifest.lst"
    manifest.write_text("".join(f"{name}\n" for name in names))
    out = tmp_path / "out.csv"
    run = subprocess.Popen(
        [sys.executable, "-m", "pneumocnn", "predict", str(manifest), "--model", str(TINY_INT8),
         "--csv", str(out), "--dask", client.scheduler.address, "--partition-size", "40"],
        stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and run.poll() is None and time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") > 200:
            busy = [worker for worker, keys in client.processing().items()
                    if any(str(key).startswith("pneumocnn-predict") for key in keys)]
            if busy:
                pids = client.run(os.getpid, workers=busy[:1])
                killed = (busy[0], pids[busy[0]], out.read_bytes().count(b"\n") - 1)
                os.kill(killed[1], signal.SIGKILL)
        time.sleep(0.005)
    _, stderr = run.communicate(timeout=180)
    assert killed is not None, "the run ended before a worker could be killed"
    assert killed[2] < count, "killed after the last row"
    assert run.returncode == 0, stderr
    rows = read_csv(out)
    assert sorted(row["source"] for row in rows) == sorted(map(str, names))
    assert not any(row["error"] for row in rows)
    client.wait_for_workers(2, timeout=180)  # the nanny restarts the killed worker
    assert killed[1] not in client.run(os.getpid).values()


def test_a_file_that_kills_its_worker_gets_an_error_row(client, tmp_path):
    """A partition whose worker dies on every try (here: Dask's allowed failures set to 0, and
    a plugin that makes reading a file named ``poison*`` kill the worker process, as a decoder
    crash would) is tried again one file a task: that file gets an error row, the others their
    scores. One task in flight, so that no other file shares the poisoned worker."""
    import distributed

    from pneumocnn.clinic.dask_scoring import KILLED, predict_on_dask

    class Poison(distributed.WorkerPlugin):
        name = "pneumocnn-test-poison"

        def setup(self, worker):
            import pneumocnn.clinic.dask_scoring as scoring

            self.original = original = scoring.load_pixels

            def load_pixels(item, *args, **kwargs):
                if os.path.basename(str(item)).startswith("poison"):
                    os._exit(1)
                return original(item, *args, **kwargs)

            scoring.load_pixels = load_pixels

        def teardown(self, worker):
            import pneumocnn.clinic.dask_scoring as scoring

            scoring.load_pixels = self.original

    files = [str(p) for p in real_images("NORMAL", 3)]
    poison = tmp_path / "poison.jpeg"
    poison.write_bytes(Path(files[0]).read_bytes())
    allowed = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    client.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 0))
    client.register_plugin(Poison())
    try:
        rows = list(predict_on_dask([files[0], str(poison), *files[1:]], TINY_INT8,
                                    cluster=client, partition_size=4, window=1))
    finally:
        client.unregister_worker_plugin(Poison.name)
        client.run_on_scheduler(
            lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", allowed))
        client.wait_for_workers(2, timeout=180)
    got = {row.source: row for row in rows}
    assert len(rows) == 4 and got[str(poison)].error == KILLED
    import pneumocnn

    model = pneumocnn.load(TINY_INT8)
    for name in files:
        assert got[name].probability == pytest.approx(model.predict(name).probability, abs=1e-6)


def test_in_memory_inputs_and_bad_options(client):
    from pneumocnn.clinic.dask_scoring import predict_on_dask

    image = real_images("NORMAL", 1)[0]
    rows = list(predict_on_dask([image.read_bytes(), image], TINY_INT8, cluster=client))
    assert sorted(row.ok for row in rows) == [False, True]
    assert "not a file path" in next(row.error for row in rows if not row.ok)
    with pytest.raises(ValueError, match="local:N"):
        next(predict_on_dask([image], TINY_INT8, cluster="local:many"))
    with pytest.raises(ValueError, match="partition_size"):
        next(predict_on_dask([image], TINY_INT8, cluster=client, partition_size=0))
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\], got 1.5"):
        next(predict_on_dask([image], TINY_INT8, cluster=client, threshold=1.5))
    assert main(["predict", str(image), "--dask", "local:0", "--model", str(TINY_INT8)]) == 2
    assert main(["predict", str(image), "--partition-size", "3", "--model", str(TINY_INT8)]) == 2
