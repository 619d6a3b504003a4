"""One optimiser step of white-box KD: the summed CE and KD of a micro-batch, and the backward
over the micro-batches of a step.

``step_losses`` takes one of three routes to the same sums: the dense one (both models' logits),
the cached teacher's top k plus its tail bucket, and the memory-bounded chunked engine (fused
head, token chunks). :func:`accumulate_gradients` normalises by the response tokens of the whole
step, first drawing the student's own samples when the run is on-policy (:class:`OnPolicy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from spectrumkd.batching import IGNORE_INDEX, collate
from spectrumkd.data.tokenize import TokenizedExample
from spectrumkd.distillation.chunked import chunked_kd_loss, chunked_topk_kd_loss
from spectrumkd.distillation.objectives import kd_loss, topk_kd_loss
from spectrumkd.distillation.on_policy import with_student_responses
from spectrumkd.distillation.signals import (
    LiveTeacher,
    TeacherSignalSource,
    head_inputs,
    unwrapped,
)
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.models.pairing import VocabAlignment


def resolve_loss_impl(
    config: TrainConfig,
    student: torch.nn.Module,
    teacher: TeacherSignalSource,
    *,
    sharded: bool = False,
) -> str:
    """``loss_impl`` as the run uses it: ``auto`` is the chunked engine where it applies (a live
    teacher, whose hidden states it projects, or a teacher cache read as its top k; bias-free
    output heads; no CE of on-policy samples; weights not sharded by FSDP or DeepSpeed, as the
    engine reads the head weight itself) and full logits elsewhere. The engine computes the same
    sums (tested against full logits) in less memory, and faster on a CPU: 2.05x TRL's step
    against 1.36x for full logits (benchmarks/README.md, KD step, run 3)."""
    if config.loss_impl != "auto":
        return config.loss_impl
    live = isinstance(teacher, LiveTeacher)
    heads = [unwrapped(student).get_output_embeddings()]
    if live:
        heads.append(unwrapped(teacher.model).get_output_embeddings())
    applies = (
        not sharded
        and (live or _reads_top_k(teacher))
        and all(head is not None and getattr(head, "bias", None) is None for head in heads)
        and not (config.on_policy_fraction > 0 and config.alpha > 0)
    )
    return "chunked" if applies else "full"


def collate_with_ids(batch: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, Any]:
    """A padded batch that remembers its example ids (the curriculum tests and logs read them)."""
    return {**collate(batch, pad_token_id), "ids": [example.id for example in batch]}


def step_losses(
    student,
    teacher: TeacherSignalSource,
    batch: dict,
    objective,
    temperature: float,
    *,
    chunk_size: int | None = None,
    alpha: float | None = None,
):
    """Summed CE and KD over the response tokens of one micro-batch (no normalisation here).

    Rows marked ``on_policy`` (the student's own samples) count for KD but not for CE. With
    ``chunk_size`` the loss runs through the memory-bounded engine (fused head, token chunks).
    With ``alpha`` 0 the CE only gets logged: it is computed outside the autograd graph.
    """
    ce_grad = alpha is None or alpha > 0
    if chunk_size is not None:
        return _chunked_step_losses(
            student, teacher, batch, objective, temperature, chunk_size, ce_grad
        )
    ce_sum, (kd_sum,) = full_step_losses(
        student, teacher, batch, objective, (temperature,), ce_grad
    )
    return ce_sum, kd_sum


def full_step_losses(
    student,
    teacher: TeacherSignalSource,
    batch: dict,
    objective,
    temperatures: Sequence[float],
    ce_grad: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The summed CE and the summed KD at each of ``temperatures``, from one forward pass of
    both models (the CE without its gradient unless ``ce_grad``)."""
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]  # position t predicts token t+1
    logits = logits[:, :-1]
    if _reads_top_k(teacher):
        return _top_k_step_losses(logits, labels, teacher, batch, objective, temperatures, ce_grad)
    if hasattr(teacher, "teacher_vocab_size") and teacher.teacher_vocab_size > teacher.vocab_size:
        # Its tail counts rows the student does not have, and top-k ids past them would vanish.
        raise ValueError(
            f"the teacher cache covers {teacher.teacher_vocab_size} vocabulary rows but the "
            f"run's shared vocabulary is {teacher.vocab_size}; build the cache with "
            f"vocab_size={teacher.vocab_size}"
        )
    teacher_logits = teacher.logits(batch)[:, :-1].to(logits.device)
    if logits.shape[-1] > teacher_logits.shape[-1]:
        # A padded student embedding (rows past the tokenizer's vocabulary, which check_pair has
        # verified both models share): those rows are never a target, so drop them.
        logits = logits[..., : teacher_logits.shape[-1]]
    ce_labels = labels
    if "on_policy" in batch and bool(batch["on_policy"].any()):
        ce_labels = labels.masked_fill(batch["on_policy"].to(labels.device)[:, None], IGNORE_INDEX)
    ce_sum = _response_ce(logits, ce_labels, ce_grad)
    kd_sums = []
    for temperature in temperatures:
        teacher_tail = None
        if hasattr(teacher, "tail_logsumexp"):  # a truncated (cached) teacher: its leftover mass
            teacher_tail = teacher.tail_logsumexp(batch, temperature)[:, :-1].to(logits.device)
        kd_sum, _ = kd_loss(logits, teacher_logits, labels, objective, temperature, teacher_tail)
        kd_sums.append(kd_sum)
    return ce_sum, kd_sums


