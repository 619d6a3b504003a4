"""``spectrumkd curate``: flags over :func:`spectrumkd.jobs.curate`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spectrumkd.cli.flags import (
    add_schedule_flags,
    add_strategy_flags,
    schedule_config,
    spectrumkd_flags_given,
    strategy_options,
)


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
    add_strategy_flags(
        curate,
        "SpectrumKD also takes its schedule flags, and --baseline-epochs E gives any strategy "
        "the example visits of E full-data epochs",
    )
    curate.add_argument("--quiet", action="store_true")
    curate.set_defaults(run=cmd_curate)


def cmd_curate(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.console import print_plan
    from spectrumkd.curation.analyzer import describe_choice
    from spectrumkd.curation.strategies import settings_for_visit_budget, strategy_settings
    from spectrumkd.jobs import curate
    from spectrumkd.scoring import read_difficulties

    options = strategy_options(args)
    if args.strategy != "spectrumkd":
        given = spectrumkd_flags_given(args)
        if given:
            raise ValueError(
                f"{given[0]} is a SpectrumKD schedule flag; give the {args.strategy} strategy's "
                "settings as --option KEY=VALUE"
            )
    ids, values = read_difficulties(args.difficulties, column=args.column)
    if args.strategy == "spectrumkd":
        settings = schedule_config(args, len(ids))
        if options:  # --option on top of the schedule flags
            settings = strategy_settings("spectrumkd", {**settings.to_dict(), **options})
    else:
        settings = strategy_settings(args.strategy, options)
        if args.baseline_epochs is not None:  # the example visits of that many full epochs
            if "epochs_per_stage" in options:
                raise ValueError(
                    "--baseline-epochs sets epochs_per_stage to match the baseline's visits; "
                    "give one of --baseline-epochs and --option epochs_per_stage=N"
                )
            settings = settings_for_visit_budget(
                args.strategy, settings, len(ids), args.baseline_epochs
            )
    plan = curate(
        ids,
        values,
        settings,
        args.out,
        strategy=args.strategy,
        auto_lambda_b=args.lambda_b == "auto",
        quantile=args.auto_quantile,
    )
    console = Console(quiet=args.quiet)
    if "analyzer" in plan.metadata:
        console.print(describe_choice(plan.metadata["analyzer"]))
    print_plan(plan, console)
    console.print(f"wrote {Path(args.out) / 'schedule.json'}")
