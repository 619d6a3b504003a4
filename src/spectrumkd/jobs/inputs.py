"""What a distillation trains on, loaded from a run config: the models, the tokenizer, the rows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from spectrumkd.data import Example, TokenizedExample
from spectrumkd.distillation import RunConfig, TrainConfig
from spectrumkd.models import (
    VocabAlignment,
    check_pair,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from spectrumkd.scoring import ScoringSettings


@dataclass
class DistillInputs:
    """What a distillation trains on, loaded: the models, the tokenizer they share and the rows.

    :func:`distill` loads these from a ``RunConfig``; the demo builds its own (rows of its
    choosing, a teacher already in memory) and trains through the same :func:`train_student`.
    """

    tokenizer: Any
    teacher: torch.nn.Module | None  # None once a teacher cache replaced it
    student: torch.nn.Module
    train_examples: list[TokenizedExample]
    validation: list[TokenizedExample]
    alignment: VocabAlignment | None = None  # None: the two vocabularies are used as they are
    device: torch.device | None = None  # where a teacher cache's tensors go
    # The rendered texts by id, for validation by generation (``train.val_rouge``).
    texts: dict[str, Example] = dataclasses.field(default_factory=dict)
    # Each training and validation row's domain by id (``data.domain_field`` or ``data.mix``);
    # empty when the data has no domains. The validation split then holds out rows per domain.
    domains: dict[str, str] = dataclasses.field(default_factory=dict)


def load_distill_inputs(run: RunConfig) -> DistillInputs:
    """The teacher (in ``run.dtype``), the student (float32: trained with autocast), the pair
    check, the data, its domains and its seeded validation split (stratified by domain where
    the data has domains)."""
    device = resolve_device(run.device)
    dtype = resolve_dtype(run.dtype, device)
    tokenizer = load_tokenizer(run.teacher)
    teacher = load_model(run.teacher, dtype=dtype, device=device)
    student = load_model(run.student, dtype=torch.float32, device=device)
    alignment = check_pair(tokenizer, load_tokenizer(run.student), teacher.config, student.config)
    texts = run.data.load_texts(tokenizer)
    dataset = run.data.tokenize(texts, tokenizer)
    kept = {example.id for example in dataset.examples}  # over-long rows are dropped
    domains = {id_: d for id_, d in run.data.domains(texts).items() if id_ in kept}
    train_examples, validation = run.data.split_validation(dataset.examples, domains)
    return DistillInputs(
        tokenizer=tokenizer,
        teacher=teacher,
        student=student,
        train_examples=train_examples,
        validation=validation,
        device=device,
        alignment=alignment,
        texts={example.id: example for example in texts},
        domains=domains,
    )


def forward_settings(train: TrainConfig) -> ScoringSettings:
    """``train.mixed_precision`` is the precision of every forward of the run: the scoring and
    the teacher cache here, the student and the live teacher in the trainer."""
    return ScoringSettings(precision=train.mixed_precision)
