"""``spectrumkd demo``: flags over :func:`spectrumkd.demo.run_demo`."""

from __future__ import annotations

import argparse
from typing import Any

from spectrumkd.cli.flags import (
    METRICS,
    add_metric_option_flag,
    add_strategy_flags,
    metric_options,
    ranking_strategies,
    strategy_options,
)
from spectrumkd.curation.strategies import STRATEGIES


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="shrink, score, curate and distil (baseline vs +SpectrumKD) on the embedded default",
    )
    demo.add_argument(
        "--out",
        default=None,
        help="run folder (default runs/demo; a rerun reuses what is finished)",
    )
    demo.add_argument(
        "--rows", type=int, default=None, help="use only the first N Dolly rows (default all 1,000)"
    )
    demo.add_argument(
        "--num-layers", type=int, default=20, help="student layers kept of the teacher's 30"
    )
    demo.add_argument("--max-length", type=int, default=256)
    demo.add_argument(
        "--distill-rows",
        type=int,
        default=32,
        help="training rows of the baseline and +SpectrumKD distillations (0: skip them)",
    )
    demo.add_argument(
        "--baseline-epochs",
        type=int,
        default=2,
        help="epochs of the baseline; SpectrumKD gets as many optimiser steps",
    )
    add_strategy_flags(
        demo, "its epochs are set to the example visits of the baseline's --baseline-epochs"
    )
    demo.add_argument(
        "--metric",
        choices=METRICS,
        default=None,
        help="difficulty the strategy ranks the distillation rows by (default: the strategy's "
        "own: "
        + ", ".join(f"{name} {STRATEGIES[name].default_metric}" for name in ranking_strategies())
        + ")",
    )
    add_metric_option_flag(demo)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(run=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    from spectrumkd.demo import run_demo

    run_demo(
        out_dir=args.out,
        rows=args.rows,
        num_layers=args.num_layers,
        max_length=args.max_length,
        quiet=args.quiet,
        distill_rows=args.distill_rows,
        baseline_epochs=args.baseline_epochs,
        strategy=args.strategy,
        options=strategy_options(args),
        metric=args.metric,
        metric_options=metric_options(args),
    )
