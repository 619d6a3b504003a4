"""``spectrumkd shrink``: flags over :func:`spectrumkd.jobs.shrink`."""

from __future__ import annotations

import argparse
from typing import Any

from spectrumkd.cli.flags import add_data_flags, add_model_flags, data_config


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


def register(commands: Any) -> None:
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


def cmd_shrink(args: argparse.Namespace) -> None:
    from rich.console import Console

    from spectrumkd.jobs import shrink

    if (args.layers is None) == (args.num_layers is None):
        raise ValueError("give --layers (e.g. 0-9,20-29) or --num-layers N, exactly one")
    report = shrink(
        args.teacher,
        args.out,
        data_config(args),
        keep_layers=args.layers,
        num_layers=args.num_layers,
        method=args.method,
        calibration_rows=args.calibration_rows,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        gguf_file=args.gguf_file,
    )
    Console(quiet=args.quiet).print(report.summary())
