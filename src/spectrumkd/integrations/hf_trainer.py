"""Adopt a curriculum in a ``transformers.Trainer`` (or a TRL trainer) with a callback.

view = CurriculumDataset(train_dataset, ids, plan)
callback = CurriculumCallback(view)
trainer = Trainer(..., train_dataset=view, callbacks=[callback])
# the loss reads callback.temperature (or pass on_epoch= to push it into the trainer)
"""

from __future__ import annotations

import math
from collections.abc import Callable

from transformers import TrainerCallback

from spectrumkd.curation.plan import EpochPlan
from spectrumkd.integrations.sampler import CurriculumDataset, CurriculumSampler


class CurriculumCallback(TrainerCallback):
    """At each epoch start, moves the dataset view (or sampler) to that epoch's subset and
    publishes the epoch's temperature (and KD weight, when the strategy sets one)."""

    def __init__(
        self,
        curriculum: CurriculumDataset | CurriculumSampler,
        on_epoch: Callable[[EpochPlan], None] | None = None,
    ) -> None:
        self.curriculum = curriculum
        self.on_epoch = on_epoch
        self.history: list[tuple[int, float]] = []  # (plan epoch, temperature) as applied

    @property
    def current(self) -> EpochPlan:
        return self.curriculum.current

    @property
    def temperature(self) -> float:
        return self.current.temperature

    @property
    def kd_weight(self) -> float | None:
        return self.current.kd_weight

    def on_train_begin(self, args, state, control, **kwargs):
        planned = self.curriculum.plan.num_epochs
        if math.ceil(args.num_train_epochs) != planned or args.max_steps > 0:
            raise ValueError(
                f"the trainer runs num_train_epochs={args.num_train_epochs} (max_steps={args.max_steps}) but the "
                f"{self.curriculum.plan.strategy} plan has {planned} epochs; set num_train_epochs={planned} and max_steps=-1"
            )
        if args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
            raise ValueError(
                "dataloader_persistent_workers=True keeps a stale copy of the curriculum view in each worker; "
                "set it to False (workers are then rebuilt each epoch and see the new subset)"
            )

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the float epoch progress: e at the start of 0-based epoch e, and
        # e + fraction when a run resumes mid-epoch; the small guard absorbs float sums.
        epoch = int(math.floor(state.epoch + 1e-6)) if state.epoch else 0
        self.curriculum.set_epoch(epoch)
        self.history.append((epoch + 1, self.temperature))
        if self.on_epoch is not None:
            self.on_epoch(self.current)
