"""Staged training (POCL, SRD, Baby Step, One-Pass): where the plan says ``restart``, the optimiser
and the LR schedule start afresh while the weights carry over.

A *span* (:meth:`~spectrumkd.curation.plan.CurriculumPlan.span_epochs`) is the stretch of epochs one
optimiser and one LR schedule run through. A plan without restarts is one span over the whole
run, so it trains exactly as an unstaged run does. Each span's schedule is the run's configured
one (``lr_schedule``, ``warmup_ratio`` applied within the span) over that span's optimiser
steps, built by ``transformers.get_scheduler``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import get_scheduler

from spectrumkd.curation.plan import CurriculumPlan
from spectrumkd.distillation.train_config import TrainConfig


def epoch_optimizer_steps(
    plan: CurriculumPlan, batch_size: int, grad_accum: int, num_processes: int
) -> list[int]:
    """Optimiser steps of each epoch of ``plan``: its micro-batches per process (the last one
    may be short), grouped ``grad_accum`` to a step (the last group may be short)."""
    micro_batches = [math.ceil(len(e.ids) / batch_size / num_processes) for e in plan.epochs]
    return [math.ceil(m / grad_accum) for m in micro_batches]


class StagedScheduler:
    """The run's LR schedule, one ``transformers`` schedule per span, stepped once per optimiser
    step.

    This object, not a span's schedule, is what ``accelerator.register_for_checkpointing`` holds:
    accelerate saves and loads the objects registered once, by position, so a schedule built
    later for a new span would never be saved. Its state is that of the current span's schedule (the
    same dict a one-span run saved before stages existed), so before loading a checkpoint the
    trainer calls :meth:`start` for the span the checkpoint was written in.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        plan: CurriculumPlan,
        steps_per_epoch: list[int],
    ) -> None:
        self.optimizer, self.config, self.plan = optimizer, config, plan
        self.steps_per_epoch = steps_per_epoch
        self.span: range = range(0)
        self.schedule: torch.optim.lr_scheduler.LRScheduler | None = None

    @property
    def total_steps(self) -> int:
        return sum(self.steps_per_epoch)

    def span_steps(self, span: range) -> int:
        return sum(self.steps_per_epoch[e - 1] for e in span)

    def start(self, epoch: int) -> None:
        """A fresh schedule for the span holding ``epoch``, at its first value (building it sets
        the optimiser's learning rate to that value)."""
        self.span = self.plan.span_epochs(epoch)
        steps = self.span_steps(self.span)
        self.schedule = get_scheduler(
            self.config.lr_schedule,
            self.optimizer,
            num_warmup_steps=int(self.config.warmup_ratio * steps),
            num_training_steps=steps,
        )

    def step(self) -> None:
        self._current().step()

    def get_last_lr(self) -> list[float]:
        return self._current().get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return self._current().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._current().load_state_dict(state)

    def _current(self) -> torch.optim.lr_scheduler.LRScheduler:
        if self.schedule is None:
            raise RuntimeError("StagedScheduler.start(epoch) must run before the schedule is used")
        return self.schedule


def restart_optimizer(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Give ``optimizer`` the state of a newly built one with the run's settings: no moments and
    no step counts, and the configured learning rate as the base of the next schedule.

    Reset in place rather than replaced: accelerate prepared (and under FSDP re-pointed) this
    optimizer, and its checkpoints save the optimisers it prepared.
    """
    optimizer.state.clear()
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
        group["initial_lr"] = learning_rate  # what a schedule built next takes as its base
