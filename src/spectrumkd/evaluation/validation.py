"""Validation by generation during training: ROUGE-L of the student's answers each epoch.

The trainer takes validators as plain callables (model -> metrics); this one lives with the
metric it computes, so the trainer needs nothing from evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from spectrumkd.evaluation.rouge import rouge_l_scores
from spectrumkd.models.generation import generate


def rouge_validator(
    tokenizer: Any,
    prompts: list[str],
    references: list[str],
    *,
    sampled: bool,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 64,
    precision: str = "auto",
) -> Callable[[Any], dict[str, float]]:
    """A per-epoch validator: mean ROUGE-L x 100 of the student's answers to ``prompts`` (greedy,
    or sampled at temperature 1 with a fixed seed, so epochs differ only by the weights), generated
    at ``precision`` (``auto``: bf16 autocast where the device has fast bf16), ``batch_size`` rows at
    a time (``generate``'s default: 64 rows refilled as rows finish were 2.07x batches of 16 on
    this project's CPU, benchmarks/README.md "Generation", table 2)."""

    def validate(model: Any) -> dict[str, float]:
        answers = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=1.0 if sampled else 0.0,
            seed=seed,
            batch_size=batch_size,
            precision=precision,
        )
        scores = rouge_l_scores(answers, references)
        return {"val_rouge": float(np.mean(scores)) if scores else 0.0}

    return validate
