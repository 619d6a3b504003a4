"""On-policy distillation (GKD): part of each batch gets responses the student samples itself.

For the chosen rows, the prompt (the tokens before the first response label) is kept, the
student samples a continuation, and the row's response becomes that sample: its labels are the
sampled tokens up to and including the first EOS, and everything after the first EOS is cut off
(TRL and the spec mask it). The teacher then scores the new sequence like any other, so every
objective works on-policy unchanged. The rows keep their place, so example ids stay aligned.

The student samples only ids of the pair's shared vocabulary (``vocab``, see
:func:`sampling_vocabulary`): a student whose embedding is padded past the teacher's has rows
the teacher lacks, and an id sampled from one of them would index past the teacher's embedding.

Why the sampled rows are marked (``on_policy`` in the batch): the ground-truth cross-entropy
has no meaning on the student's own tokens (it would reward the student for what it already
says), so the trainer leaves those rows out of the CE term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spectrumkd.batching import IGNORE_INDEX
from spectrumkd.curation.spectrum import round_half_up
from spectrumkd.models.generation import KnownTokensOnly, decode
from spectrumkd.models.pairing import VocabAlignment, vocab_rows


def rows_to_sample(batch_size: int, fraction: float) -> int:
    """How many rows of a micro-batch the student answers itself (``fraction`` of them, half
    up, so a fraction of 0.5 samples one row of a micro-batch of one)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"on_policy_fraction={fraction!r} must be in [0, 1]")
    return min(batch_size, int(round_half_up(fraction * batch_size)))


def prompt_lengths(labels: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """Per row, the tokens before the first response label (the whole row if it has none)."""
    is_response = labels != IGNORE_INDEX
    lengths = attention_mask.sum(1)
    first = torch.where(is_response.any(1), is_response.float().argmax(1), lengths)
    return first.tolist()


def sampling_vocabulary(student: torch.nn.Module, teacher: Any) -> VocabAlignment | None:
    """What the student may sample for ``teacher`` to score: the pair's alignment when the
    teacher carries one (``LiveTeacher(model, alignment)``, from
    :func:`~spectrumkd.models.pairing.check_pair`), else the ids both models have rows for;
    None for a teacher without a model (nothing to restrict by)."""
    alignment = getattr(teacher, "alignment", None)
    if alignment is not None:
        return alignment
    model = getattr(teacher, "model", None)
    if model is None:
        return None
    teacher_rows, student_rows = vocab_rows(model), vocab_rows(student)
    return VocabAlignment(min(teacher_rows, student_rows), teacher_rows, student_rows)


def sample_responses(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_ids: Sequence[int],
    temperature: float,
    max_new_tokens: int,
    vocab: VocabAlignment | None = None,
    precision: str = "auto",
) -> list[list[int]]:
    """The student's sampled continuation of each prompt, cut after its first EOS.

    Prompts are left-padded into one batch and decoded with the KV-cached loop of
    :func:`spectrumkd.models.generation.decode` (a row leaves the batch once it ends).
    Sampling is plain ancestral sampling at ``temperature`` (no top-k, no top-p), as GKD defines
    it, over the ids of ``vocab`` (below its ``vocab_size``, none of its ``missing_ids``; every
    row when None), under ``precision`` (``auto``: bf16 where the device has fast bf16); it
    draws from the global torch RNG, which the trainer's checkpoints save and restore.
    """
    if not prompts:
        return []
    if not temperature > 0:
        raise ValueError(f"on-policy sampling temperature must be > 0, got {temperature}")
    known = None if vocab is None else KnownTokensOnly(vocab.vocab_size, vocab.missing_ids)
    return decode(
        model,
        prompts,
        pad_token_id=pad_token_id,
        eos_token_ids=eos_token_ids,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        known=known,
        precision=precision,
    )


def with_student_responses(
    model: torch.nn.Module,
    batch: dict,
    fraction: float,
    *,
    pad_token_id: int,
    eos_token_ids: Sequence[int],
    temperature: float,
    max_new_tokens: int,
    vocab: VocabAlignment | None = None,
    precision: str = "auto",
) -> dict:
    """``batch`` with the responses of its first ``fraction`` of rows replaced by student samples.

    The sampler already shuffles, so the first rows are a random choice. ``vocab`` limits the
    ids sampled and ``precision`` is the sampling's compute precision (see
    :func:`sample_responses`). Returns a new right-padded batch with the same
    keys plus ``on_policy``, a boolean row mask.
    """
    size = batch["input_ids"].shape[0]
    chosen = rows_to_sample(size, fraction)
    on_policy = torch.zeros(size, dtype=torch.bool)
    on_policy[:chosen] = True
    if chosen == 0:
        return {**batch, "on_policy": on_policy}
    starts = prompt_lengths(batch["labels"].cpu(), batch["attention_mask"].cpu())
    ids = batch["input_ids"].cpu()
    prompts = [ids[row, : starts[row]].tolist() for row in range(chosen)]
    samples = sample_responses(
        model,
        prompts,
        pad_token_id=pad_token_id,
        eos_token_ids=eos_token_ids,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        vocab=vocab,
        precision=precision,
    )
    rows: list[tuple[list[int], list[int]]] = []
    for row in range(size):
        if row < chosen:
            prompt, response = prompts[row], samples[row]
            rows.append((prompt + response, [IGNORE_INDEX] * len(prompt) + response))
        else:
            length = int(batch["attention_mask"][row].sum())
            rows.append((ids[row, :length].tolist(), batch["labels"][row, :length].tolist()))
    width = max(len(tokens) for tokens, _ in rows)
    input_ids = torch.full((size, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((size, width), dtype=torch.long)
    labels = torch.full((size, width), IGNORE_INDEX, dtype=torch.long)
    for row, (tokens, row_labels) in enumerate(rows):
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, : len(tokens)] = 1
        labels[row, : len(tokens)] = torch.tensor(row_labels, dtype=torch.long)
    device = batch["input_ids"].device
    return {
        **batch,
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "labels": labels.to(device),
        "on_policy": on_policy,
    }
