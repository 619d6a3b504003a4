"""The learning-rate stage (``lr_selection:``): the baseline of one objective and seed trained at
each rate of the grid (the paper's {5e-4, 1e-4, 5e-5}), one resumable piece per rate
(``lr-<rate>``), and the choice, the rate of the highest validation ROUGE-L (the run's selection
metric), written as ``lr.json`` once every rate has finished. Every cell trains at that rate and
refuses to run before the choice exists.

The trial at the chosen rate is the training of that objective's baseline cell of that seed:
the cell resumes the trial's finished run folder instead of training again."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.cells import (
    CHOICE,
    choice_settings,
    machine,
    rate_tag,
    read_result,
    relative_paths,
    result_path,
    trial_cell,
    trial_folder,
    trial_name,
    trial_names,
    trial_settings,
    utc_now,
)
from experiments.config import Experiment
from experiments.distill_config import cell_run_config, validation_curve
from experiments.training import distill_keeping_ce_best
from spectrumkd.io import write_json


def run_trial(
    exp: Experiment, rate: float, setup: Mapping[str, Any], *, progress: bool = True
) -> dict[str, Any]:
    """Train the baseline at ``rate`` (resumably; its checkpoint is kept for the cell that
    reuses it) and write ``lr-<rate>.json``: the validation curve and the selected epochs."""
    started, cpu_started = time.perf_counter(), time.process_time()
    run = cell_run_config(exp, trial_cell(exp), setup, learning_rate=rate)
    state = distill_keeping_ce_best(run, progress=progress)
    curve = validation_curve(Path(run.output_dir) / "metrics.jsonl")
    result = {
        "cell": trial_name(rate),
        "learning_rate": rate,
        "settings": trial_settings(exp),
        "profile": exp.profile,
        "run_config": run.to_dict(),
        "training": {
            "epochs": state["epoch"],
            "steps": state["step"],
            "best": state.get("best"),
            "best_ce_epoch": state.get("best_ce"),
            "validation": curve,
        },
        "wall_time_s": {"total": round(time.perf_counter() - started, 1)},
        "cpu_time_s": round(time.process_time() - cpu_started, 1),
        "machine": machine(),
        "finished_at": utc_now(),
    }
    write_json(result_path(exp, trial_name(rate)), relative_paths(result))
    return result


def write_choice(exp: Experiment) -> dict[str, Any] | None:
    """``lr.json`` from the finished trials (None while one is missing): the rate whose selected
    epoch has the highest validation value of the selection metric (the smaller rate on ties)."""
    trials = [read_result(result_path(exp, name)) for name in trial_names(exp)]
    if any(trial is None for trial in trials):
        return None
    scored = []
    for trial in trials:
        best = trial["training"].get("best") or {}
        if best.get("value") is None:
            raise ValueError(f"{trial['cell']} has no selected epoch (no validation rows?)")
        scored.append((trial["learning_rate"], best))
    metric = scored[0][1]["metric"]
    sign = 1.0 if metric == "val_rouge" else -1.0  # val_rouge is maximised, the others not
    rate, best = max(scored, key=lambda item: (sign * item[1]["value"], -item[0]))
    choice = {
        "cell": CHOICE,
        "learning_rate": rate,
        "metric": metric,
        "selected": {rate_tag(r): b for r, b in scored},
        "settings": choice_settings(exp),
        "profile": exp.profile,
        "finished_at": utc_now(),
    }
    write_json(result_path(exp, CHOICE), choice)
    if exp.prune_finished:  # the chosen trial's checkpoint is the baseline cell's to resume
        for other, _ in scored:
            if other != rate:
                shutil.rmtree(trial_folder(exp, other) / "checkpoint", ignore_errors=True)
    return choice
