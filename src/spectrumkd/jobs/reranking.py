"""SRD's optional re-ranking between stages (spec ``siblings.md`` section 3), in the distill job.

With ``curation: {strategy: srd, rerank_between_stages: true}`` the run is trained stage by
stage, each stage its own :func:`spectrumkd.distillation.train` run in
``output_dir/stages/stage-<s>/`` (that stage's epochs, from the previous stage's final student,
a fresh optimiser and LR schedule; the seed moved on by the epochs before, so each epoch serves
its examples in the order a one-run staged plan would). After stage s the trained student is
rescored on the training rows with the run's metric (``stages/stage-<s>/scores/``) and the
stages after s are replanned from the new order
(:func:`~spectrumkd.curation.replan_from_stage`); the stages already trained keep their plan.

Each stage folder holds ``stage.json`` once its training is over: the digest of the plan the
stage trained (the whole plan at that point) and its trainer state. A rerun reuses a finished
stage (``final/`` and ``stage.json``, the plan recomputed from the reused scores and checked
against the recorded digest), and resumes the stage in progress from its own checkpoint.

At the end ``output_dir`` holds what a one-run distillation writes there: ``final/`` (the last
stage's student), ``metrics.jsonl`` (every stage's rows, epochs and steps numbered over the
whole run), ``best/`` (the best validation epoch of any stage, when there was validation) and
``schedule.json``, the plan actually trained, its ``metadata["reranking"]`` one entry per
re-ranking. With LoRA each stage trains a fresh adapter on the previous stage's merged student.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from spectrumkd.curation import (
    SCHEDULE_FILE,
    CurriculumPlan,
    build_strategy,
    rank_easy_to_hard,
    replan_from_stage,
)
from spectrumkd.distillation import RunConfig
from spectrumkd.io import write_json, write_jsonl
from spectrumkd.jobs.curating import with_settings
from spectrumkd.jobs.inputs import DistillInputs, forward_settings
from spectrumkd.jobs.scoring import student_difficulties
from spectrumkd.models import load_model

STAGES_DIR = "stages"
STAGE_FILE = "stage.json"


def reranks(run: RunConfig) -> bool:
    """Whether ``run`` asks for SRD's re-ranking between stages."""
    return run.curation is not None and bool(
        getattr(run.curation.settings, "rerank_between_stages", False)
    )


def check_rerank(run: RunConfig) -> None:
    """A one-line refusal of a re-ranking run that cannot rescore (before any model loads)."""
    if reranks(run) and run.curation.difficulties is not None:
        raise ValueError(
            "rerank_between_stages rescores the partly trained student with the run's metric, "
            "and a difficulties table names none; drop curation.difficulties or the re-ranking"
        )


def stage_folder(out: Path, stage: int) -> Path:
    return out / STAGES_DIR / f"stage-{stage}"


def stage_plan(plan: CurriculumPlan, stage: int) -> CurriculumPlan:
    """The epochs of ``stage`` alone, numbered from 1, with no restart (a run of its own starts
    with a fresh optimiser and schedule anyway)."""
    epochs = tuple(
        dataclasses.replace(e, epoch=number, restart=False)
        for number, e in enumerate(plan.stage_epochs(stage), start=1)
    )
    return CurriculumPlan(strategy=plan.strategy, epochs=epochs, metadata={"stage": stage})


def rescored_plan(
    run: RunConfig,
    inputs: DistillInputs,
    student: torch.nn.Module,
    folder: Path,
    progress: bool,
) -> CurriculumPlan:
    """The strategy's plan on the difficulties of ``student`` (the run's metric and options),
    scored into ``folder/scores`` (reused by a rerun)."""
    scored = student_difficulties(
        run.curation.scoring_metric,
        student,
        inputs.tokenizer,
        inputs.train_examples,
        folder / "scores",
        texts=list(inputs.texts.values()) or None,
        settings=forward_settings(run.train),
        progress=progress,
        **run.curation.metric_options,
    )
    settings = run.curation.settings
    plan = build_strategy(run.curation.strategy, settings).plan(scored.ids, scored.difficulties)
    ranking = rank_easy_to_hard(scored.ids, scored.difficulties)
    plan = with_settings(plan, settings)
    return dataclasses.replace(
        plan,
        metadata={
            **plan.metadata,
            "mean_difficulty": float(ranking.mean_difficulty(0, len(ranking))),
        },
    )


