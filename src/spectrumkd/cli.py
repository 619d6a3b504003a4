"""``spectrumkd`` command line: a thin layer of flags over :mod:`spectrumkd.jobs`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spectrumkd.curation.config import DIRECTIONS, STEP_MODES, SpectrumKDConfig

# spectrumkd.models.precision.PRECISIONS, spelled out: importing it loads torch, and the parser
# (--help) should not wait for that (tests/test_cli.py checks they agree).
PRECISIONS = ("auto", "float32", "bf16", "fp16")

# Errors a user can fix get one line; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FloatingPointError,
    OSError,
)  # ModelLoadError is an OSError


def parse_layers(text: str) -> list[int]:
    """``"0-9,20,25-29"`` -> [0, ..., 9, 20, 25, ..., 29]."""
    layers: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                layers.extend(range(low, high + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--layers {text!r}: {part!r} is not an index or a range like 3-7"
            ) from None
    return layers


def lambda_b_value(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--lambda-b {text!r}: give a number in [0, 1) or 'auto'"
        ) from None


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
        "--split", default="train", help="split of a hub dataset or saved DatasetDict"
    )
    group.add_argument(
        "--id-field", default=None, help="column holding a unique example id (default: row number)"
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


def add_schedule_flags(parser: argparse.ArgumentParser) -> None:
    defaults = SpectrumKDConfig()
    group = parser.add_argument_group("SpectrumKD schedule")
    group.add_argument(
        "--lambda-a",
        type=float,
        default=defaults.lambda_a,
        help="Early/Late zone share (default %(default)s)",
    )
    group.add_argument(
        "--lambda-b",
        type=lambda_b_value,
        default=defaults.lambda_b,
        help="Excluded share (default %(default)s), or 'auto': chosen from a log-normal fit of the losses",
    )
    group.add_argument(
        "--auto-quantile",
        type=float,
        default=0.9,
        help="with --lambda-b auto: exclude losses above this quantile of the fit (default %(default)s)",
    )
    group.add_argument(
        "--epochs", type=int, default=None, help=f"epochs n (default {defaults.epochs})"
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
        help="warm-up epochs k (default %(default)s)",
    )
    group.add_argument(
        "--tau-start",
        type=float,
        default=defaults.tau_start,
        help="temperature of epoch 1 (default %(default)s)",
    )
    group.add_argument(
        "--tau-end",
        type=float,
        default=defaults.tau_end,
        help="temperature of epoch n (default %(default)s)",
    )
    group.add_argument(
        "--step-mode",
        choices=STEP_MODES,
        default=defaults.step_mode,
        help="window step rule (default %(default)s)",
    )
    group.add_argument(
        "--direction",
        choices=DIRECTIONS,
        default=defaults.direction,
        help="slide direction (default %(default)s)",
    )


def schedule_config(args: argparse.Namespace, n_examples: int) -> SpectrumKDConfig:
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
        # The user's --warmup stands as given (no warm-up fraction).
        config = step_parity(config, args.baseline_epochs, n_examples).config
    return config


def data_settings(args: argparse.Namespace) -> dict:
    """The data flags as :class:`~spectrumkd.data.config.DataConfig` fields."""
    return {
        "source": args.data,
        "fields": args.fields,
        "template": args.template,
        "split": args.split,
        "id_field": args.id_field,
        "limit": args.limit,
        "max_length": args.max_length,
        "max_prompt_length": args.max_prompt_length,
    }


def load_tokenized(args: argparse.Namespace, tokenizer):
    from spectrumkd.data.config import DataConfig

    return DataConfig(**data_settings(args)).load(tokenizer)


def cmd_score(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.jobs import score_dataset
    from spectrumkd.models import load_model, load_tokenizer, resolve_device, resolve_dtype
    from spectrumkd.scoring import ScoringSettings

    console = Console(quiet=args.quiet)
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(
        args.model, trust_remote_code=args.trust_remote_code, gguf_file=args.gguf_file
    )
    dataset = load_tokenized(args, tokenizer)
    console.print(f"data: {dataset.summary()}")
    model = load_model(
        args.model,
        dtype=resolve_dtype(args.dtype, device),
        device=device,
        trust_remote_code=args.trust_remote_code,
        gguf_file=args.gguf_file,
    )
    settings = ScoringSettings(
        max_tokens_per_batch=args.batch_tokens,
        max_batch_size=args.max_batch_size,
        precision=args.precision,
    )
    precision = settings.resolved(device).precision
    result = score_dataset(
        model,
        dataset,
        args.out,
        pad_token_id=tokenizer.pad_token_id,
        settings=settings,
        reduction=args.reduction,
        lambda_a=args.lambda_a,
        lambda_b=args.lambda_b,
        progress=not args.quiet,
        description={
            "model": args.model,
            "data": args.data,
            "template": args.template,
            "max_length": args.max_length,
            "precision": precision,
        },
    )
    losses = result.table.difficulties(args.reduction)
    console.print(
        f"scored {len(result.table)} examples ({result.tokens:,} tokens, {result.tokens_per_second:,.0f} tokens/s, {precision}); "
        f"loss min {losses.min():.3f} median {float(sorted(losses)[len(losses) // 2]):.3f} max {losses.max():.3f}"
    )
    console.print(f"wrote {Path(args.out) / 'spectrum.jsonl'}")


def cmd_curate(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.console import print_plan
    from spectrumkd.curation.analyzer import describe_choice
    from spectrumkd.jobs import curate
    from spectrumkd.scoring import read_difficulties

    ids, values = read_difficulties(args.difficulties, column=args.column)
    config = schedule_config(args, len(ids))
    plan = curate(
        ids,
        values,
        config,
        args.out,
        auto_lambda_b=args.lambda_b == "auto",
        quantile=args.auto_quantile,
    )
    console = Console(quiet=args.quiet)
    if "analyzer" in plan.metadata:
        console.print(describe_choice(plan.metadata["analyzer"]))
    print_plan(plan, console)
    console.print(f"wrote {Path(args.out) / 'schedule.json'}")


def cmd_shrink(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.models import (
        calibration_batches,
        load_model,
        load_tokenizer,
        resolve_device,
        shrink,
    )

    if (args.layers is None) == (args.num_layers is None):
        raise ValueError("give --layers (e.g. 0-9,20-29) or --num-layers N, exactly one")
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(
        args.teacher, trust_remote_code=args.trust_remote_code, gguf_file=args.gguf_file
    )
    teacher = load_model(
        args.teacher,
        dtype="float32",
        device=device,
        trust_remote_code=args.trust_remote_code,
        gguf_file=args.gguf_file,
    )
    dataset = load_tokenized(args, tokenizer)
    batches = calibration_batches(dataset, tokenizer.pad_token_id, rows=args.calibration_rows)
    _, report = shrink(
        teacher,
        tokenizer,
        batches,
        keep_layers=args.layers,
        num_layers=args.num_layers,
        method=args.method,
        out_dir=args.out,
    )
    Console(quiet=args.quiet).print(report.summary())


def cmd_distill(args: argparse.Namespace) -> None:
    from spectrumkd.distillation.run_config import RunConfig
    from spectrumkd.jobs import distill

    run = RunConfig.from_yaml(args.config, args.set)
    check_out_folder(run.output_dir, "output_dir")
    with no_folder_left_if_refused(run.output_dir):
        state = distill(run, progress=not args.quiet)
    print(
        f"trained {state['epoch']} epochs ({state['step']} steps); student in {Path(run.output_dir) / 'final'}"
    )


@contextmanager
def no_folder_left_if_refused(output_dir: str | Path) -> Iterator[None]:
    """Remove the run folder this command created when the run is refused before it begins.

    ``distill`` records ``run_config.yaml`` before it loads the models and the data; a run
    refused there (a bad data file, a model without a tokenizer) leaves no folder behind, as
    the other commands leave none. A folder holding anything more is a run's work: it stays.
    """
    out = Path(output_dir).expanduser()
    created = next((p for p in (*reversed(out.parents), out) if not p.exists()), None)
    try:
        yield
    except USER_ERRORS:
        unstarted = out.is_dir() and [p.name for p in out.iterdir()] == ["run_config.yaml"]
        if created is not None and unstarted:
            (out / "run_config.yaml").unlink()
            for folder in (out, *out.parents):  # up to the first that did not exist before
                try:
                    folder.rmdir()
                except OSError:  # something else now lives there: not ours to remove
                    break
                if folder == created:
                    break
        raise


def cmd_heal(args: argparse.Namespace) -> None:
    """Plain KD (no schedule) of a shrunk student on data of the user's choice, so that it starts
    as a working model, as the paper's pretrained students do."""
    from spectrumkd.jobs import heal, heal_config

    run = heal_config(
        args.teacher,
        args.student,
        args.out,
        {**data_settings(args), "validation_ratio": args.validation_ratio},
        train={
            "objective": args.objective,
            "epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "batch_size": args.batch_size,
        },
        dtype=args.dtype,
        device=args.device,
        overrides=args.set,
    )
    with no_folder_left_if_refused(run.output_dir):
        healed = heal(run, progress=not args.quiet)
    state, best = healed.state, healed.best
    print(
        f"healed for {state['epoch']} epochs ({state['step']} steps); student in "
        f"{healed.student_dir}"
        + (f" (epoch {best['epoch']}, {best['metric']} {best['value']:.4f})" if best else "")
    )


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
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectrumkd", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    commands = parser.add_subparsers(dest="command", required=True)

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
        "--lambda-a", type=float, default=0.1, help="zones written into spectrum.jsonl"
    )
    score.add_argument("--lambda-b", type=float, default=0.1)
    score.add_argument("--quiet", action="store_true")
    score.set_defaults(run=cmd_score)

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

    shrink = commands.add_parser(
        "shrink", help="teacher -> smaller student by keeping a set of layers"
    )
    shrink.add_argument("--teacher", default="smollm2")
    shrink.add_argument(
        "--out", required=True, help="folder for the student (safetensors) and shrink_report.json"
    )
    shrink.add_argument(
        "--layers", type=parse_layers, default=None, help="layers to keep, e.g. 0-9,20-29"
    )
    shrink.add_argument(
        "--num-layers", type=int, default=None, help="keep this many, chosen by --method"
    )
    shrink.add_argument(
        "--method", choices=("block_influence", "removal_loss"), default="block_influence"
    )
    shrink.add_argument("--calibration-rows", type=int, default=32)
    add_data_flags(shrink, default_data="embedded:dolly")
    add_model_flags(shrink)
    shrink.add_argument("--quiet", action="store_true")
    shrink.set_defaults(run=cmd_shrink)

    distill = commands.add_parser(
        "distill", help="white-box KD from a YAML run config (with or without curation)"
    )
    distill.add_argument(
        "--config", required=True, help="YAML file: teacher, student, data, curation, train"
    )
    distill.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.epochs=3 (repeatable); "
        "train.mixed_precision (default auto: bf16 autocast where the device has fast bf16, a "
        "CUDA GPU with bf16 or a CPU with AMX or AVX512-BF16, float32 elsewhere) sets every "
        "forward of the run: scoring, teacher cache, student and teacher",
    )
    distill.add_argument("--quiet", action="store_true")
    distill.set_defaults(run=cmd_distill)

    heal = commands.add_parser(
        "heal",
        help="plain KD of a shrunk student on data of your choice, before it is an initial student",
    )
    heal.add_argument("--teacher", default="smollm2")
    heal.add_argument(
        "--student", required=True, help="the shrunk student (spectrumkd shrink --out)"
    )
    heal.add_argument("--out", required=True, help="run folder (a rerun resumes there)")
    heal.add_argument("--objective", default="forward_kl")
    heal.add_argument("--epochs", type=int, default=1)
    heal.add_argument("--learning-rate", type=float, default=5e-5)
    heal.add_argument("--batch-size", type=int, default=8)
    heal.add_argument(
        "--validation-ratio",
        type=float,
        default=0.05,
        help="seeded share held out; the best epoch on it is kept in OUT/best",
    )
    heal.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any run-config field, e.g. --set train.grad_accum=4 (repeatable)",
    )
    add_data_flags(heal)
    heal.add_argument("--dtype", default="auto", help="teacher dtype: auto, float32, bfloat16")
    heal.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    heal.add_argument("--quiet", action="store_true")
    heal.set_defaults(run=cmd_heal)

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
        default=96,
        help="training rows of the baseline and +SpectrumKD distillations (0: skip them)",
    )
    demo.add_argument(
        "--baseline-epochs",
        type=int,
        default=3,
        help="epochs of the baseline; SpectrumKD gets as many optimiser steps",
    )
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(run=cmd_demo)

    from spectrumkd.evaluation.cli import register as register_evaluate
    from spectrumkd.evaluation.extra_cli import register as register_judge_and_compare
    from spectrumkd.report.cli import register as register_report

    register_evaluate(commands)
    register_judge_and_compare(commands)
    register_report(commands)
    return parser


