"""What every stage shares about batches of token sequences: the label that marks a token as not
trained on, padding (right for teacher-forced passes, left for generation), batching by length,
the positions that predict a response token, and logits computed only there.

The bottom of the package: it imports nothing from ``spectrumkd``, so data, scoring,
distillation and evaluation can all stand on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch

IGNORE_INDEX = -100  # the label of a token no loss reads (prompt, padding): PyTorch's default


class TokenSequence(Protocol):
    """An example as the batchers read it (``spectrumkd.data.TokenizedExample`` is one)."""

    id: str
    input_ids: Sequence[int]
    labels: Sequence[int]


class BatchBudget(Protocol):
    """Batch limits (``spectrumkd.scoring.ScoringSettings`` is one); ``resolved`` fills a
    ``max_tokens_per_batch`` of None for a device."""

    max_batch_size: int
    max_tokens_per_batch: int | None

    def resolved(self, device: torch.device) -> BatchBudget: ...


def prompt_token_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Prompt token ids exactly as the data stage builds them (scoring, training, quality,
    generation), so a model is evaluated on the token sequence it was trained to continue."""
    # A chat template already writes the BOS text (e.g. Llama 3's <|begin_of_text|>); letting the
    # tokenizer add another would give the model a doubled BOS it never saw in training.
    bos = getattr(tokenizer, "bos_token", None)
    has_bos = [bool(bos) and prompt.startswith(bos) for prompt in prompts]
    result: list[list[int]] = [[] for _ in prompts]
    for flag in (False, True):
        indices = [i for i, value in enumerate(has_bos) if value is flag]
        if not indices:
            continue
        encoded = tokenizer([prompts[i] for i in indices], add_special_tokens=not flag)["input_ids"]
        for i, ids in zip(indices, encoded, strict=True):
            result[i] = list(ids)
    return result


def collate(
    batch: Sequence[TokenSequence], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad a batch into ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on padding)."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    length = max(len(example.input_ids) for example in batch)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(batch):
        size = len(example.input_ids)
        if len(example.labels) != size:
            raise ValueError(
                f"example {example.id!r}: {size} input ids but {len(example.labels)} labels"
            )
        input_ids[row, :size] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :size] = 1
        labels[row, :size] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted longest first (ties in input order), cut into batches of ``batch_size``.
    Longest first: a batch that does not fit in memory fails at the start, not hours in."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each row right-aligned."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            input_ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            attention_mask[index, width - len(row) :] = 1
    return input_ids, attention_mask


def length_bucketed_batches(lengths: Sequence[int], settings: BatchBudget) -> list[list[int]]:
    """Group example indices into batches of similar length under a padded-token budget.

    Longest first; ties keep dataset order, so the plan is a pure function of the lengths.
    An example longer than the budget gets a batch of its own.
    """
    if settings.max_tokens_per_batch is None:
        settings = settings.resolved(torch.device("cpu"))
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]  # the first is the longest
        if current and (
            (len(current) + 1) * width > settings.max_tokens_per_batch
            or len(current) >= settings.max_batch_size
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the positions t whose next token (label t + 1) is a response token."""
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[..., :-1] = labels[..., 1:] != IGNORE_INDEX
    return predicts


@contextmanager
def logits_at(model: torch.nn.Module, positions: torch.Tensor) -> Iterator[bool]:
    """Make the output head compute logits only at ``positions`` (a boolean batch x length mask).

    The vocabulary projection and its logits dominate a small model's forward on the CPU (at
    batch 32, 49k vocabulary: 1 GB of logits), and half the positions are prompt tokens that the
    difficulty never reads. A pre-hook on the output embedding gathers the hidden states of the
    wanted positions, so the head sees a (1, K, hidden) tensor; what models do after the head
    (soft-capping, scaling) still applies. Yields False when the model has no output embedding
    module to hook, and the caller then takes the full logits.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield False
        return
    # The mask follows the hidden states to their device (a model split over GPUs).
    handle = head.register_forward_pre_hook(
        lambda module, args: (args[0][positions.to(args[0].device)].unsqueeze(0), *args[1:])
    )
    try:
        yield True
    finally:
        handle.remove()
