"""``spectrumkd`` command line: a thin layer of flags over :mod:`spectrumkd.jobs`.

One module per command (each with ``register(subparsers)``), the flags several commands share
in :mod:`spectrumkd.cli.flags`, and here ``main``: parse, run, and print a user's error as one
line (:mod:`spectrumkd.cli.user_errors`) while anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from spectrumkd.cli import (
    compare,
    curate,
    demo,
    distill,
    evaluate,
    judge,
    report,
    score,
    shrink,
)
from spectrumkd.cli.flags import PRECISIONS
from spectrumkd.cli.user_errors import (
    OUT_IS_A_FILE,
    USER_ERRORS,
    check_out_folder,
    option_name,
)

__all__ = [
    "PRECISIONS",
    "USER_ERRORS",
    "build_parser",
    "library_output",
    "main",
    "warnings_as_lines",
]

# In the order ``spectrumkd --help`` lists them.
COMMANDS = (score, curate, shrink, distill, demo, evaluate, judge, compare, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectrumkd", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


@contextmanager
def library_output(quiet: bool) -> Iterator[None]:
    """With ``--quiet``, the progress bars and notices of datasets, transformers and the hub
    client are off, so that the only line on stderr is an error; restored afterwards, as
    ``main`` may run again in the same process (the tests do)."""
    if not quiet:
        yield
        return
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    hub_off = hub.are_progress_bars_disabled()
    datasets_off = datasets.are_progress_bars_disabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    verbosity = (datasets.logging.get_verbosity(), transformers_logging.get_verbosity())
    hub.disable_progress_bars()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity[0])
        transformers_logging.set_verbosity(verbosity[1])
        if transformers_on:
            transformers_logging.enable_progress_bar()
        if not datasets_off:
            datasets.enable_progress_bars()
        if not hub_off:
            hub.enable_progress_bars()


@contextmanager
def warnings_as_lines(command: str) -> Iterator[None]:
    """The toolkit's own warnings (a damaged shard being rescored, a stale cache started over)
    as one line each on stderr, worded like the errors, whatever logging the host set up."""
    logger = logging.getLogger("spectrumkd")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"spectrumkd {command}: warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def main(argv: list[str] | None = None) -> int:
    from spectrumkd.data import OptionError

    args = build_parser().parse_args(argv)
    try:
        if args.command not in OUT_IS_A_FILE and getattr(args, "out", None) is not None:
            check_out_folder(args.out)
        with library_output(getattr(args, "quiet", False)), warnings_as_lines(args.command):
            args.run(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        if isinstance(error, OptionError):  # name the flag, not the Python argument
            text = error.spelled(option_name(args.command, error.option))
        else:
            text = str(error)
        message = text.splitlines()[0] if text.strip() else type(error).__name__
        print(f"spectrumkd {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