# Commands whose --out is a file, not a folder.
OUT_IS_A_FILE = frozenset({"compare"})


def check_out_folder(path: str | Path, name: str = "--out") -> None:
    """Refuse an output folder that is a file or lies inside one, before any work is done
    (creating it would fail later with a bare ``[Errno 17]`` or ``[Errno 20]``)."""
    path = Path(path).expanduser()
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return
        if candidate.exists():
            where = f"{name} {path}" if candidate == path else f"{name} {path}: {candidate}"
            raise ValueError(f"{where} is a file, not a folder; give a folder path for {name}")


def option_name(command: str, option: str) -> str:
    """How ``command``'s user sets the :func:`~spectrumkd.data.load_examples` argument
    ``option``: a flag, or a field of the run config for ``distill``."""
    if command == "distill":
        return f"data.{option}"
    return "--" + option.replace("_", "-")


@contextmanager
def library_output(quiet: bool) -> Iterator[None]:
    """With ``--quiet``, the progress bars and notices of datasets, transformers and the hub
    client are off, so that the only line on stderr is an error; restored afterwards, as
    ``main`` may run again in the same process (the tests do)."""
    if not quiet:
        yield
        return
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    hub_off = hub.are_progress_bars_disabled()
    datasets_off = datasets.are_progress_bars_disabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    verbosity = (datasets.logging.get_verbosity(), transformers_logging.get_verbosity())
    hub.disable_progress_bars()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity[0])
        transformers_logging.set_verbosity(verbosity[1])
        if transformers_on:
            transformers_logging.enable_progress_bar()
        if not datasets_off:
            datasets.enable_progress_bars()
        if not hub_off:
            hub.enable_progress_bars()


@contextmanager
def warnings_as_lines(command: str) -> Iterator[None]:
    """The toolkit's own warnings (a damaged shard being rescored, a stale cache started over)
    as one line each on stderr, worded like the errors, whatever logging the host set up."""
    logger = logging.getLogger("spectrumkd")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"spectrumkd {command}: warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def main(argv: list[str] | None = None) -> int:
    from spectrumkd.data.loading import OptionError

    args = build_parser().parse_args(argv)
    try:
        if args.command not in OUT_IS_A_FILE and getattr(args, "out", None) is not None:
            check_out_folder(args.out)
        with library_output(getattr(args, "quiet", False)), warnings_as_lines(args.command):
            args.run(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        if isinstance(error, OptionError):  # name the flag, not the Python argument
            text = error.spelled(option_name(args.command, error.option))
        else:
            text = str(error)
        message = text.splitlines()[0] if text.strip() else type(error).__name__
        print(f"spectrumkd {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
