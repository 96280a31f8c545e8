"""Keep known chatter of native libraries off stderr, and nothing else.

LiteRT's C++ logger prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` to the
process's stderr the first time an interpreter applies its default CPU delegate. Its minimum
severity is a C++ static that neither ``TF_CPP_MIN_LOG_LEVEL`` (TensorFlow's own logger) nor
any interpreter option reaches, and turning the delegate off to silence it would make every
model call 3 to 5 times slower. So while an interpreter is made, :func:`dropping` points file
descriptor 2 at a pipe whose reader copies every line back to the real stderr as it arrives,
except the exact lines named: a warning or an error of the library still gets through.

Descriptor 2 belongs to the process, not to a library: the filter is off until the process's
owner turns it on with :func:`drop_native_chatter` (the command line does, for its own
process); an application that embeds pneumocnn keeps its stderr untouched.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

LITERT_CHATTER = frozenset({b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."})

_LOCK = threading.Lock()  # one redirection of descriptor 2 at a time in this process
_ENABLED = threading.Event()  # set by drop_native_chatter()


def drop_native_chatter() -> None:
    """Let :func:`dropping` filter descriptor 2 in this process from now on (for a program that
    owns its stderr, as the command line does)."""
    _ENABLED.set()


@contextlib.contextmanager
def dropping(lines: frozenset[bytes] = LITERT_CHATTER) -> Iterator[None]:
    """While the block runs, what anything in this process writes to file descriptor 2 reaches
    the real stderr line by line, less the lines exactly equal to one of ``lines``. Where
    descriptor 2 cannot be duplicated (no stderr at all), or before :func:`drop_native_chatter`,
    the block runs as it is."""
    if not _ENABLED.is_set():
        yield
        return
    with _LOCK:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:
            yield
            return
        read_end, write_end = os.pipe()
        copier = threading.Thread(target=_copy, args=(read_end, saved, lines), daemon=True)
        copier.start()
        os.dup2(write_end, 2)
        os.close(write_end)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)  # the pipe's last writer closes: the copier reads its end
            copier.join(timeout=5.0)  # longer only if a child made meanwhile holds the pipe
            if not copier.is_alive():
                os.close(saved)


def _copy(read_end: int, sink: int, dropped: frozenset[bytes]) -> None:
    """Copy lines from ``read_end`` to ``sink`` until the pipe closes, leaving out ``dropped``."""
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as source:
        while chunk := source.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line + b"\n" for line in lines if line.rstrip(b"\r") not in dropped]
            if kept:
                _write_all(sink, b"".join(kept))
    if pending and pending.rstrip(b"\r") not in dropped:
        _write_all(sink, pending)


def _write_all(sink: int, data: bytes) -> None:
    while data:
        data = data[os.write(sink, data):]
