"""Where a staged plan (POCL, SRD, Baby Step, One-Pass) starts the optimiser and the LR schedule
afresh: its *spans*, the stretches of epochs that one optimiser and one schedule run through.

A span runs from epoch 1, or from an epoch whose plan sets ``restart``, up to the next restart.
A plan without restarts is one span over the whole run. Both trainers read the spans from here:
the package's own loop (:mod:`spectrumkd.distillation.stages`) and the ``transformers.Trainer``
callback (:mod:`spectrumkd.integrations.hf_trainer`).
"""

from __future__ import annotations

from spectrumkd.curation.plan import CurriculumPlan


def has_restarts(plan: CurriculumPlan) -> bool:
    """Whether any epoch of ``plan`` restarts the optimiser and the LR schedule."""
    return any(epoch.restart for epoch in plan.epochs)


def is_staged(plan: CurriculumPlan) -> bool:
    """Whether ``plan`` has stages or restarts (metric rows and trainer states then name the
    stage; those of a plan without stages stay as they were)."""
    return plan.num_stages > 1 or has_restarts(plan)


def span_epochs(plan: CurriculumPlan, epoch: int) -> range:
    """The 1-based epochs of the span that holds ``epoch``: from the last restart at or before
    it (or epoch 1) to the epoch before the next restart (or the last epoch)."""
    plan.epoch(epoch)  # refuses an epoch outside the plan, naming its range
    first = max((e.epoch for e in plan.epochs[:epoch] if e.restart), default=1)
    following = (e.epoch for e in plan.epochs[epoch:] if e.restart)
    return range(first, next(following, plan.num_epochs + 1))
