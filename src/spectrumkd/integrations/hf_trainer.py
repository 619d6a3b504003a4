"""Adopt a curriculum in a ``transformers.Trainer`` (or a TRL trainer) with a callback.

view = CurriculumDataset(train_dataset, ids, plan)
callback = CurriculumCallback(view)
trainer = Trainer(..., train_dataset=view, callbacks=[callback])
# the loss reads callback.temperature and callback.kd_weight (or pass on_epoch= to push them)

A staged plan's restarts happen inside the Trainer (see :class:`CurriculumCallback`); a Trainer
needs every epoch of the same size, so of the staged curricula it runs those with equal stages
(One-Pass); growing ones (POCL, SRD, Baby Step) run in :func:`spectrumkd.distillation.train`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback, get_scheduler

from spectrumkd.curation.plan import EpochPlan
from spectrumkd.integrations.sampler import CurriculumDataset, CurriculumSampler


class CurriculumCallback(TrainerCallback):
    """At each epoch start, moves the dataset view (or sampler) to that epoch's subset and
    publishes the epoch's temperature (and KD weight, when the strategy sets one).

    A staged plan's restarts (POCL, SRD, Baby Step) are honoured inside the Trainer: at the
    start of a restart epoch the optimiser's state is emptied (as a newly built one's), and
    throughout the run the Trainer's own LR scheduler follows the schedule of the current span
    (the epochs from one restart to the next): the Trainer's ``lr_scheduler_type``,
    ``warmup_steps`` and ``lr_scheduler_kwargs``, built by ``transformers.get_scheduler`` over
    that span's optimiser steps, in place of one schedule over the whole run. The position in
    the span comes from ``state.global_step``, so a run resumed from a checkpoint (mid-span or
    at a stage boundary) continues the same schedule. This needs a ``LambdaLR`` schedule (every
    ``lr_scheduler_type`` but ``reduce_lr_on_plateau`` and ``greedy``); others are refused.
    """

    def __init__(
        self,
        curriculum: CurriculumDataset | CurriculumSampler,
        on_epoch: Callable[[EpochPlan], None] | None = None,
    ) -> None:
        self.curriculum = curriculum
        self.on_epoch = on_epoch
        self.history: list[tuple[int, float]] = []  # (plan epoch, temperature) as applied
        self.restarts: list[int] = []  # the global steps at which the optimiser was restarted

    @property
    def current(self) -> EpochPlan:
        return self.curriculum.current

    @property
    def temperature(self) -> float:
        return self.current.temperature

    @property
    def kd_weight(self) -> float | None:
        return self.current.kd_weight

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        plan = self.curriculum.plan
        planned = plan.num_epochs
        if math.ceil(args.num_train_epochs) != planned or args.max_steps > 0:
            raise ValueError(
                f"the trainer runs num_train_epochs={args.num_train_epochs} (max_steps={args.max_steps}) but the "
                f"{plan.strategy} plan has {planned} epochs; set num_train_epochs={planned} and max_steps=-1"
            )
        if args.dataloader_num_workers > 0 and args.dataloader_persistent_workers:
            raise ValueError(
                "dataloader_persistent_workers=True keeps a stale copy of the curriculum view in each worker; "
                "set it to False (workers are then rebuilt each epoch and see the new subset)"
            )
        if plan.has_restarts and not isinstance(lr_scheduler, LambdaLR):
            raise ValueError(
                f"the {plan.strategy} plan restarts the LR schedule between stages, which this callback does "
                f"for LambdaLR schedules, not {type(lr_scheduler).__name__}; set lr_scheduler_type to linear, "
                "cosine, constant or another LambdaLR one"
            )

    def on_epoch_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        # state.epoch is the float epoch progress: e at the start of 0-based epoch e, and
        # e + fraction when a run resumes mid-epoch; the small guard absorbs float sums.
        epoch = int(math.floor(state.epoch + 1e-6)) if state.epoch else 0
        self.curriculum.set_epoch(epoch)
        self.history.append((epoch + 1, self.temperature))
        if self.curriculum.plan.has_restarts:
            self._follow_span_schedule(args, state, epoch + 1, optimizer, lr_scheduler)
        if self.on_epoch is not None:
            self.on_epoch(self.current)

    def _follow_span_schedule(
        self, args, state, epoch: int, optimizer: torch.optim.Optimizer, scheduler: LambdaLR
    ) -> None:
        """Point the Trainer's scheduler at the schedule of ``epoch``'s span, at the current
        step's position in it; at the first step of a restart epoch, empty the optimiser's state
        first. Every epoch has the same number of optimiser steps (CurriculumDataset's size is
        constant), so a span's steps and its first global step follow from ``state.max_steps``."""
        plan = self.curriculum.plan
        steps_per_epoch = state.max_steps // plan.num_epochs
        span = plan.span_epochs(epoch)
        span_steps = steps_per_epoch * len(span)
        position = state.global_step - steps_per_epoch * (span.start - 1)
        if plan.epoch(epoch).restart and position == 0:
            optimizer.state.clear()  # a newly built optimiser holds no moments or step counts
            self.restarts.append(state.global_step)
        # The span's schedule function, from the same factory the Trainer built its own with
        # (over a stand-in optimiser with the same default lr, which cosine_with_min_lr reads).
        stand_in = torch.optim.SGD(
            [torch.zeros(1, requires_grad=True)], lr=optimizer.defaults["lr"]
        )
        template = get_scheduler(
            args.lr_scheduler_type,
            stand_in,
            num_warmup_steps=args.get_warmup_steps(span_steps),
            num_training_steps=span_steps,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
        scheduler.lr_lambdas = [template.lr_lambdas[0]] * len(scheduler.lr_lambdas)
        scheduler.last_epoch = position - 1
        with warnings.catch_warnings():
            # Before the run's first optimiser step torch warns that the scheduler steps first;
            # this step only moves it to ``position`` (each group's lr = base lr * lambda).
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            scheduler.step()
