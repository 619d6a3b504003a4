"""Flags that several commands share, and their translation into the jobs' config records.

The data flags become a :class:`~spectrumkd.data.DataConfig`, the schedule flags a
:class:`~spectrumkd.curation.SpectrumKDConfig` (their help is that dataclass's field metadata),
the model flags the ``dtype``/``device``/loading arguments of the jobs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from spectrumkd.curation.config import DIRECTIONS, STEP_MODES, SpectrumKDConfig
from spectrumkd.curation.schedule import SpectrumKD
from spectrumkd.curation.strategies import STRATEGIES, strategy_names
from spectrumkd.data.config import DataConfig

# spectrumkd.models.precision.PRECISIONS, spelled out so that defining the flags does not load
# the models package (tests/test_precision_paths.py checks that the two agree).
PRECISIONS = ("auto", "float32", "bf16", "fp16")

# spectrumkd.scoring's metric names (with the two the evaluation stage registers), spelled out
# so that defining the flags does not load torch (tests/test_cli.py checks that they agree).
METRICS = (
    "ce_mean",
    "ce_sum",
    "code_execution",
    "length",
    "maths_verified",
    "predictive_entropy",
    "reflection_rouge",
    "reflection_rrf",
    "rrf",
    "unigram_entropy",
)

# Where the evaluation suites' data lives when --data-root is not given.
DATA_ROOT_ENV = "SPECTRUMKD_DATA_ROOT"


def add_data_flags(parser: argparse.ArgumentParser, default_data: str | None = None) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        required=default_data is None,
        default=default_data,
        help="JSONL/JSON/Parquet/CSV file, dataset folder, hub name, or embedded:dolly",
    )
    group.add_argument(
        "--fields",
        default=None,
        help="column preset: dolly, alpaca, prompt_response, messages (default: detect)",
    )
    group.add_argument(
        "--template",
        default="instruction",
        help="instruction (paper Fig. 5), math (Fig. 7), code (Fig. 8), chat, none",
    )
    group.add_argument(
        "--split",
        default="train",
        help="split of a hub dataset or saved DatasetDict; of a file, train or a slice of it "
        "(train[600:], train[:10%%])",
    )
    group.add_argument(
        "--id-field", default=None, help="column holding a unique example id (default: row number)"
    )
    group.add_argument(
        "--domain-field",
        default=None,
        help="column naming each example's domain (e.g. Dolly's category); the validation "
        "split then holds out rows per domain",
    )
    group.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    group.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="drop (never truncate) examples longer than this",
    )
    group.add_argument(
        "--max-prompt-length",
        type=int,
        default=None,
        help="drop examples whose prompt is longer than this",
    )


def data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The data flags as :class:`~spectrumkd.data.DataConfig` fields."""
    return {
        "source": args.data,
        "fields": args.fields,
        "template": args.template,
        "split": args.split,
        "id_field": args.id_field,
        "domain_field": args.domain_field,
        "limit": args.limit,
        "max_length": args.max_length,
        "max_prompt_length": args.max_prompt_length,
    }


def data_config(args: argparse.Namespace) -> DataConfig:
    return DataConfig(**data_settings(args))


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gguf-file", default=None, help="a GGUF file inside the model folder or hub repository"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run code shipped in a model repository (off by default)",
    )


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags as the jobs' keyword arguments."""
    return {
        "dtype": args.dtype,
        "device": args.device,
        "trust_remote_code": args.trust_remote_code,
        "gguf_file": args.gguf_file,
    }


def lambda_b_value(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--lambda-b {text!r}: give a number in [0, 1) or 'auto'"
        ) from None


def config_help(name: str) -> str:
    """The help of :class:`SpectrumKDConfig`'s field ``name``, written once, in its metadata."""
    return next(f for f in dataclasses.fields(SpectrumKDConfig) if f.name == name).metadata["help"]


def add_schedule_flags(parser: argparse.ArgumentParser) -> None:
    defaults = SpectrumKDConfig()
    group = parser.add_argument_group("SpectrumKD schedule")
    group.add_argument(
        "--lambda-a",
        type=float,
        default=defaults.lambda_a,
        help=f"{config_help('lambda_a')} (default %(default)s)",
    )
    group.add_argument(
        "--lambda-b",
        type=lambda_b_value,
        default=defaults.lambda_b,
        help=f"{config_help('lambda_b')} (default %(default)s), or 'auto': chosen from a "
        "log-normal fit of the losses",
    )
    group.add_argument(
        "--auto-quantile",
        type=float,
        default=0.9,
        help="with --lambda-b auto: exclude losses above this quantile of the fit (default %(default)s)",
    )
    group.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"{config_help('epochs')} (default {defaults.epochs})",
    )
    group.add_argument(
        "--baseline-epochs",
        type=int,
        default=None,
        help="instead of --epochs: match this many full-data epochs' optimiser steps (step parity)",
    )
    group.add_argument(
        "--warmup",
        type=int,
        default=defaults.warmup_epochs,
        help=f"{config_help('warmup_epochs')} (default %(default)s)",
    )
    for flag, name in (("--tau-start", "tau_start"), ("--tau-end", "tau_end")):
        group.add_argument(
            flag,
            type=float,
            default=getattr(defaults, name),
            help=f"{config_help(name)} (default %(default)s)",
        )
    group.add_argument(
        "--step-mode",
        choices=STEP_MODES,
        default=defaults.step_mode,
        help=f"{config_help('step_mode')} (default %(default)s)",
    )
    group.add_argument(
        "--direction",
        choices=DIRECTIONS,
        default=defaults.direction,
        help=f"{config_help('direction')} (default %(default)s)",
    )


