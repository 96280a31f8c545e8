"""pneumocnn.core.progress and the bars of ``predict`` and ``triage``: files done, rate and time
left on a terminal (a real pseudo-terminal here), nothing when stderr is not one."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import time

from helpers import TINY_INT8, XRAYS, real_images

from pneumocnn.cli import main
from pneumocnn.core.progress import progress_bar


def test_bar_counts_the_total_in_the_background(capsys):
    with progress_bar(enabled=True, count=lambda: range(5), description="scored") as bar:
        deadline = time.monotonic() + 10
        while bar.total is None and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(5):
            bar.update()
    err = capsys.readouterr().err
    assert bar.total == 5 and "scored" in err and "5/5" in err and "file/s" in err


def test_bar_resumed_and_silent_when_not_a_terminal(capsys):
    with progress_bar(10, initial=4, enabled=True) as bar:
        bar.update(6)
    assert "10/10" in capsys.readouterr().err
    with progress_bar(10, count=lambda: range(10)) as bar:  # auto: stderr is not a terminal
        bar.update(10)
    assert capsys.readouterr().err == ""


def on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run ``python -m pneumocnn ARGV`` with its stderr on a pseudo-terminal; return the exit
    code and what was drawn there."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    process = subprocess.Popen([sys.executable, "-m", "pneumocnn", *argv],
                               stdout=subprocess.DEVNULL, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal is closed: the process has ended
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    return process.wait(timeout=60), drawn.decode(errors="replace")


def test_predict_csv_draws_a_bar_on_a_terminal_only(tmp_path):
    argv = ["predict", str(XRAYS), "--csv", str(tmp_path / "out.csv"), "--model", str(TINY_INT8)]
    code, drawn = on_a_terminal(argv)
    assert code == 0
    assert re.search(r"scored: 100%.*\b48/48 \[", drawn), drawn  # done/total, elapsed<left
    assert "file/s" in drawn
    code, drawn = on_a_terminal([*argv, "--no-progress"])
    assert code == 0 and "file/s" not in drawn
    done = subprocess.run([sys.executable, "-m", "pneumocnn", *argv], capture_output=True,
                          text=True)
    assert done.returncode == 0 and "file/s" not in done.stderr  # stderr to a pipe


def test_triage_draws_its_bar_with_the_same_helper(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for path in real_images("NORMAL", 3):
        shutil.copy(path, scans / path.name)
    code, drawn = on_a_terminal(["triage", str(scans), "--out", str(tmp_path / "report"),
                                 "--no-heatmaps", "--model", str(TINY_INT8)])
    assert code == 0 and re.search(r"triage: 100%.*\b3/3 \[", drawn), drawn
    assert main(["triage", str(scans), "--out", str(tmp_path / "again"), "--no-heatmaps",
                 "--no-progress", "--model", str(TINY_INT8)]) == 0
