"""``spectrumkd report RUN_DIR``: the subcommand, registered by ``spectrumkd.cli``."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.report.page import write_report
    from spectrumkd.report.readers import read_run

    console = Console(quiet=args.quiet)
    run = read_run(args.run_dir)  # a missing folder is a FileNotFoundError: one line, exit 1
    page = write_report(args.run_dir, args.out, run=run)
    for section, notes in run.notes.items():
        for note in notes:
            console.print(f"[yellow]{section}[/]: {note}", highlight=False)
    console.print(f"wrote {page}", highlight=False)


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``report`` to the CLI's subcommands."""
    report = commands.add_parser(
        "report", help="run folder -> one HTML page with figures (works on partial runs)"
    )
    report.add_argument(
        "run_dir", metavar="RUN_DIR", type=Path, help="a score, curate or distill folder"
    )
    report.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for index.html and the PNGs (default RUN_DIR/report)",
    )
    report.add_argument("--quiet", action="store_true", help="print nothing")
    report.set_defaults(run=cmd_report)
