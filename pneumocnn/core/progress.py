"""The progress bar of long runs (``predict``, ``predict --dask``, ``triage``): files done, rate
and time left, on stderr, drawn by tqdm only when stderr is a terminal.

When the number of files is not known up front (a folder or a manifest streamed as it is
scored), :func:`progress_bar` can count them on a background thread while the run goes on,
without holding the list: the bar shows files done and rate at once, and the time left as soon
as the count is in.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable

from tqdm import tqdm


def progress_bar(
    total: int | None = None,
    *,
    initial: int = 0,
    enabled: bool | None = None,
    count: Callable[[], Iterable[object]] | None = None,
    description: str = "scored",
) -> tqdm:
    """A tqdm bar over files on stderr: ``bar.update()`` after each file, ``bar.close()`` (or
    ``with``) at the end.

    ``enabled``: ``None`` draws it only when stderr is a terminal, ``False`` never (the bar's
    methods are then no-ops), ``True`` always. ``initial`` files are counted as done already
    (a resumed run) and are part of ``total``. Without ``total``, ``count`` (if given) is called
    on a daemon thread and what it yields is counted: the bar's total becomes ``initial`` plus
    that count when the counting ends (it stops early when the bar is closed)."""
    bar = tqdm(total=total, initial=initial, disable=None if enabled is None else not enabled,
               file=sys.stderr, unit="file", desc=description, dynamic_ncols=True,
               smoothing=0.1)
    if total is None and count is not None and not bar.disable:
        threading.Thread(target=_count, args=(bar, count, initial), daemon=True,
                         name="pneumocnn-progress-count").start()
    return bar


def _count(bar: tqdm, count: Callable[[], Iterable[object]], initial: int) -> None:
    found = 0
    for _ in count():
        if bar.disable:  # closed: the run is over
            return
        found += 1
    if not bar.disable:
        bar.total = initial + found
        bar.refresh()
