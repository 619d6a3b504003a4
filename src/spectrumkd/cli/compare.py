"""``spectrumkd compare``: flags over :func:`spectrumkd.evaluation.compare_runs`."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    """Add the ``compare`` subcommand to an ``argparse`` subparsers object."""
    compare = commands.add_parser(
        "compare",
        help="per-set differences, relative gains and Wilcoxon tests of two evaluation folders",
    )
    compare.add_argument("run_a", metavar="RUN_A", help="base evaluation folder")
    compare.add_argument("run_b", metavar="RUN_B", help="new evaluation folder")
    compare.add_argument(
        "--out",
        default=None,
        metavar="FILE.json",
        help="where to write the comparison (default RUN_B/compare_<name of RUN_A>.json)",
    )
    compare.add_argument("--quiet", action="store_true")
    compare.set_defaults(run=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.evaluation import (
        compare_runs,
        comparison_table,
        default_out_path,
        write_comparison,
    )

    result = compare_runs(args.run_a, args.run_b)
    path = write_comparison(
        result, args.out if args.out is not None else default_out_path(args.run_a, args.run_b)
    )
    console = Console(quiet=args.quiet)
    console.print(comparison_table(result))
    console.print(f"wrote {path}")
