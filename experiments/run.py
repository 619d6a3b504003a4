"""The evidence experiment of issue 6: does adding SpectrumKD improve every KD objective?

    python experiments/run.py cells                        # every cell and its status (or --list)
    python experiments/run.py run [--cell PATTERN ...]     # run what is not finished, resumably
    python experiments/run.py summarize                    # results table from the result files
    python experiments/run.py estimate                     # machine time, from measured speeds

Settings come from ``experiments/config.yaml`` (``--profile cpu|gpu|paper_cpu``, ``--set a.b=value``). The
work is split into cells, each of which writes one small JSON into the results folder, atomically,
when it is finished; a rerun skips finished cells and resumes an interrupted one from its last
checkpoint (the trainer resumes from ``<run folder>/checkpoint``).

- ``setup``: the shared start of every cell. The initial student (a ``shrink`` of the teacher by
  measured influence, then healed once by plain KD on disjoint text, or a given student), its
  difficulty table on the training rows (the spectrum every +SpectrumKD cell curates from), the
  teacher's and the students' own scores on the test rows, the Spearman correlation of the
  student's and the teacher's difficulties, and the step-parity epochs.
- ``<objective>-<arm>-seed<k>``: one distillation (``spectrumkd.jobs.distill``) of the initial
  student, plain KD (``baseline``) or with SpectrumKD (``spectrumkd``), then its evaluation on the
  test rows: CE of the reference and KL to the teacher per example (primary), ROUGE-L of greedy
  and sampled answers per example (secondary).
- ``lr-<rate>``, ``lr`` (profiles with ``lr_selection``, e.g. paper_cpu): the baseline trained at
  each learning rate of the grid, and the choice on validation (``lr.json``) every cell needs.
- ``<objective>-<ablation>-seed<k>``: the +SpectrumKD cell with an ablation's changes (config
  ``ablations:``), after the whole matrix; summarised against both arms.

The package only arranges the library's jobs (``jobs.distill``, ``distillation_quality``,
``evaluate_instruction_following``, ``compare_metric``), one idea per module: ``config``
(settings), ``cells`` (bookkeeping), ``prepare`` (the setup cell), ``measure`` (the test
metrics), ``running`` (the cells), ``summary`` and ``summary_page`` (statistics, Markdown); this
module is the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a file (python experiments/run.py): import the package by name
    _HERE = Path(__file__).resolve().parent
    # The folder of the file would shadow installed modules with the package's module names.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    sys.path.insert(0, str(_HERE.parent))

from experiments.cells import cells_table, shown_path  # noqa: E402
from experiments.config import DEFAULT_CONFIG, PROFILES, load_experiment  # noqa: E402
from experiments.running import run  # noqa: E402
from experiments.summary_page import write_summary  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="experiments/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment YAML")
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the merged profile, e.g. test.rouge_rows=16",
    )
    parser.add_argument("--list", action="store_true", help="print the cells and their status")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("cells", help="print the cells and their status")
    run_parser = commands.add_parser("run", help="run the cells that are not finished")
    run_parser.add_argument(
        "--cell",
        action="append",
        default=None,
        metavar="PATTERN",
        help="only cells matching this name or glob (repeatable), e.g. 'fkl-*-seed1' (the "
        "pair and any ablation of seed 1) or setup",
    )
    commands.add_parser("summarize", help="write results/summary.md from the result files")
    estimate = commands.add_parser(
        "estimate", help="the machine time of the first objective's matrix, from measured speeds"
    )
    estimate.add_argument("--layers", type=int, default=None, help="price another student size")
    estimate.add_argument(
        "--answer-tokens",
        type=int,
        default=None,
        help="mean new tokens per answer (default: the full budget, as measured)",
    )
    estimate.add_argument("--budget-h", type=float, default=15.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        exp = load_experiment(args.config, args.profile, args.set)
        if args.list or args.command in (None, "cells"):
            print(cells_table(exp))
        elif args.command == "estimate":
            from experiments.estimate import estimate_text

            print(
                estimate_text(
                    exp,
                    layers=args.layers,
                    answer_tokens=args.answer_tokens,
                    budget_h=args.budget_h,
                )
            )
        elif args.command == "run":
            executed = run(exp, args.cell, progress=not args.quiet)
            print(f"ran {len(executed)}: {', '.join(executed) or 'nothing (all finished)'}")
        else:
            path, text = write_summary(exp)
            print(text)
            print(f"wrote {shown_path(path)}")
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
