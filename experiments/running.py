"""Running the matrix: each cell is one ``jobs.distill`` of the initial student (resumable from
its checkpoint) and its evaluation on the test rows, written as one result file; ``run`` does the
selected cells that are not finished, the setup first when it is missing."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.cells import (
    cell_settings,
    duration_text,
    machine,
    relative_paths,
    result_path,
    select,
    shown_path,
    status,
    utc_now,
)
from experiments.config import ABLATION_CURATION_KEYS, SETUP, Cell, Experiment
from experiments.measure import evaluate_student
from experiments.prepare import (
    difficulties_file,
    initial_student,
    run_setup,
    setup_ready,
    training_data,
)
from spectrumkd import jobs
from spectrumkd.distillation import RunConfig
from spectrumkd.io import write_json


def cell_run_config(exp: Experiment, cell: Cell, setup: Mapping[str, Any]) -> RunConfig:
    """The distillation of one cell; the arms differ only in ``curation`` (an ablation is the
    +SpectrumKD arm with its changes)."""
    train = {**exp.train, **cell.objective, "seed": cell.seed, "epochs": exp.baseline_epochs}
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
            "output_dir": str(exp.runs_dir / cell.name),
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
            }
        elif "temperature" in row:
            temperatures[row["epoch"]] = row["temperature"]
    return [{**epochs[e], "temperature": temperatures.get(e)} for e in sorted(epochs)]


def run_cell(
    exp: Experiment, cell: Cell, setup: Mapping[str, Any], *, progress: bool = True
) -> dict[str, Any]:
    """Train one cell (resuming its checkpoint), evaluate it, write its result file."""
    started, cpu_started = time.perf_counter(), time.process_time()
    run = cell_run_config(exp, cell, setup)
    folder = Path(run.output_dir)
    state_file = folder / "checkpoint" / "trainer_state.json"
    resumed = json.loads(state_file.read_text())["step"] if state_file.is_file() else None
    state = jobs.distill(run, progress=progress)
    trained = time.perf_counter()
    chosen = folder / "best" if (folder / "best").is_dir() else folder / "final"
    metrics = evaluate_student(exp, chosen, folder / "eval", progress=progress)
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
            # val_kd is at each epoch's temperature (comparable across epochs only at one tau)
            "validation": validation_curve(folder / "metrics.jsonl"),
        },
        **metrics,
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


def run(
    exp: Experiment, patterns: Sequence[str] | None = None, *, progress: bool = True
) -> list[str]:
    """Run the selected cells that are not finished, setup first when needed; returns the names
    of what ran. A finished cell is skipped; one finished with other settings is refused."""
    log = print if progress else (lambda *a, **k: None)
    cells = {cell.name: cell for cell in exp.cells()}
    chosen = select([SETUP, *cells], patterns)
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
        result = run_cell(exp, cells[name], setup, progress=progress)
        log(f"{name}: done in {duration_text(result['wall_time_s']['total'])}")
        executed.append(name)
    return executed
