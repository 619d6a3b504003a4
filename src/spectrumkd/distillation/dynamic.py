"""The trainer's side of the dynamic-plan hook (:class:`~spectrumkd.curation.plan.PlanUpdater`):
before the epochs a plan's updater declares, it measures the student and trains that epoch from
the plan the updater returns; checkpoints carry the updater's state.

The trainer never learns which strategy runs (DDK, a future DA-KD): it hands the updater a
:class:`TrainingProbe` and logs the row the update returns, with its wall time, into
``metrics.jsonl`` (the cost of the extra forwards, reported as a share of the run).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from accelerate.utils import broadcast_object_list

from spectrumkd.distillation.checkpoints import log_metrics
from spectrumkd.scoring import example_token_losses

# ``run`` below is the trainer's PreparedRun (typed Any: importing the trainer here would make
# an import circle with it).

UPDATER_STATE = "plan_updater"  # the trainer state's key for the updater's state


class TrainingProbe:
    """The student of a running distillation, measured without gradients in the run's precision.

    Every process runs the same forwards (FSDP and DeepSpeed need all of them in a forward), and
    the main process's numbers are broadcast, so that every process draws the same plan."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def token_losses(self, examples: Sequence[Any]) -> list[tuple[float, int]]:
        run = self.run
        losses = [
            example_token_losses(
                run.student,
                examples,
                precision=run.config.mixed_precision,
                pad_token_id=run.pad_token_id,
                max_batch_size=run.config.batch_size,
            )
        ]
        if run.accelerator.num_processes > 1:
            broadcast_object_list(losses, from_process=0)
        return losses[0]


def update_plan(run: Any, state: dict[str, Any], epoch: int) -> None:
    """Before ``epoch``: when the plan is dynamic and its updater updates before this epoch,
    the updated plan replaces the run's (and the sampler's), the update's row is logged with its
    seconds, and the updater's state joins the trainer state that the next checkpoint saves. A
    resume in the middle of ``epoch`` already holds that epoch's plan: no second update."""
    updater = run.plan.updater
    if updater is None or state["step_in_epoch"] or not updater.updates_before(epoch):
        return
    started = time.perf_counter()
    plan, row = updater.update(epoch, run.plan, TrainingProbe(run))
    seconds = time.perf_counter() - started
    run.plan = plan
    run.sampler.use_plan(plan)
    state[UPDATER_STATE] = updater.state_dict()
    state["plan_update_seconds"] = state.get("plan_update_seconds", 0.0) + seconds
    log_metrics(
        run.accelerator,
        run.output,
        {"epoch": epoch, "step": state["step"], **row, "update_seconds": seconds},
        run.config,
    )


def restore_plan(run: Any, state: dict[str, Any]) -> None:
    """On resume: the updater's saved state loaded, and the run's plan as it stood then."""
    updater = run.plan.updater
    if updater is None:
        return
    if UPDATER_STATE in state:
        updater.load_state_dict(state[UPDATER_STATE])
        run.plan = updater.restored(run.plan)
        run.sampler.use_plan(run.plan)
    else:
        state[UPDATER_STATE] = updater.state_dict()