def finished_stage(folder: Path, plan: CurriculumPlan, stage: int) -> dict[str, Any] | None:
    """The recorded trainer state of a finished stage, None when it has still to train; refused
    when the stage was trained on another plan (the scores it was planned from changed)."""
    record = folder / STAGE_FILE
    if not (record.is_file() and (folder / "final").is_dir()):
        return None
    saved = json.loads(record.read_text(encoding="utf-8"))
    if saved["plan"] != plan.digest():
        raise ValueError(
            f"{folder} holds stage {stage} of another plan; use another output_dir, or delete "
            "its stages folder to start over"
        )
    return saved["state"]


def distill_reranked(
    run: RunConfig,
    inputs: DistillInputs,
    plan: CurriculumPlan,
    signal: Any,
    validators: list,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``plan`` (SRD's static plan) stage by stage from the teacher ``signal``, with the
    epochs' ``validators``, re-ranking before every later stage; writes ``output_dir`` as the
    module docstring says and returns the trainer state of the whole run (epoch and step
    counted over all stages, ``stages`` the state of each)."""
    from spectrumkd.distillation import train

    out = Path(run.output_dir)
    student = inputs.student
    states: list[dict[str, Any]] = []
    reranking: list[dict[str, Any]] = []
    epochs_before = 0
    for stage in range(1, plan.num_stages + 1):
        folder = stage_folder(out, stage)
        if stage > 1:
            # the stage before was trained: rank by what that student finds hard now
            previous = stage_folder(out, stage - 1)
            reranked = rescored_plan(run, inputs, student, previous, progress)
            plan = replan_from_stage(plan, reranked, stage)
            reranking.append(
                {
                    "before_stage": stage,
                    "scored_after_stage": stage - 1,
                    "scores": str(Path(STAGES_DIR) / previous.name / "scores"),
                    "metric": run.curation.scoring_metric,
                    "mean_difficulty": reranked.metadata["mean_difficulty"],
                }
            )
        state = finished_stage(folder, plan, stage)
        if state is None:
            config = dataclasses.replace(run.train, seed=run.train.seed + epochs_before)
            state = train(
                student,
                signal,
                inputs.train_examples,
                config,
                folder,
                plan=stage_plan(plan, stage),
                pad_token_id=inputs.tokenizer.pad_token_id,
                eos_token_id=inputs.tokenizer.eos_token_id,
                validation=inputs.validation,
                validators=validators,
                tokenizer=inputs.tokenizer,
                progress=progress,
            )
            write_json(folder / STAGE_FILE, {"stage": stage, "plan": plan.digest(), "state": state})
        states.append(state)
        if stage < plan.num_stages:
            # The next stage starts from this stage's saved student (LoRA merged), on a rerun too.
            student = load_model(folder / "final", device=inputs.device or "cpu")
        epochs_before += len(plan.stage_epochs(stage))
    trained = dataclasses.replace(plan, metadata={**plan.metadata, "reranking": reranking})
    return finish(out, trained, states, inputs)


def finish(
    out: Path, plan: CurriculumPlan, states: list[dict[str, Any]], inputs: DistillInputs
) -> dict[str, Any]:
    """``output_dir``'s files of the whole run from the stages' folders; the run's state."""
    rows: list[dict[str, Any]] = []
    epochs_before = steps_before = 0
    best: dict[str, Any] | None = None
    for stage, state in enumerate(states, start=1):
        folder = stage_folder(out, stage)
        for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "epoch" in row:
                row["epoch"] += epochs_before
            if "step" in row:
                row["step"] += steps_before
            rows.append({**row, "stage": stage})
        kept = state.get("best")
        if kept is not None and (best is None or better(kept, best)):
            best = {**kept, "epoch": kept["epoch"] + epochs_before, "stage": stage}
        epochs_before += len(plan.stage_epochs(stage))
        steps_before += state["step"]
    write_jsonl(out / "metrics.jsonl", rows)
    copy_folder(stage_folder(out, len(states)) / "final", out / "final")
    if best is not None:
        copy_folder(stage_folder(out, best["stage"]) / "best", out / "best")
    write_json(out / SCHEDULE_FILE, plan.to_dict())
    state = {
        **states[-1],
        "epoch": epochs_before,
        "step": steps_before,
        "plan": plan.digest(),
        "stages": states,
    }
    state.pop("best", None)
    if best is not None:
        state["best"] = best
    return state


def better(candidate: dict[str, Any], best: dict[str, Any]) -> bool:
    """The trainer's rule (:func:`spectrumkd.distillation.validation.improves_on`): lower wins
    except for the ROUGE-L metrics."""
    from spectrumkd.distillation.validation import improves_on

    return improves_on(best, candidate["metric"], candidate["value"])


def copy_folder(source: Path, target: Path) -> None:
    """``source`` copied to ``target``, replacing what was there (through a sibling folder, so
    a kill leaves either the old copy or none, and a rerun copies again)."""
    partial = target.with_name(target.name + ".copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
