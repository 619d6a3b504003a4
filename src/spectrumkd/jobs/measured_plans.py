"""The plans that ``distill`` makes from its models rather than from a difficulty table,
written as ``schedule.json`` like every plan: a domain mixture (DDK, fixed mixing) from the
training rows' domains, the held-out rows of each domain and, for DDK, the teacher's and the
untrained student's perplexity on them; DA-KD from the teacher's cross-entropy on every training
row. The dynamic ones (DDK, DA-KD) measure the student again during training through their
plan's updater."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate import PartialState

from spectrumkd.curation import SCHEDULE_FILE, CurriculumPlan
from spectrumkd.curation.dakd import DAKD, DAKDConfig
from spectrumkd.curation.ddk import DDK, DDKConfig, DomainMix, DomainMixConfig, MixtureConfig
from spectrumkd.curation.mixture import perplexity
from spectrumkd.distillation import RunConfig, TrainConfig
from spectrumkd.distillation.run_config import settings_dict
from spectrumkd.io import write_json
from spectrumkd.jobs.inputs import DistillInputs
from spectrumkd.scoring import example_token_losses


def with_step_size(settings: MixtureConfig, train: TrainConfig) -> MixtureConfig:
    """The settings with ``examples_per_step`` filled in from the train settings and the
    number of processes (so an interval is exactly ``update_every_steps`` optimiser steps)."""
    if settings.examples_per_step is not None:
        return settings
    examples = train.batch_size * train.grad_accum * PartialState().num_processes
    return dataclasses.replace(settings, examples_per_step=examples)


def domain_perplexities(
    model: Any,
    validation: dict[str, Sequence[Any]],
    train: TrainConfig,
    pad_token_id: int,
) -> dict[str, float]:
    """``exp`` of ``model``'s mean token cross-entropy on each domain's held-out rows."""
    return {
        domain: perplexity(token_losses(model, rows, train, pad_token_id))
        for domain, rows in validation.items()
    }


def token_losses(
    model: Any, rows: Sequence[Any], train: TrainConfig, pad_token_id: int
) -> list[tuple[float, int]]:
    """``model``'s (summed CE, tokens) on each row, in the run's precision and batch size."""
    return example_token_losses(
        model,
        rows,
        precision=train.mixed_precision,
        pad_token_id=pad_token_id,
        max_batch_size=train.batch_size,
    )


def held_out_by_domain(inputs: DistillInputs, limit: int | None = None) -> dict[str, list[Any]]:
    """The held-out (validation) rows of each domain, the first ``limit`` of each."""
    grouped: dict[str, list[Any]] = {}
    for example in inputs.validation:
        grouped.setdefault(inputs.domains[example.id], []).append(example)
    return {domain: rows[:limit] for domain, rows in sorted(grouped.items())}


def measured_plan(run: RunConfig, inputs: DistillInputs) -> CurriculumPlan:
    """The plan of a ``ddk``, ``domain_mix`` or ``dakd`` run, written to
    ``output_dir/schedule.json`` with its settings."""
    assert run.curation is not None
    settings = run.curation.settings
    if isinstance(settings, DAKDConfig):
        if inputs.teacher is None:
            raise ValueError("DA-KD measures the teacher's cross-entropy: it needs the teacher")
        started = time.perf_counter()
        teacher_losses = token_losses(
            inputs.teacher, inputs.train_examples, run.train, inputs.tokenizer.pad_token_id
        )
        plan = DAKD(settings).plan_for_examples(inputs.train_examples, teacher_losses)
        seconds = time.perf_counter() - started
        metadata = {"settings": settings_dict(settings), **plan.metadata}
        plan = dataclasses.replace(plan, metadata={**metadata, "teacher_measure_seconds": seconds})
    else:
        plan = mixture_plan(run, inputs)
    if PartialState().is_main_process:
        write_json(Path(run.output_dir) / SCHEDULE_FILE, plan.to_dict())
    return plan


def mixture_plan(run: RunConfig, inputs: DistillInputs) -> CurriculumPlan:
    """The plan of a ``ddk`` or ``domain_mix`` run.

    DDK measures the teacher and the untrained student on each domain's held-out rows first
    (the spec's ``l_T``, once, and ``l_S`` at step 0); the seconds it took are recorded in the
    plan's ``mixture`` metadata beside those of the later updates (``metrics.jsonl``)."""
    assert run.curation is not None
    strategy = run.curation.strategy
    if not inputs.domains:
        raise ValueError(
            f"the {strategy} strategy mixes domains, and these rows have none: set "
            "data.domain_field (a column such as Dolly's category) or list data.mix sources"
        )
    settings = with_step_size(run.curation.settings, run.train)
    domains = {example.id: inputs.domains[example.id] for example in inputs.train_examples}
    if isinstance(settings, DomainMixConfig):
        plan = DomainMix(settings).plan_for_domains(domains)
    elif isinstance(settings, DDKConfig):
        if inputs.teacher is None:
            raise ValueError("DDK measures the teacher's perplexity: it needs the live teacher")
        validation = held_out_by_domain(inputs, settings.validation_rows_per_domain)
        started = time.perf_counter()
        pad = inputs.tokenizer.pad_token_id
        teacher = domain_perplexities(inputs.teacher, validation, run.train, pad)
        student = domain_perplexities(inputs.student, validation, run.train, pad)
        seconds = time.perf_counter() - started
        plan = DDK(settings).plan_for_domains(
            domains, teacher_perplexity=teacher, student_perplexity=student, validation=validation
        )
        mixture = {**plan.metadata["mixture"], "measure_seconds": seconds}
        plan = dataclasses.replace(plan, metadata={**plan.metadata, "mixture": mixture})
    else:
        raise ValueError(f"{strategy} is not a domain mixture")
    return dataclasses.replace(
        plan, metadata={"settings": settings_dict(settings), **plan.metadata}
    )
