"""How every supremix-med command line ends: one-line refusals and exit statuses (the ``supremix-med`` commands and
the preprocessing modules' ``python -m preprocessing.<module>`` alike)."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

__all__ = ["EXIT_FAILED", "EXIT_REFUSED", "add_debug_argument", "one_line", "run_cli"]

#: Exit status of a refused run: bad input (manifest, parameters, columns, a missing file), as argparse's own.
EXIT_REFUSED = 2
#: Exit status of a run its environment stopped: a full disk, a dead worker, an unwritable folder.
EXIT_FAILED = 1


def add_debug_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--debug`` (show an error's traceback instead of its one-line message); return ``parser``."""
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    return parser


def one_line(message: object) -> str:
    """``message`` as one line: every run of whitespace (newlines included) folded to one space."""
    return " ".join(str(message).split())


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
            run: Callable[[argparse.Namespace], None], extra: bool = False) -> None:
    """Parse ``argv`` with ``parser`` and call ``run(args)``: the ``main`` of every command line.

    With ``extra``, arguments the parser does not know are not refused but given to ``run`` as ``args.extra`` (a
    list), e.g. a bundle's ``--key value`` overrides.

    An error the command expects ends the program with one line on stderr, ``<prog>: error: <message>``
    (whitespace folded; the messages name the file and say what to do), and an exit status:

    - ``EXIT_REFUSED`` (2, argparse's status for bad arguments) for a refused input: ``ValueError`` (bad
      manifest, missing column, a cache built with other parameters, no sample could be preprocessed) or
      ``FileNotFoundError``;
    - ``EXIT_FAILED`` (1) for the environment: another ``OSError`` (a full disk, a folder without write
      permission) or ``RuntimeError`` (a worker process died).

    Warnings (e.g. samples left out of a cache) print as one line each, ``<prog>: warning: <message>``.
    With ``--debug`` nothing is caught: errors and warnings show in full, with their traceback.

    Raises:
        SystemExit: on such an error (status above), or from argparse.
    """
    if extra:
        args, args.extra = parser.parse_known_args(argv)
    else:
        args = parser.parse_args(argv)
    if args.debug:
        run(args)
        return
    format_warning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"{parser.prog}: warning: {one_line(message)}\n"
    try:
        run(args)
    except (ValueError, FileNotFoundError) as error:
        _exit(parser.prog, error, EXIT_REFUSED)
    except (OSError, RuntimeError) as error:
        _exit(parser.prog, error, EXIT_FAILED)
    finally:
        warnings.formatwarning = format_warning


def _exit(prog: str, error: BaseException, status: int) -> None:
    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
    raise SystemExit(status) from error


