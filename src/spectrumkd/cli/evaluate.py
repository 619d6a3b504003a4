"""``spectrumkd evaluate``: flags over :func:`spectrumkd.jobs.evaluate`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spectrumkd.cli.flags import add_data_root_flag, add_model_flags, resolve_data_root


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. 10,20,30,40,50"
        ) from None


def named_source(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(
            f"--source {text!r}: give NAME=FILE_OR_DATASET, e.g. dolly=data/dolly_valid.jsonl"
        )
    return name.strip(), value.strip()


def suite_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"--suite-option {text!r}: give KEY=VALUE, e.g. num_shots=4"
        )
    try:
        return key.strip(), int(value)
    except ValueError:
        return key.strip(), value


def register(commands: Any) -> None:
    """Add the ``evaluate`` subcommand to an ``argparse`` subparsers object."""
    from spectrumkd.evaluation import DEFAULT_SEEDS, INSTRUCTION_SUITE_NAMES, MAX_PROMPT_TOKENS

    parser = commands.add_parser(
        "evaluate",
        help="ROUGE-L on DollyEval, SelfInst, VicunaEval, S-NI, UnNI (+ CE/KL to a teacher)",
    )
    parser.add_argument(
        "--model", default="smollm2", help="model to evaluate: smollm2, .gguf, folder or hub id"
    )
    parser.add_argument(
        "--teacher",
        default=None,
        help="optional teacher: adds forward/reverse KL to it on the reference answers",
    )
    parser.add_argument(
        "--suites",
        default=",".join(INSTRUCTION_SUITE_NAMES),
        help="comma list (default %(default)s); other registered suites too",
    )
    add_data_root_flag(parser)
    parser.add_argument(
        "--source",
        type=named_source,
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="read suite NAME from a file, dataset folder or hub dataset (repeatable)",
    )
    parser.add_argument(
        "--seeds",
        type=int_list,
        default=None,
        help=f"sampling seeds (default {','.join(map(str, DEFAULT_SEEDS))})",
    )
    parser.add_argument(
        "--greedy", action="store_true", help="greedy decoding instead of sampling at 1.0"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="new-token limit (default 512 for the instruction sets)",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=MAX_PROMPT_TOKENS,
        help="drop (never truncate) longer prompts (default %(default)s)",
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N rows per set")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="rows decoded at a time, refilled as rows end (default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="CPU processes decoding a share of the prompts each (default: 2 on a CPU where "
        "torch has exactly 2 threads, else 1; one thread each)",
    )
    parser.add_argument(
        "--quality-batch-size",
        type=int,
        default=8,
        help="rows at a time for CE/KL on the references (default %(default)s)",
    )
    parser.add_argument(
        "--no-quality", action="store_true", help="skip CE/KL on the reference answers"
    )
    parser.add_argument(
        "--quality-max-length",
        type=int,
        default=768,
        help="CE/KL only on prompt + reference of at most this many tokens (default %(default)s)",
    )
    parser.add_argument(
        "--suite-option",
        type=suite_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to registered (maths/code) suites, e.g. num_shots=4 (repeatable)",
    )
    parser.add_argument("--out", required=True, help="output folder (a rerun resumes there)")
    add_model_flags(parser)
    parser.add_argument(
        "--precision",
        default="auto",
        help="compute precision of generation: auto (bf16 where the device has fast bf16: "
        "a CUDA GPU, a CPU with AMX or AVX512-BF16; else float32), float32, bf16, fp16 "
        "(CUDA). --dtype is the weights' storage type; --precision is the autocast the "
        "forwards run under (float32 weights, bf16 matrix products)",
    )
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(run=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.data import refuse_empty_file
    from spectrumkd.evaluation import DEFAULT_SEEDS, INSTRUCTION_SUITES, Decoding
    from spectrumkd.jobs import evaluate

    if args.greedy and args.seeds is not None:
        raise ValueError("give --greedy or --seeds, not both (greedy decoding uses no seed)")
    for name in ("batch_size", "quality_batch_size", "workers", "max_new_tokens", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    suites = [name.strip() for name in args.suites.split(",") if name.strip()]
    sources = dict(args.source)
    needs_root = any(n not in sources for n in suites if n in INSTRUCTION_SUITES) or any(
        n not in INSTRUCTION_SUITES for n in suites
    )
    data_root = resolve_data_root(
        args.data_root, needs_root, alternative="give --source NAME=FILE for each suite"
    )
    for source in sources.values():
        # An empty JSONL file would read as an instruction set of no rows; say so before the
        # model loads.
        if Path(source).expanduser().is_file():
            refuse_empty_file(Path(source).expanduser())
    decoding = Decoding(
        greedy=args.greedy,
        seeds=tuple(args.seeds) if args.seeds is not None else DEFAULT_SEEDS,
        max_new_tokens=args.max_new_tokens or 512,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
    )
    evaluate(
        args.model,
        args.out,
        teacher=args.teacher,
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        gguf_file=args.gguf_file,
        suites=suites,
        data_root=data_root,
        sources=sources,
        decoding=decoding,
        max_prompt_tokens=args.max_prompt_tokens,
        limit=args.limit,
        quality=not args.no_quality,
        quality_max_length=args.quality_max_length,
        quality_batch_size=args.quality_batch_size,
        suite_options=dict(args.suite_option),
        other_max_new_tokens=args.max_new_tokens,
        progress=not args.quiet,
        console=Console(quiet=args.quiet),
    )
