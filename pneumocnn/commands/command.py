"""What a verb of the command line is (:class:`Command`) and the exit codes every verb returns
(see :mod:`pneumocnn.cli`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OK, SOME_FAILED, USAGE = 0, 1, 2


@dataclass(frozen=True)
class Command:
    """A verb: its name and help, how its options are added to its parser, and its handler,
    which takes the parsed options and returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    argument_default: Any = None  # argparse.SUPPRESS: options not given stay unset