def _reads_top_k(teacher) -> bool:
    """Whether the teacher's signal can be read as its top-k entries (the offline cache) instead
    of dense logits: the cache's vocabulary must not be wider than the student's, whose extra
    ids only :meth:`CachedTeacher.logits` drops."""
    return hasattr(teacher, "top_k") and teacher.teacher_vocab_size <= teacher.vocab_size


def _response_ce(logits: torch.Tensor, labels: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """Summed float32 CE over the response positions alone (labels not -100): about half of an
    instruction example is prompt, whose float32 logits and log-softmax would be wasted. Without
    ``with_grad`` (alpha 0) it is only logged, so it stays out of the graph."""
    mask = labels != IGNORE_INDEX
    with nullcontext() if with_grad else torch.no_grad():
        return torch.nn.functional.cross_entropy(
            logits[mask].float(), labels[mask], reduction="sum"
        )


def _top_k_step_losses(logits, labels, teacher, batch, objective, temperatures, ce_grad=True):
    """The sums of :func:`full_step_losses` for a cached teacher, without its [B, T, V] tensor
    of -inf: the objective over the top k and the tail bucket (objectives.topk_kd_loss, the
    same loss as kd_loss on logits() + tail_logsumexp() to float rounding)."""
    width = teacher.teacher_vocab_size  # the rows the cache's top k and tail were taken over
    if logits.shape[-1] < width:
        raise ValueError(
            f"student vocabulary ({logits.shape[-1]}) is narrower than the teacher cache's "
            f"({width}); build the cache with vocab_size={logits.shape[-1]}"
        )
    logits = logits[..., :width]  # a padded student head, as in the dense path
    ce_sum = _response_ce(logits, labels, ce_grad)
    kd_sums = []
    for temperature in temperatures:
        values, indices, tail = teacher.top_k(batch, temperature)
        kd_sum, _ = topk_kd_loss(logits, labels, values, indices, tail, objective, temperature)
        kd_sums.append(kd_sum)
    return ce_sum, kd_sums


def _chunked_step_losses(
    student, teacher, batch, objective, temperature, chunk_size, ce_grad: bool = True
):
    """The same sums without any [B, T, V] logits: the student's final hidden states are taken
    at its output head (which then projects nothing) and the teacher's from its own head, and
    both go through :func:`~spectrumkd.distillation.chunked.chunked_kd_loss`; a cached teacher's
    top k and tail go through :func:`~spectrumkd.distillation.chunked.chunked_topk_kd_loss`."""
    if not (hasattr(teacher, "hidden_states") or _reads_top_k(teacher)):
        raise ValueError(
            "loss_impl=chunked needs a live teacher (its hidden states) or a teacher cache no "
            "wider than the run's shared vocabulary; use loss_impl=full"
        )
    hidden, head = head_inputs(
        student, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    labels = batch["labels"][:, 1:]
    if _reads_top_k(teacher):
        width = teacher.teacher_vocab_size  # the rows its top k and tail were taken over
        if head.weight.shape[0] < width:
            raise ValueError(
                f"student vocabulary ({head.weight.shape[0]}) is narrower than the teacher "
                f"cache's ({width}); build the cache with vocab_size={head.weight.shape[0]}"
            )
        values, indices, tail = teacher.top_k(batch, temperature)
        kd_sum, ce_sum, _ = chunked_topk_kd_loss(
            hidden[:, :-1],
            head.weight[:width],  # a padded student head, as in the dense path
            labels,
            values,
            indices,
            tail,
            objective,
            temperature,
            chunk_size=chunk_size,
            ce_grad=ce_grad,
        )
        return ce_sum, kd_sum
    teacher_hidden, teacher_weight = teacher.hidden_states(batch)
    weight = head.weight[: teacher_weight.shape[0]]  # a padded student head: see step_losses
    kd_sum, ce_sum, _ = chunked_kd_loss(
        hidden[:, :-1],
        weight,
        teacher_hidden[:, :-1].to(weight.device),
        teacher_weight.to(weight.device),
        labels,
        objective,
        temperature,
        chunk_size=chunk_size,
        ce_grad=ce_grad,
    )
    return ce_sum, kd_sum


@dataclass(frozen=True)
class OnPolicy:
    """How the student samples its own responses (on-policy GKD) for part of each batch."""

    fraction: float
    temperature: float
    max_new_tokens: int
    pad_token_id: int
    eos_token_ids: tuple[int, ...]
    # The ids the student may sample: a padded student head (or tokenizer holes) would otherwise
    # hand the teacher ids past its embedding (an IndexError mid-run).
    vocab: VocabAlignment | None = None
    # The run's compute precision (TrainConfig.mixed_precision; "no" is float32), so a float32
    # run also samples in float32.
    precision: str = "auto"


def accumulate_gradients(
    accelerator: Accelerator,
    student: torch.nn.Module,
    teacher: TeacherSignalSource,
    group: Sequence[dict],
    objective,
    alpha: float,
    temperature: float,
    *,
    on_policy: OnPolicy | None = None,
    chunk_size: int | None = None,
) -> tuple[float, float, int]:
    """Backward over the micro-batches of one optimiser step; returns (CE sum, KD sum, local tokens).

    The loss is normalised by the response tokens of the whole step, across micro-batches and
    processes, so gradient accumulation and the world size do not change the gradient (a
    per-micro-batch mean would weight a short micro-batch's tokens more). On-policy samples are
    drawn first, since they change the token count.
    """
    if on_policy is not None and on_policy.fraction > 0:
        generator = accelerator.unwrap_model(student)
        group = [
            with_student_responses(
                generator,
                batch,
                on_policy.fraction,
                pad_token_id=on_policy.pad_token_id,
                eos_token_ids=on_policy.eos_token_ids,
                temperature=on_policy.temperature,
                max_new_tokens=on_policy.max_new_tokens,
                vocab=on_policy.vocab,
                precision=on_policy.precision,
            )
            for batch in group
        ]
    local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in group)
    tokens = accelerator.reduce(torch.tensor(local, device=accelerator.device), "sum").item()
    ce_total = kd_total = 0.0
    for index, batch in enumerate(group):
        last = index == len(group) - 1
        with nullcontext() if last else accelerator.no_sync(student):
            with accelerator.autocast():
                ce_sum, kd_sum = step_losses(
                    student,
                    teacher,
                    batch,
                    objective,
                    temperature,
                    chunk_size=chunk_size,
                    alpha=alpha,
                )
            loss = (alpha * ce_sum + (1 - alpha) * temperature**2 * kd_sum) / max(tokens, 1)
            # DDP averages gradients over processes; the token count is already global.
            accelerator.backward(loss * accelerator.num_processes)
        ce_total += ce_sum.item()
        kd_total += kd_sum.item()
    return ce_total, kd_total, local