def spectrumkd_flags_given(args: argparse.Namespace) -> list[str]:
    """The SpectrumKD schedule flags given other values than their defaults (so that another
    strategy can refuse them instead of ignoring them)."""
    defaults = SpectrumKDConfig()
    given = [
        flag
        for flag, value, default in (
            ("--lambda-a", args.lambda_a, defaults.lambda_a),
            ("--lambda-b", args.lambda_b, defaults.lambda_b),
            ("--auto-quantile", args.auto_quantile, 0.9),
            ("--epochs", args.epochs, None),
            ("--warmup", args.warmup, defaults.warmup_epochs),
            ("--tau-start", args.tau_start, defaults.tau_start),
            ("--tau-end", args.tau_end, defaults.tau_end),
            ("--step-mode", args.step_mode, defaults.step_mode),
            ("--direction", args.direction, defaults.direction),
        )
        if value != default
    ]
    return given


def schedule_config(args: argparse.Namespace, n_examples: int) -> SpectrumKDConfig:
    """The schedule flags as a config for ``n_examples`` rows; with ``--baseline-epochs`` the
    epochs come from step parity (:func:`spectrumkd.curation.step_parity`) and ``--warmup``
    stands as given."""
    from spectrumkd.curation import step_parity

    if args.epochs is not None and args.baseline_epochs is not None:
        raise ValueError("give --epochs or --baseline-epochs, not both")
    if args.baseline_epochs is not None and args.lambda_b == "auto":
        raise ValueError(
            "--baseline-epochs needs a fixed --lambda-b (the window size decides the epochs)"
        )
    epochs = args.epochs if args.epochs is not None else SpectrumKDConfig().epochs
    if args.baseline_epochs is not None:
        # Replaced by step parity: any count the warm-up fits in, so the config validates.
        epochs = max(epochs, args.warmup + 1)
    config = SpectrumKDConfig(
        lambda_a=args.lambda_a,
        lambda_b=SpectrumKDConfig().lambda_b if args.lambda_b == "auto" else args.lambda_b,
        epochs=epochs,
        warmup_epochs=args.warmup,
        tau_start=args.tau_start,
        tau_end=args.tau_end,
        step_mode=args.step_mode,
        direction=args.direction,
    )
    if args.baseline_epochs is not None:
        config = step_parity(config, args.baseline_epochs, n_examples).config
    return config


def add_data_root_flag(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """``--data-root``: where the evaluation suites' files are (no default relative to the
    working directory: a command run from elsewhere would silently find nothing)."""
    parser.add_argument(
        "--data-root",
        default=None,
        help=f"folder holding minillm_eval/{purpose} (default: ${DATA_ROOT_ENV})",
    )


def resolve_data_root(data_root: str | None, needed: bool, alternative: str = "") -> Path | None:
    """The ``--data-root`` folder, else ``$SPECTRUMKD_DATA_ROOT``; None when neither is set
    and nothing needs it, a one-line error when something does (``alternative``: what else
    the command accepts instead, e.g. ``give --source NAME=FILE for each suite``)."""
    flag = "--data-root" if data_root is not None else f"${DATA_ROOT_ENV}"
    data_root = data_root if data_root is not None else os.environ.get(DATA_ROOT_ENV) or None
    if data_root is not None:
        path = Path(data_root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{flag} {data_root}: no such folder")
        return path
    if needed:
        raise ValueError(
            "the evaluation suites' data root is not set: pass --data-root DIR (the folder "
            f"holding minillm_eval/) or set {DATA_ROOT_ENV}"
            + (f", or {alternative}" if alternative else "")
        )
    return None


def ranking_strategies() -> list[str]:
    """The strategies that plan from a difficulty table (what ``curate`` and ``demo`` run)."""
    return [name for name, spec in STRATEGIES.items() if not spec.planned_by_distill]


def add_strategy_flags(parser: argparse.ArgumentParser, budget_help: str) -> None:
    """``--strategy NAME`` and its settings as repeatable ``--option KEY=VALUE``;
    ``budget_help`` says how the command gives the strategy its epochs."""
    group = parser.add_argument_group("curation strategy")
    ranked = ranking_strategies()
    measured = [name for name in strategy_names() if name not in ranked]
    group.add_argument(
        "--strategy",
        choices=ranked,
        default=SpectrumKD.name,
        help="curation strategy (default %(default)s): "
        # argparse %-formats help: a literal % (POCL's "25/50/75/100 %") is written %%.
        + "; ".join(f"{name}: {STRATEGIES[name].summary}".replace("%", "%%") for name in ranked)
        + f". ({', '.join(measured)} measure the run's models while it trains: run them with "
        "spectrumkd distill, curation.strategy)",
    )
    group.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the strategy, YAML-typed (repeatable), e.g. --option "
        f"selection_ratio=0.5 for srd; {budget_help}",
    )


def key_values(pairs: list[str], flag: str, example: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (YAML-typed), refusing a malformed pair in
    one line."""
    from spectrumkd.distillation.run_config import load_yaml

    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {pair!r}: write it as KEY=VALUE, e.g. {flag} {example}")
        values[key.strip()] = load_yaml(raw)
    return values


def strategy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--option`` pairs of a command with :func:`add_strategy_flags`."""
    return key_values(args.option, "--option", "selection_ratio=0.5")


def add_metric_option_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metric-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the difficulty metric, YAML-typed (repeatable), e.g. "
        "--metric-option max_total_tokens=320 for the reflection metrics",
    )


def metric_options(args: argparse.Namespace) -> dict[str, Any]:
    return key_values(args.metric_option, "--metric-option", "max_total_tokens=320")
