"""``spectrumkd curate``: flags over :func:`spectrumkd.jobs.curate`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spectrumkd.cli.flags import add_schedule_flags, schedule_config


def register(commands: Any) -> None:
    curate = commands.add_parser("curate", help="difficulty table + config -> schedule.json")
    curate.add_argument(
        "--difficulties",
        required=True,
        help='JSONL of {"id": ..., "difficulty": ...} rows (or spectrumkd score output)',
    )
    curate.add_argument(
        "--column", default="difficulty", help="field holding the difficulty (default %(default)s)"
    )
    curate.add_argument("--out", required=True)
    add_schedule_flags(curate)
    curate.add_argument("--quiet", action="store_true")
    curate.set_defaults(run=cmd_curate)


def cmd_curate(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.console import print_plan
    from spectrumkd.curation.analyzer import describe_choice
    from spectrumkd.jobs import curate
    from spectrumkd.scoring import read_difficulties

    ids, values = read_difficulties(args.difficulties, column=args.column)
    plan = curate(
        ids,
        values,
        schedule_config(args, len(ids)),
        args.out,
        auto_lambda_b=args.lambda_b == "auto",
        quantile=args.auto_quantile,
    )
    console = Console(quiet=args.quiet)
    if "analyzer" in plan.metadata:
        console.print(describe_choice(plan.metadata["analyzer"]))
    print_plan(plan, console)
    console.print(f"wrote {Path(args.out) / 'schedule.json'}")
