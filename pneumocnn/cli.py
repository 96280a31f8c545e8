"""The ``pneumocnn`` command line: predict, explain, triage, listen, evaluate, calibrate, info,
train, convert.

Exit codes: 0 success; 1 done, but not all of it as asked (stderr says what): some inputs
could not be scored (the rest were), including inputs the input guard held back (DICOM tags
that say the image is not a frontal chest X-ray; ``--no-guard`` scores them), ``evaluate
--out`` could not draw its figures (matplotlib missing: the metrics and predictions were
written), or ``calibrate``'s cross-validated sensitivity fell short of its target (the site
model was written); 2 usage error, including a model or data folder that cannot be used, inputs
that hold no image at all (an empty folder), and a command whose optional dependencies are
missing (``train`` without ``pneumocnn[train]``).
``predict --csv`` ends with a summary line on stderr (scored, not scored, labelled positive,
time).
``predict --csv FILE --resume`` continues an interrupted run: inputs already in FILE are
skipped, new rows are appended. ``predict --dask CLUSTER`` scores on a Dask cluster
(:mod:`pneumocnn.clinic.dask_scoring`, imported only then). JSON output is strict: ``null``
where a number is undefined. What pydicom and its decoders log or warn about a file never
reaches stderr: each input that could not be scored gets one line of pneumocnn's own.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from pneumocnn.commands import calibrate, convert, evaluate, explain, info, listen, predict, train, triage
from pneumocnn.commands.command import USAGE
from pneumocnn.core.errors import NotFrontalChestError, PneumocnnError

# the verbs, in the order --help lists them
COMMANDS = tuple(module.COMMAND for module in (predict, evaluate, calibrate, explain, triage, listen,
                                               info, train, convert))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    from pneumocnn.runtime.native_stderr import drop_native_chatter

    drop_native_chatter()  # this process's stderr is the command line's
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(message)s")
    # pydicom warns about each oddity of a file it reads (and logs it too, which pneumocnn holds
    # back while reading); a file that cannot be used is reported once, by pneumocnn
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    if hasattr(sys.stdout, "reconfigure"):  # print any file name, even one that is not UTF-8
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return args.run(args)
    except (PneumocnnError, ValueError, OSError) as error:
        hint = " (--no-guard to go on all the same)" if isinstance(error, NotFrontalChestError) else ""
        print(f"pneumocnn {args.command}: error: {error}{hint}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"pneumocnn {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    """The parser of the whole command line: the common options and one subparser per verb."""
    from pneumocnn._version import __version__

    parser = argparse.ArgumentParser(
        prog="pneumocnn", description="Pneumonia triage on chest X-rays (a triage aid, not a "
                                      "diagnosis).")
    parser.add_argument("--version", action="version", version=f"pneumocnn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = commands.add_parser(command.name, help=command.help, description=command.description,
                                argument_default=command.argument_default)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


if __name__ == "__main__":
    sys.exit(main())
