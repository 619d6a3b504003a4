"""``spectrumkd judge``: flags over :func:`spectrumkd.evaluation.judge_eval_runs`."""

from __future__ import annotations

import argparse
from typing import Any

from spectrumkd.cli.flags import add_data_root_flag, resolve_data_root


def register(commands: Any) -> None:
    """Add the ``judge`` subcommand to an ``argparse`` subparsers object."""
    from spectrumkd.evaluation import DEFAULT_KEY_ENV, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE

    judge = commands.add_parser(
        "judge",
        help="LLM-as-judge win rate of a student's answers against a reference model's",
    )
    judge.add_argument(
        "--student-eval",
        required=True,
        metavar="DIR",
        help="`spectrumkd evaluate` output folder of the student",
    )
    judge.add_argument(
        "--reference-eval",
        required=True,
        metavar="DIR",
        help="`spectrumkd evaluate` output folder of the reference model (the paper: the teacher)",
    )
    judge.add_argument(
        "--suites",
        default=None,
        help="comma list of instruction sets (default: every one both folders hold)",
    )
    add_data_root_flag(judge, ", for the questions")
    judge.add_argument(
        "--run",
        dest="generation_run",  # args.run is the subcommand's handler
        default=None,
        help="generation run judged, e.g. seed10 or greedy (default: greedy, else the lowest "
        "seed both folders have)",
    )
    judge.add_argument(
        "--base-url",
        required=True,
        help="OpenAI-compatible endpoint, e.g. https://api.deepseek.com/v1",
    )
    judge.add_argument("--model", required=True, help="judge model, e.g. deepseek-chat")
    judge.add_argument(
        "--judge-key-env",
        default=DEFAULT_KEY_ENV,
        help="environment variable holding the API key (default %(default)s)",
    )
    judge.add_argument(
        "--temperature",
        type=float,
        default=DEFAULT_TEMPERATURE,
        help="judge sampling temperature (default %(default)s, the paper's)",
    )
    judge.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help="judge answer limit in tokens (default %(default)s)",
    )
    judge.add_argument(
        "--workers", type=int, default=4, help="requests in flight at once (default %(default)s)"
    )
    judge.add_argument(
        "--max-retries",
        type=int,
        default=5,
        help="retries of a failed request, with exponential back-off (default %(default)s)",
    )
    judge.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)"
    )
    judge.add_argument(
        "--out",
        default=None,
        help="writes OUT/judge/ (default: the student's evaluation folder)",
    )
    judge.add_argument("--limit", type=int, default=None, help="judge only the first N pairs")
    judge.add_argument("--quiet", action="store_true")
    judge.set_defaults(run=cmd_judge)


def cmd_judge(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.evaluation import JudgeConfig, judge_eval_runs

    checks = {
        "--temperature": (args.temperature, 0, ">= 0"),
        "--max-tokens": (args.max_tokens, 1, ">= 1"),
        "--workers": (args.workers, 1, ">= 1"),
        "--max-retries": (args.max_retries, 0, ">= 0"),
        "--limit": (args.limit, 1, ">= 1"),
    }
    for flag, (value, low, text) in checks.items():
        if value is not None and not value >= low:
            raise ValueError(f"{flag} must be {text}, got {value}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
    suites = None
    if args.suites is not None:
        suites = [name.strip() for name in args.suites.split(",") if name.strip()]
    config = JudgeConfig(
        base_url=args.base_url,
        model=args.model,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        key_env=args.judge_key_env,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        workers=args.workers,
    )
    judge_eval_runs(
        args.student_eval,
        args.reference_eval,
        args.out if args.out is not None else args.student_eval,
        config,
        suites=suites,
        data_root=resolve_data_root(args.data_root, needed=True),
        run=args.generation_run,
        limit=args.limit,
        progress=not args.quiet,
        console=Console(quiet=args.quiet),
    )
