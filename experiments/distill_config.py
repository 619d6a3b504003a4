"""What one cell's distillation is: its ``RunConfig`` (the arms differ only in curation; the
learning rate is the chosen one under ``lr_selection``) and, afterwards, its validation curve
from the trainer's metrics."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.cells import chosen_rate, trial_cell, trial_folder
from experiments.config import ABLATION_CURATION_KEYS, Cell, Experiment
from experiments.prepare import difficulties_file, initial_student, training_data
from spectrumkd.distillation import RunConfig


def cell_run_config(
    exp: Experiment,
    cell: Cell,
    setup: Mapping[str, Any],
    *,
    learning_rate: float | None = None,
) -> RunConfig:
    """The distillation of one cell; the arms differ only in ``curation`` (an ablation is the
    +SpectrumKD arm with its changes). With ``lr_selection`` the rate is the chosen one (refused
    before ``lr.json`` exists), or ``learning_rate`` for a trial of the grid, which trains in its
    own folder; the cell the trials are trained as reuses the chosen rate's folder."""
    train = {**exp.train, **cell.objective, "seed": cell.seed, "epochs": exp.baseline_epochs}
    output_dir = exp.runs_dir / cell.name
    if exp.lr_selection is not None:
        rate = learning_rate if learning_rate is not None else chosen_rate(exp, cell.name)
        train["learning_rate"] = rate
        if cell == trial_cell(exp):
            output_dir = trial_folder(exp, rate)
    curation = None
    if cell.arm != "baseline":
        parity = setup["spectrumkd"]
        settings = {
            **exp.spectrumkd,
            **{k: v for k, v in cell.changes.items() if k in ABLATION_CURATION_KEYS},
        }
        curation = {
            "difficulties": str(difficulties_file(exp)),
            **{k: v for k, v in settings.items() if k != "warmup_fraction"},
            "epochs": parity["epochs"],
            "warmup_epochs": parity["warmup_epochs"],
        }
    return RunConfig.from_dict(
        {
            "teacher": exp.teacher,
            "student": initial_student(exp),
            "output_dir": str(output_dir),
            "data": dataclasses.asdict(training_data(exp)),
            "train": train,
            "curation": curation,
            "dtype": exp.dtype,
            "device": exp.device,
            "teacher_cache_k": cell.changes.get("teacher_cache_k", exp.teacher_cache_k),
            # One cache for every cell: it is keyed by teacher and data, which all cells share.
            "teacher_cache_root": str(exp.runs_dir / "teacher-cache"),
        }
    )


def validation_curve(metrics_file: Path) -> list[dict[str, Any]]:
    """Each epoch's validation metrics and distillation temperature, from the trainer's
    metrics.jsonl (a resumed run appends again: the last row of an epoch wins)."""
    epochs: dict[int, dict[str, Any]] = {}
    temperatures: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines() if metrics_file.is_file() else ():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if "val_ce" in row:
            epochs[row["epoch"]] = {
                "epoch": row["epoch"],
                "step": row["step"],
                "val_ce": row["val_ce"],
                "val_kd": row.get("val_kd"),
                **({"val_rouge": row["val_rouge"]} if "val_rouge" in row else {}),
            }
        elif "temperature" in row:
            temperatures[row["epoch"]] = row["temperature"]
    return [{**epochs[e], "temperature": temperatures.get(e)} for e in sorted(epochs)]
