"""Difficulty from the response tokens: their number (``length``), their model-free unigram
surprise (``unigram_entropy``), and the student's mean predictive entropy over them
(``predictive_entropy``): the difficulty measures of the classic curricula the SpectrumKD paper
compares against (its section 5.4; spec section 5).

A response token is a token whose label is not ``IGNORE_INDEX`` (the data stage appends EOS to
every response, so it counts too, as it does in the cross-entropy difficulty).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from spectrumkd.batching import (
    IGNORE_INDEX,
    collate,
    length_bucketed_batches,
    logits_at,
    predicting_positions,
)
from spectrumkd.models.precision import autocast
from spectrumkd.scoring.registry import MetricInputs
from spectrumkd.scoring.scorer import ScorableExample, check_fits_model
from spectrumkd.scoring.shards import run_in_shards, shard_plan

ENTROPY_SLICE = 4096  # positions per float32 softmax: a full K x V copy would cost gigabytes


def response_tokens(example: ScorableExample) -> list[int]:
    return [label for label in example.labels if label != IGNORE_INDEX]


# -------------------------------------------------------------------------------------- length


def response_lengths(
    examples: Sequence[ScorableExample], include_prompt: bool = False
) -> list[int]:
    """Tokens per example: the response's, or with ``include_prompt`` the whole sequence's."""
    if include_prompt:
        return [len(example.input_ids) for example in examples]
    return [len(response_tokens(example)) for example in examples]


def length_rows(inputs: MetricInputs) -> list[dict]:
    include_prompt = bool(inputs.options["include_prompt"])
    lengths = response_lengths(inputs.examples, include_prompt)
    return [
        {"id": example.id, "difficulty": float(n), "tokens": n}
        for example, n in zip(inputs.examples, lengths, strict=True)
    ]


# ----------------------------------------------------------------------------- unigram entropy


def unigram_log_probs(responses: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """log p_hat(v) for every id v < ``vocab_size``: add-one smoothed counts over all the
    responses' tokens, ``(count(v) + 1) / (total + vocab_size)``."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for tokens in responses:
        if tokens:
            np.add.at(counts, np.asarray(tokens, dtype=np.int64), 1.0)
    return np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)


def unigram_entropies(responses: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """Per response: ``-(1/|y|) sum_t log p_hat(y_t)`` (nats per token), p_hat from all of
    ``responses`` (:func:`unigram_log_probs`)."""
    largest = max((max(tokens) for tokens in responses if tokens), default=-1)
    if largest >= vocab_size:
        raise ValueError(
            f"token id {largest} is outside the vocabulary of {vocab_size}; pass the tokenizer "
            "the data was tokenised with (or the option vocab_size)"
        )
    empty = [i for i, tokens in enumerate(responses) if not tokens]
    if empty:
        raise ValueError(f"response {empty[0]} has no tokens; drop examples without a response")
    log_p = unigram_log_probs(responses, vocab_size)
    return np.asarray([-log_p[np.asarray(tokens)].mean() for tokens in responses])


def unigram_entropy_rows(inputs: MetricInputs) -> list[dict]:
    vocab_size = int(inputs.options["vocab_size"])
    if vocab_size == 0:
        if inputs.tokenizer is None:
            raise ValueError(
                "unigram_entropy needs the vocabulary size: pass the tokenizer or the option "
                "vocab_size"
            )
        vocab_size = len(inputs.tokenizer)
    responses = [response_tokens(example) for example in inputs.examples]
    values = unigram_entropies(responses, vocab_size)
    return [
        {"id": example.id, "difficulty": float(v), "tokens": len(tokens)}
        for example, v, tokens in zip(inputs.examples, values, responses, strict=True)
    ]


# -------------------------------------------------------------------------- predictive entropy


def entropies_of(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats, float64) of the softmax of each row of ``logits`` (K x V), in
    float32 slices of positions."""
    parts = []
    for start in range(0, logits.shape[0], ENTROPY_SLICE):
        log_p = torch.log_softmax(logits[start : start + ENTROPY_SLICE].float(), dim=-1)
        p = log_p.exp()
        # 0 * log 0 = 0: a logit of -inf (a masked id) must not turn the sum into NaN.
        parts.append(-(torch.where(p > 0, p * log_p, torch.zeros_like(p))).sum(-1).double())
    return torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float64)


def batch_entropies(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], precision: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed predictive entropy over the positions that predict a response token, and their
    count, per row (teacher forcing; the head computes logits only at those positions)."""
    labels = inputs["labels"]
    predicts = predicting_positions(labels)
    with logits_at(model, predicts) as gathered, autocast(precision, labels.device):
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).logits
    if gathered and logits.shape[:2] == (1, int(predicts.sum())):
        flat = logits[0]
    else:  # no output embedding to hook: the full logits, read at the same positions
        flat = logits[predicts.to(logits.device)]
    entropies = entropies_of(flat)
    rows = predicts.nonzero()[:, 0].to(entropies.device)
    sums = torch.zeros(labels.shape[0], dtype=torch.float64, device=entropies.device)
    return sums.index_add_(0, rows, entropies), predicts.sum(dim=1)


def predictive_entropy_rows(inputs: MetricInputs) -> list[dict]:
    model, examples, settings = inputs.model, inputs.examples, inputs.settings
    check_fits_model(model, examples)
    device = next(model.parameters()).device
    batches = length_bucketed_batches([len(e.input_ids) for e in examples], settings)
    ids = [example.id for example in examples]

    def compute(shard: list[list[int]]) -> list[dict]:
        rows = []
        for batch in shard:
            tensors = collate([examples[i] for i in batch], inputs.pad_token_id)
            with torch.inference_mode():
                sums, counts = batch_entropies(
                    model, {k: v.to(device) for k, v in tensors.items()}, settings.precision
                )
            for i, s, c in zip(batch, sums.tolist(), counts.tolist(), strict=True):
                rows.append({"index": i, "id": ids[i], "entropy_sum": s, "tokens": c})
        return rows

    was_training = model.training
    model.eval()
    try:
        rows = run_in_shards(
            shard_plan(batches, settings.shard_batches),
            compute,
            ids,
            shard_dir=None if inputs.work_dir is None else inputs.work_dir / "shards",
            required=("entropy_sum", "tokens"),
            progress=inputs.progress,
            desc="predictive entropy",
        )
    finally:
        model.train(was_training)
    empty = [row["id"] for row in rows if row["tokens"] == 0]
    if empty:
        raise ValueError(
            f"{len(empty)} examples have no response tokens to score (first: {empty[0]!r}); drop them"
        )
    return [
        {
            "id": row["id"],
            "difficulty": row["entropy_sum"] / row["tokens"],
            "entropy_sum": row["entropy_sum"],
            "tokens": row["tokens"],
        }
        for row in rows
    ]
