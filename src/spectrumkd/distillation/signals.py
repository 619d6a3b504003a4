"""Where teacher probabilities come from: one interface, several sources (DistillKit's idea).

The objectives take dense teacher logits; a source returns them for a batch, aligned with the
student's logits (``[B, T, V]``, position t predicting token t+1). A live teacher runs its
forward pass; an offline cache returns stored top-k logits scattered into a tensor of ``-inf``
(softmax at any temperature then renormalises over the top k exactly, and the objectives count
zero-probability entries as zero). The objectives never know which source they were given.
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

    def __init__(self, model: torch.nn.Module, alignment: VocabAlignment | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.alignment = alignment

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
