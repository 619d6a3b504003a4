"""Distillation quality without generation: how well the student predicts the reference answer.

Per example, over the tokens of the (first) reference response plus the closing EOS, tokenised
exactly as the data stage does for training and scoring:

- ``ce``: the student's mean next-token cross-entropy (nats/token);
- ``kl_forward`` / ``kl_reverse``: given a teacher, the mean per-token KL(p || q) and KL(q || p)
  between the teacher's p and the student's q at temperature 1, from the per-token functions of
  :mod:`spectrumkd.distillation.objectives` (the same code the training losses use).

These are deterministic and cheap (one forward pass per model, no sampling), so they separate
two checkpoints where ROUGE-L over five sampled seeds is still noisy.

The output heads compute logits only at the positions that predict a response token (the
scorer's :func:`~spectrumkd.batching.logits_at` hook) and the float32 log-probabilities
are built in slices, so a batch never holds ``tokens x vocabulary`` float32 copies of both models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from spectrumkd.batching import collate, length_bucketed_batches, logits_at, predicting_positions
from spectrumkd.data.loading import Example
from spectrumkd.data.tokenize import TokenizedExample, tokenize_examples
from spectrumkd.distillation.objectives import forward_kl, reverse_kl, scaled_log_probs
from spectrumkd.evaluation.instruction.suites import EvalExample
from spectrumkd.scoring.scorer import ScoringSettings

SLICE = 1024  # positions per float32 log-softmax


@dataclass(frozen=True)
class QualityRow:
    """One example's per-token means (nats/token); KL fields are None without a teacher."""

    id: str
    ce: float
    kl_forward: float | None
    kl_reverse: float | None
    tokens: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QualityResult:
    rows: list[QualityRow]
    dropped: list[tuple[str, str]]  # (id, reason): too long for max_length

    def summary(self) -> dict[str, Any]:
        """Token-weighted means over the set (every response token counts once)."""
        return summarize_quality([row.as_dict() for row in self.rows], len(self.dropped))


def summarize_quality(rows: Sequence[dict[str, Any]], dropped: int = 0) -> dict[str, Any]:
    tokens = sum(int(row["tokens"]) for row in rows)

    def mean(key: str) -> float | None:
        if not rows or any(row[key] is None for row in rows):
            return None
        return sum(row[key] * row["tokens"] for row in rows) / max(tokens, 1)

    return {
        "ce": mean("ce"),
        "kl_forward": mean("kl_forward"),
        "kl_reverse": mean("kl_reverse"),
        "tokens": tokens,
        "examples": len(rows),
        "dropped": dropped,
    }


def distillation_quality(
    student: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[EvalExample],
    *,
    teacher: torch.nn.Module | None = None,
    max_length: int = 512,
    batch_size: int = 8,
    progress: bool = False,
) -> QualityResult:
    """Per-example CE of the first reference and, given ``teacher``, forward and reverse KL.

    Examples longer than ``max_length`` tokens (prompt + reference + EOS) are dropped and listed,
    never truncated (a cut reference would score a different answer).
    """
    tokenized = tokenize_examples(
        [Example(id=e.id, prompt=e.prompt, response=e.references[0]) for e in examples],
        tokenizer,
        max_length=max_length,
    )
    items = tokenized.examples
    if not items:
        return QualityResult(rows=[], dropped=tokenized.dropped)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    device = next(student.parameters()).device
    settings = ScoringSettings(max_batch_size=batch_size).resolved(device)
    batches = length_bucketed_batches([len(e.input_ids) for e in items], settings)
    by_index: dict[int, QualityRow] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="quality", unit="example")
    try:
        for batch in batches:
            rows = _batch_quality(student, teacher, [items[i] for i in batch], pad_id, device)
            by_index.update(zip(batch, rows, strict=True))
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return QualityResult(rows=[by_index[i] for i in range(len(items))], dropped=tokenized.dropped)


def _head_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor], predicts) -> torch.Tensor:
    """Logits [K, V] at the ``predicts`` positions, in row-major order."""
    with logits_at(model, predicts) as gathered:
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).logits
    if gathered and logits.shape[:2] == (1, int(predicts.sum())):
        return logits[0]
    return logits[predicts.to(logits.device)]  # a model whose head could not be hooked


@torch.inference_mode()
def _batch_quality(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    batch: list[TokenizedExample],
    pad_id: int,
    device: torch.device,
) -> list[QualityRow]:
    # Right padding: with the attention mask, real tokens get the logits they get unpadded.
    inputs = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
    labels = inputs["labels"]
    predicts = predicting_positions(labels)
    targets = labels[:, 1:][predicts[:, :-1]]
    student_logits = _head_logits(student, inputs, predicts)
    teacher_logits = None
    if teacher is not None:
        teacher_device = next(teacher.parameters()).device
        teacher_inputs = {k: v.to(teacher_device) for k, v in inputs.items()}
        teacher_logits = _head_logits(teacher, teacher_inputs, predicts.to(teacher_device))
        teacher_logits = teacher_logits.to(student_logits.device)
        # Padded embedding rows past the shared tokenizer (check_pair verified it is shared)
        # are never a target: compare the models on the rows both have.
        width = min(student_logits.shape[-1], teacher_logits.shape[-1])
        student_logits, teacher_logits = student_logits[:, :width], teacher_logits[:, :width]

    ce, fkl, rkl = [], [], []
    for start in range(0, targets.numel(), SLICE):
        stop = start + SLICE
        student_logp = scaled_log_probs(student_logits[start:stop], 1.0)
        ce.append(
            F.nll_loss(student_logp, targets[start:stop].to(student_logp.device), reduction="none")
        )
        if teacher_logits is not None:
            teacher_logp = scaled_log_probs(teacher_logits[start:stop], 1.0)
            fkl.append(forward_kl(student_logp, teacher_logp))
            rkl.append(reverse_kl(student_logp, teacher_logp))

    rows = predicts.nonzero()[:, 0].to(student_logits.device)
    counts = predicts.sum(dim=1).tolist()

    def per_row(values: list[torch.Tensor]) -> list[float] | None:
        if not values:
            return None
        sums = torch.zeros(len(batch), dtype=torch.float64, device=rows.device)
        sums.index_add_(0, rows, torch.cat(values).double())
        return [s / max(c, 1) for s, c in zip(sums.tolist(), counts, strict=True)]

    ce_rows, fkl_rows, rkl_rows = per_row(ce) or [], per_row(fkl), per_row(rkl)
    if not all(math.isfinite(value) for value in ce_rows):
        raise FloatingPointError(
            "non-finite cross-entropy; the model's weights or dtype overflow (try dtype float32)"
        )
    return [
        QualityRow(
            id=example.id,
            ce=ce_rows[i],
            kl_forward=None if fkl_rows is None else fkl_rows[i],
            kl_reverse=None if rkl_rows is None else rkl_rows[i],
            tokens=int(counts[i]),
        )
        for i, example in enumerate(batch)
    ]
