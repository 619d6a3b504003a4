"""``spectrumkd score``: flags over :func:`spectrumkd.jobs.score`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spectrumkd.cli.flags import (
    METRICS,
    PRECISIONS,
    add_data_flags,
    add_metric_option_flag,
    add_model_flags,
    data_config,
    metric_options,
    model_options,
)


def register(commands: Any) -> None:
    score = commands.add_parser("score", help="model + data -> difficulty table (spectrum.jsonl)")
    score.add_argument(
        "--model",
        default="smollm2",
        help="initial student: smollm2, a .gguf file, a local folder or a hub id",
    )
    score.add_argument("--out", required=True, help="output folder (a rerun resumes there)")
    add_data_flags(score)
    add_model_flags(score)
    score.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="padded tokens per batch (default: 1024 on CPU, 16384 on GPU)",
    )
    score.add_argument("--max-batch-size", type=int, default=64)
    score.add_argument(
        "--workers",
        type=int,
        default=None,
        help="CPU processes scoring a share of the shards each, one thread apiece (default: 2 "
        "on a CPU where torch has exactly 2 threads, else 1; the cross-entropy metrics)",
    )
    score.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="compute precision of the forward: auto picks bf16 autocast where the device has "
        "fast bf16 (a CUDA GPU with bf16; a CPU with AMX or AVX512-BF16, detected) and float32 "
        "elsewhere; the cross-entropy is float32 in all (a rerun resumes only at the same one)",
    )
    score.add_argument(
        "--reduction",
        choices=("mean", "sum"),
        default="mean",
        help="difficulty = mean or sum of response CE",
    )
    score.add_argument(
        "--metric",
        choices=METRICS,
        default="ce_mean",
        help="difficulty metric (default %(default)s, the student's mean response CE); "
        "length and unigram_entropy need no model, the reflection_* ones generate an answer "
        "per row (slow on a CPU)",
    )
    add_metric_option_flag(score)
    score.add_argument(
        "--lambda-a", type=float, default=0.1, help="zones written into spectrum.jsonl"
    )
    score.add_argument("--lambda-b", type=float, default=0.1)
    score.add_argument("--quiet", action="store_true")
    score.set_defaults(run=cmd_score)


def cmd_score(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.jobs import score
    from spectrumkd.scoring import ScoringSettings

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    console = Console(quiet=args.quiet)
    result = score(
        args.model,
        data_config(args),
        args.out,
        settings=ScoringSettings(
            max_tokens_per_batch=args.batch_tokens,
            max_batch_size=args.max_batch_size,
            precision=args.precision,
        ),
        metric=args.metric,
        metric_options=metric_options(args),
        reduction=args.reduction,
        lambda_a=args.lambda_a,
        lambda_b=args.lambda_b,
        progress=not args.quiet,
        console=console,
        workers=args.workers,
        **model_options(args),
    )
    if result.table is not None:  # the cross-entropy, as it always read
        losses = result.table.difficulties("sum" if args.metric == "ce_sum" else args.reduction)
        console.print(
            f"scored {len(result.table)} examples ({result.tokens:,} tokens, "
            f"{result.tokens_per_second:,.0f} tokens/s, {result.precision}); "
            f"loss min {losses.min():.3f} median {float(sorted(losses)[len(losses) // 2]):.3f} "
            f"max {losses.max():.3f}"
        )
    else:
        values = result.spectrum.difficulties  # rank order: ascending
        console.print(
            f"scored {len(values)} examples by {result.metric} ({result.seconds:.1f} s); "
            f"difficulty min {values[0]:.3f} median {values[len(values) // 2]:.3f} "
            f"max {values[-1]:.3f}"
        )
    console.print(f"wrote {Path(args.out) / 'spectrum.jsonl'}")
