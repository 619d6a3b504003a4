"""``spectrumkd distill`` and ``spectrumkd heal``: flags over :func:`spectrumkd.jobs.distill`
and :func:`spectrumkd.jobs.heal` (healing is a distillation without curation)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spectrumkd.cli.flags import add_data_flags, data_settings
from spectrumkd.cli.user_errors import check_out_folder, no_folder_left_if_refused


def register(commands: Any) -> None:
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


def cmd_distill(args: argparse.Namespace) -> None:
    from spectrumkd.distillation import RunConfig
    from spectrumkd.jobs import distill

    run = RunConfig.from_yaml(args.config, args.set)
    check_out_folder(run.output_dir, "output_dir")
    with no_folder_left_if_refused(run.output_dir):
        state = distill(run, progress=not args.quiet)
    print(
        f"trained {state['epoch']} epochs ({state['step']} steps); student in "
        f"{Path(run.output_dir) / 'final'}"
    )


def cmd_heal(args: argparse.Namespace) -> None:
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
