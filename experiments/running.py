"""Running the matrix: each cell is one distillation of the initial student (``jobs.distill``,
resumable from its checkpoint) and its evaluation on the test rows, written as one result file
with its answers beside it; ``run`` does the selected pieces that are not finished, the setup
first when it is missing, then the learning-rate stage (``lr_selection``), then the cells."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.cells import (
    CHOICE,
    all_names,
    cell_settings,
    chosen_rate,
    duration_text,
    machine,
    relative_paths,
    result_path,
    select,
    shown_path,
    stage_names,
    status,
    utc_now,
)
from experiments.config import SETUP, Cell, Experiment
from experiments.distill_config import cell_run_config, validation_curve
from experiments.lr_select import run_trial, write_choice
from experiments.measure import copy_answers, evaluate_student
from experiments.prepare import run_setup, setup_ready
from experiments.training import BEST_CE, distill_keeping_ce_best
from spectrumkd.io import write_json

__all__ = ["cell_run_config", "run", "run_cell", "validation_curve"]


def run_cell(
    exp: Experiment, cell: Cell, setup: Mapping[str, Any], *, progress: bool = True
) -> dict[str, Any]:
    """Train one cell (resuming its checkpoint), evaluate it, write its result file."""
    started, cpu_started = time.perf_counter(), time.process_time()
    run = cell_run_config(exp, cell, setup)
    folder = Path(run.output_dir)
    state_file = folder / "checkpoint" / "trainer_state.json"
    resumed = json.loads(state_file.read_text())["step"] if state_file.is_file() else None
    state = distill_keeping_ce_best(run, progress=progress)
    trained = time.perf_counter()
    chosen = folder / "best" if (folder / "best").is_dir() else folder / "final"
    metrics = evaluate_student(exp, chosen, folder / "eval", progress=progress)
    answers = copy_answers(folder / "eval", exp.results_dir / cell.name / "selected")
    ce_selected = None
    if exp.test.evaluate_ce_selected and state.get("best_ce") is not None:
        ce_selected = ce_selected_metrics(exp, cell, folder, state, progress=progress)
    finished = time.perf_counter()
    result = {
        "cell": cell.name,
        "objective_key": cell.key,
        "objective": cell.objective["objective"],
        "arm": cell.arm,
        "seed": cell.seed,
        "settings": cell_settings(exp, cell),
        "profile": exp.profile,
        "run_config": run.to_dict(),
        "training": {
            "epochs": state["epoch"],
            "steps": state["step"],
            "strategy": state["strategy"],
            "best": state.get("best"),
            "evaluated": chosen.name,
            "resumed_from_step": resumed,
            # The learning-rate trial whose finished training this cell is (lr_selection).
            **({"trained_as": folder.name} if folder.name != cell.name else {}),
            # val_kd is at each epoch's temperature (comparable across epochs only at one tau)
            "validation": validation_curve(folder / "metrics.jsonl"),
        },
        **metrics,
        "answers": [shown_path(path) for path in answers],
        **({"ce_selected": ce_selected} if ce_selected is not None else {}),
        # This process's time only: a resumed cell's earlier processes are not counted. CPU
        # time (all threads) is the steadier measure of the work on a machine shared with others.
        "wall_time_s": {
            "train": round(trained - started, 1),
            "evaluate": round(finished - trained, 1),
            "total": round(finished - started, 1),
        },
        "cpu_time_s": round(time.process_time() - cpu_started, 1),
        "machine": machine(),
        "finished_at": utc_now(),
    }
    write_json(result_path(exp, cell.name), relative_paths(result))
    if exp.prune_finished:  # the optimiser state is dead weight once the result is written
        shutil.rmtree(folder / "checkpoint", ignore_errors=True)
    return result


def ce_selected_metrics(
    exp: Experiment,
    cell: Cell,
    run_folder: Path,
    state: Mapping[str, Any],
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """The lowest-validation-CE epoch's test metrics beside the selected epoch's: the same
    numbers when it is the selected epoch, else its own evaluation (answers committed too)."""
    epoch = state["best_ce"]
    best = state.get("best") or {}
    if best.get("epoch") == epoch:
        return {"epoch": epoch, "same_as_selected": True}
    metrics = evaluate_student(exp, run_folder / BEST_CE, run_folder / "eval-ce", progress=progress)
    answers = copy_answers(run_folder / "eval-ce", exp.results_dir / cell.name / "ce_selected")
    return {
        "epoch": epoch,
        "same_as_selected": False,
        **metrics,
        "answers": [shown_path(path) for path in answers],
    }


def run(
    exp: Experiment, patterns: Sequence[str] | None = None, *, progress: bool = True
) -> list[str]:
    """Run the selected pieces that are not finished, setup first when needed, then the
    learning-rate stage (selecting ``lr`` selects its trials), then the cells; returns the names
    of what ran. A finished piece is skipped; one finished with other settings is refused, and
    so is a cell that needs the chosen learning rate before the stage has written it."""
    log = print if progress else (lambda *a, **k: None)
    cells = {cell.name: cell for cell in exp.cells()}
    stage = stage_names(exp)
    grid = exp.lr_selection.grid if exp.lr_selection else ()
    rates = {name: rate for name, rate in zip(stage, grid, strict=False)}  # the choice: no rate
    chosen = select(all_names(exp), patterns)
    if CHOICE in chosen:  # the choice needs every trial
        chosen = [n for n in all_names(exp) if n in chosen or n in rates]
    pending, finished = [], []
    for name in chosen:
        state, detail = status(exp, name)
        if state == "stale":
            raise ValueError(
                f"{shown_path(result_path(exp, name))} was {detail}; delete it to rerun the cell "
                "(or restore the config)"
            )
        if state == "done" and name != SETUP:
            finished.append(name)
        elif name != SETUP:
            pending.append(name)
    if stage and CHOICE not in chosen and any(name in cells for name in pending):
        chosen_rate(exp, next(name for name in pending if name in cells))  # refused when missing
    if exp.threads is not None:
        import torch

        torch.set_num_threads(exp.threads)
    executed: list[str] = []
    setup = setup_ready(exp)
    if setup is None and (pending or SETUP in chosen):
        log("setup: running")
        setup = run_setup(exp, progress=progress)
        executed.append(SETUP)
    elif SETUP in chosen:
        log("setup: finished, skipped")
    for name in finished:
        log(f"{name}: finished, skipped")
    for name in pending:
        log(f"{name}: running")
        if name in rates:
            result = run_trial(exp, rates[name], setup, progress=progress)
        elif name == CHOICE:
            result = write_choice(exp)
            assert result is not None, "every trial runs before the choice"
            log(f"{name}: learning rate {result['learning_rate']:g}")
            executed.append(name)
            continue
        else:
            result = run_cell(exp, cells[name], setup, progress=progress)
        log(f"{name}: done in {duration_text(result['wall_time_s']['total'])}")
        executed.append(name)
    return executed
