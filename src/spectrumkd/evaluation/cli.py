"""``spectrumkd evaluate``: flags over :func:`spectrumkd.evaluation.evaluate_instruction_following`.

``register(commands)`` adds the subcommand to the main parser's subparsers; user errors raise
ValueError/FileNotFoundError/OSError, which ``spectrumkd.cli.main`` prints as one line.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

DEFAULT_DATA_ROOT = Path("..") / "shared" / "data"


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. 10,20,30,40,50"
        ) from None


def _source(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(
            f"--source {text!r}: give NAME=FILE_OR_DATASET, e.g. dolly=data/dolly_valid.jsonl"
        )
    return name.strip(), value.strip()


def _option(text: str) -> tuple[str, Any]:
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
    # Imported here, not at module level: spectrumkd.cli imports this module to register it.
    from spectrumkd.cli import add_model_flags
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
    parser.add_argument(
        "--data-root",
        default=None,
        help=f"folder holding minillm_eval/ (default: {DEFAULT_DATA_ROOT} when it exists)",
    )
    parser.add_argument(
        "--source",
        type=_source,
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="read suite NAME from a file, dataset folder or hub dataset (repeatable)",
    )
    parser.add_argument(
        "--seeds",
        type=_int_list,
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
    parser.add_argument("--batch-size", type=int, default=8)
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
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to registered (maths/code) suites, e.g. num_shots=4 (repeatable)",
    )
    parser.add_argument("--out", required=True, help="output folder (a rerun resumes there)")
    add_model_flags(parser)
    # The shared model flags may come to define it; then theirs stands.
    with contextlib.suppress(argparse.ArgumentError):
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


def resolve_data_root(data_root: str | None, needed: bool) -> Path | None:
    """The --data-root folder, or ../shared/data when it exists; None when nothing needs it."""
    if data_root is not None:
        path = Path(data_root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--data-root {data_root}: no such folder")
        return path
    if DEFAULT_DATA_ROOT.is_dir():
        return DEFAULT_DATA_ROOT
    if needed:
        raise ValueError(
            f"no evaluation data: {DEFAULT_DATA_ROOT} does not exist here; give --data-root "
            "(the folder holding minillm_eval/) or --source NAME=FILE for each suite"
        )
    return None


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.data.loading import refuse_empty_file
    from spectrumkd.evaluation import (
        DEFAULT_SEEDS,
        INSTRUCTION_SUITES,
        Decoding,
        evaluate_instruction_following,
    )
    from spectrumkd.models import (
        check_pair,
        load_model,
        load_tokenizer,
        resolve_device,
        resolve_dtype,
    )

    if args.greedy and args.seeds is not None:
        raise ValueError("give --greedy or --seeds, not both (greedy decoding uses no seed)")
    for name in ("batch_size", "max_new_tokens", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    suites = [name.strip() for name in args.suites.split(",") if name.strip()]
    sources = dict(args.source)
    needs_root = any(n not in sources for n in suites if n in INSTRUCTION_SUITES) or any(
        n not in INSTRUCTION_SUITES for n in suites
    )
    data_root = resolve_data_root(args.data_root, needs_root)
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
        precision=args.precision,
    )

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    load = {"trust_remote_code": args.trust_remote_code, "gguf_file": args.gguf_file}
    tokenizer = load_tokenizer(args.model, **load)
    model = load_model(args.model, dtype=dtype, device=device, **load)
    teacher = None
    if args.teacher is not None:
        teacher_tokenizer = load_tokenizer(args.teacher, trust_remote_code=args.trust_remote_code)
        teacher = load_model(
            args.teacher, dtype=dtype, device=device, trust_remote_code=args.trust_remote_code
        )
        check_pair(teacher_tokenizer, tokenizer, teacher.config, model.config)

    evaluate_instruction_following(
        model,
        tokenizer,
        args.out,
        suites=suites,
        data_root=data_root,
        sources=sources,
        decoding=decoding,
        max_prompt_tokens=args.max_prompt_tokens,
        limit=args.limit,
        teacher=teacher,
        quality=not args.no_quality,
        quality_max_length=args.quality_max_length,
        model_spec=args.model,
        teacher_spec=args.teacher,
        suite_options=dict(args.suite_option),
        other_max_new_tokens=args.max_new_tokens,
        progress=not args.quiet,
        console=Console(quiet=args.quiet),
    )
