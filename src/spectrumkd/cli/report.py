"""``spectrumkd report RUN_DIR [RUN_DIR ...]``: flags over :mod:`spectrumkd.report`.

One folder: its own page. Several: one page comparing them, the first as the base
(:mod:`spectrumkd.report.comparison`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def _names(folders: list[Path]) -> list[str]:
    """Each run's folder name, or its path when two runs share a name (a/run vs b/run)."""
    names = [folder.resolve().name for folder in folders]
    if len(set(names)) == len(names):
        return names
    return [str(folder) for folder in folders]


def cmd_report(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.report import read_run, write_comparison_report, write_report

    console = Console(quiet=args.quiet)
    folders: list[Path] = args.run_dir
    if len(folders) > 1:
        # Every folder is read before anything is written: a typo is one line, no page.
        out = args.out or Path(os.path.commonpath([f.resolve() for f in folders])) / "comparison"
        page = write_comparison_report(list(zip(_names(folders), folders, strict=True)), out)
        console.print(f"wrote {page}", highlight=False)
        return
    run = read_run(folders[0])  # a missing folder is a FileNotFoundError: one line, exit 1
    page = write_report(folders[0], args.out, run=run)
    for section, notes in run.notes.items():
        for note in notes:
            console.print(f"[yellow]{section}[/]: {note}", highlight=False)
    console.print(f"wrote {page}", highlight=False)


def register(commands: Any) -> None:
    """Add ``report`` to the CLI's subcommands."""
    report = commands.add_parser(
        "report",
        help="run folder -> one HTML page with figures (works on partial runs); several run "
        "folders -> one page comparing them",
    )
    report.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        type=Path,
        nargs="+",
        help="a score, curate or distill folder; with several, the first is the base of the "
        "comparison",
    )
    report.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for index.html and the PNGs (default RUN_DIR/report; for a comparison, "
        "comparison/ in the runs' common parent folder)",
    )
    report.add_argument("--quiet", action="store_true", help="print nothing")
    report.set_defaults(run=cmd_report)
