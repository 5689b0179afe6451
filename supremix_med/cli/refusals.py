"""How every supremix-med command line ends: one-line refusals and exit statuses (the ``supremix-med`` commands, the
preprocessing modules' ``python -m preprocessing.<module>`` and bundle runs under ``python -m monai.bundle run``
alike)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence

__all__ = ["DEBUG_ENV", "EXIT_FAILED", "EXIT_REFUSED", "add_debug_argument", "one_line", "refuse_in_one_line", "run_cli"]

#: Exit status of a refused run: bad input (manifest, parameters, columns, a missing file), as argparse's own.
EXIT_REFUSED = 2
#: Exit status of a run its environment stopped: a full disk, a dead worker, an unwritable folder.
EXIT_FAILED = 1
#: Environment variable: set (to anything but ``0``) to see the traceback of a bundle run's error instead of its one
#: line, as ``--debug`` does for the command lines.
DEBUG_ENV = "SUPREMIX_MED_DEBUG"


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

    The error named is the one inside MONAI's ``RuntimeError("Failed to evaluate ...")`` wrappers when it is of a
    kind above (a bundle config run in this process), else the error itself.

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
    except (ValueError, OSError, RuntimeError) as error:
        named = _unwrap(error)
        if _status(named) is None:  # MONAI's wrapper around another kind of error: name the wrapper
            named = error
        print(f"{parser.prog}: error: {one_line(named)}", file=sys.stderr)
        raise SystemExit(_status(named)) from error
    finally:
        warnings.formatwarning = format_warning


def refuse_in_one_line(prog: str = "supremix-med") -> None:
    """End this process as :func:`run_cli` ends a command line when an expected error escapes: one line on stderr,
    ``<prog>: error: <message>``, and exit status 2 (refused) or 1 (environment).

    For a bundle run under MONAI's runner (the shared recipe's ``initialize`` calls it): MONAI wraps an error
    raised inside a config expression in ``RuntimeError("Failed to evaluate ...")``, which is looked through to
    the error itself. Any other error (a bug, an interrupt) keeps Python's full traceback, and with
    :data:`DEBUG_ENV` set every error does. Installed once per process (``sys.excepthook``), after
    ``torch.distributed.init_process_group`` where there is one: that installs a hook which buffers the hook it
    replaces to prefix ``[rank<N>]``, and an exit raised inside it would lose the buffered line.
    """
    if os.environ.get(DEBUG_ENV, "0") != "0" or getattr(sys.excepthook, "one_line", False):
        return
    fallback = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, traceback) -> None:
        named = _unwrap(error)
        status = _status(named)
        if status is None:
            fallback(kind, error, traceback)
            return
        print(f"{prog}: error: {one_line(named)}", file=sys.stderr)
        raise SystemExit(status)  # raised by the hook, it becomes the process's exit status

    hook.one_line = True
    sys.excepthook = hook


def _unwrap(error: BaseException) -> BaseException:
    """The error inside MONAI's wrappers: plain ``RuntimeError`` s raised ``from`` another error."""
    while type(error) is RuntimeError and error.__cause__ is not None:
        error = error.__cause__
    return error


def _status(error: BaseException) -> int | None:
    """The exit status of an error the commands expect (see :func:`run_cli`), or None for any other error."""
    if isinstance(error, (ValueError, FileNotFoundError)):
        return EXIT_REFUSED
    if isinstance(error, (OSError, RuntimeError)):
        return EXIT_FAILED
    return None
