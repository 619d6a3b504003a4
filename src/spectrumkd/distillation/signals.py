"""Where teacher probabilities come from: one interface, several sources (DistillKit's idea).

The objectives take dense teacher logits; a source returns them for a batch, aligned with the
student's logits (``[B, T, V]``, position t predicting token t+1). A live teacher runs its
forward pass; an offline cache returns stored top-k logits scattered into a tensor of ``-inf``
and, from ``tail_logsumexp(batch, temperature)``, the teacher's leftover mass outside them, which
the objectives compare with the student's as one tail bucket
(:func:`~spectrumkd.distillation.objectives.tail_buckets`). A source without that method gives
the whole distribution (``-inf`` is then an exact zero). The objectives are the same for both.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from spectrumkd.models.pairing import VocabAlignment


@runtime_checkable
class TeacherSignalSource(Protocol):
    def logits(self, batch: dict) -> torch.Tensor:
        """Teacher logits for ``batch`` (keys ``input_ids``, ``attention_mask``, ``labels`` and,
        for offline sources, ``ids``: the example ids in batch order), shape ``[B, T, V]``."""
        ...


class LiveTeacher:
    """The teacher model itself, frozen, in eval mode, under ``inference_mode``."""

    scores_new_sequences = True  # it can score the student's own samples (on-policy KD)

    def __init__(self, model: torch.nn.Module, alignment: VocabAlignment | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.alignment = alignment

    def hidden_states(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden states [B, T, H], output head weight [V, H]) for the memory-bounded loss,
        which projects them chunk by chunk instead of materialising [B, T, V] logits."""
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            hidden, head = head_inputs(
                self.model,
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            )
        weight = head.weight.detach()
        if self.alignment is not None:
            weight = weight[: self.alignment.vocab_size]
        return hidden.clone(), weight

    def logits(self, batch: dict) -> torch.Tensor:
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits
        if self.alignment is not None:
            logits = self.alignment.trim(logits)
        # A tensor made under inference_mode cannot enter autograd; the clone can (no grad flows).
        return logits.clone()


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` inside its DDP / compile wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def head_inputs(model: torch.nn.Module, **inputs) -> tuple[torch.Tensor, torch.nn.Module]:
    """(what the output head receives: the final hidden states [B, T, H], the head) of a forward
    of ``model`` (or of a DDP / compile wrapper around it) on ``inputs``. The head projects zero
    positions, so no [B, T, V] logits are made; it must be bias-free (Llama, Qwen, GPT-2)."""
    inner = unwrapped(model)  # the wrapper's forward still runs the hook set inside
    head = inner.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError(
            f"{type(inner).__name__} has no bias-free output head to project chunk by chunk; "
            "use loss_impl=full"
        )
    captured: dict[str, torch.Tensor] = {}

    def keep_hidden(module, args):
        captured["hidden"] = args[0]
        return (args[0][:, :0], *args[1:])

    handle = head.register_forward_pre_hook(keep_hidden)
    try:
        model(**inputs)
    finally:
        handle.remove()
    return captured["hidden"], head
