"""What POCL, SRD, Baby Step and One-Pass share: stages cut from an easy-to-hard order, a fixed
number of epochs each, the optimiser and LR schedule restarting where a stage begins.

A stage trains on one contiguous run of ranks of the order (Baby Step, POCL and SRD on a prefix,
One-Pass on one bucket), so its ids are a :class:`RankSlice` (no copy) and the report can draw it
as a band ``first_rank..last_rank``. Also the settings checks every staged strategy makes, each a
one-line error naming the setting and what to give instead, and the step-budget rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spectrumkd.curation.plan import CurriculumPlan, EpochPlan, RankSlice
from spectrumkd.curation.ranking import Ranking
from spectrumkd.curation.spectrum import round_half_up


@dataclass(frozen=True)
class Stage:
    """One stage: the 0-based ranks ``start..stop-1`` of the order, its temperature and KD
    weight (None: the trainer's own alpha)."""

    start: int
    stop: int
    temperature: float
    kd_weight: float | None

    @property
    def size(self) -> int:
        return self.stop - self.start


def linear_ramp(count: int, start: float, end: float) -> list[float]:
    """``count`` values rising linearly from ``start`` to ``end`` (one stage: ``start``); the
    per-stage temperature and KD weight rule of POCL and SRD, constant within a stage."""
    if count == 1:
        return [float(start)]
    return [start + (end - start) * j / (count - 1) for j in range(count)]


def staged_plan(
    strategy: str,
    ranking: Ranking,
    stages: Sequence[Stage],
    epochs_per_stage: int,
    settings: Any,
    extra_metadata: dict[str, Any] | None = None,
) -> CurriculumPlan:
    """The plan of ``stages`` in order, ``epochs_per_stage`` epochs each; the first epoch of
    every stage after the first restarts the optimiser and LR schedule (weights carry over).

    ``metadata`` holds the settings (a plain dict), the example counts, the easy-to-hard order
    and one summary per stage, so ``schedule.json`` says how the plan was made.
    """
    epochs: list[EpochPlan] = []
    summaries: list[dict[str, Any]] = []
    for number, stage in enumerate(stages, start=1):
        first_epoch = len(epochs) + 1
        mean = ranking.mean_difficulty(stage.start, stage.stop)
        info = {
            "stage_size": stage.size,
            "first_rank": stage.start + 1,
            "last_rank": stage.stop,
            "mean_difficulty": mean,
        }
        for offset in range(epochs_per_stage):
            epochs.append(
                EpochPlan(
                    epoch=first_epoch + offset,
                    ids=RankSlice(ranking.ids, stage.start, stage.stop),
                    temperature=float(stage.temperature),
                    kd_weight=None if stage.kd_weight is None else float(stage.kd_weight),
                    info=dict(info),
                    stage=number,
                    restart=number > 1 and offset == 0,
                )
            )
        summaries.append(
            {
                "stage": number,
                "first_epoch": first_epoch,
                "last_epoch": len(epochs),
                **info,
                "temperature": float(stage.temperature),
                "kd_weight": stage.kd_weight,
            }
        )
    trained = covered_ranks(stages)
    metadata = {
        "settings": dataclasses.asdict(settings),
        "num_examples": len(ranking),
        "num_trained": trained,
        "num_discarded": len(ranking) - trained,
        "total_visits": sum(len(e.ids) for e in epochs),
        **(extra_metadata or {}),
        "stages": summaries,
        "order": list(ranking.ids),
    }
    return CurriculumPlan(strategy=strategy, epochs=tuple(epochs), metadata=metadata)


def covered_ranks(stages: Sequence[Stage]) -> int:
    """How many distinct ranks any stage trains on (the union of the stages' rank ranges)."""
    covered, reach = 0, 0
    for start, stop in sorted((s.start, s.stop) for s in stages):
        covered += max(0, stop - max(start, reach))
        reach = max(reach, stop)
    return covered


def epochs_per_stage_for_budget(
    stage_sizes: Sequence[int], baseline_epochs: int, num_examples: int
) -> int:
    """Epochs per stage that give a staged curriculum the example visits (and so, at one batch
    size, the optimiser steps) of ``baseline_epochs`` full-data epochs: round(E N / sum of the
    stage sizes), at least 1. POCL on N divisible by 4 against 20 epochs: 20 N / 2.5 N = 8."""
    check_count("baseline_epochs", baseline_epochs)
    check_count("num_examples", num_examples)
    trained = sum(stage_sizes)
    if trained < 1:
        raise ValueError("the stages train on no example, so no epoch count reaches the budget")
    return max(1, round_half_up(baseline_epochs * num_examples / trained))


# The checks every staged strategy's settings make in __post_init__: one line each, naming the
# setting, the value and what to give instead.


def check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def check_temperature(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name}={value!r} must be a finite temperature > 0")


def check_kd_weight(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0.0 <= value <= 1.0
    ):
        allowed = "a number in [0, 1] or None (the trainer's alpha)" if optional else "in [0, 1]"
        raise ValueError(
            f"{name}={value!r} must be {allowed}: the share of the loss on the KD term, "
            "the rest on cross-entropy"
        )


def replan_from_stage(
    plan: CurriculumPlan, reranked: CurriculumPlan, from_stage: int
) -> CurriculumPlan:
    """Re-ranking between stages (SRD's optional dynamic ranking, spec section 3): the epochs of
    stages ``1..from_stage-1`` as ``plan`` made them (already trained), those of ``from_stage``
    on from ``reranked``, the same strategy and settings planned on difficulties rescored at the
    stage boundary by the partly trained student. Stage sizes depend only on N, so the visits,
    epochs and restarts stay where they were; ``first_rank``/``last_rank`` of a stage refer to
    the order it was cut from, and ``metadata["reranked_at"]`` lists the stages that re-ranked.

    Pure: the rescoring itself needs the model in the middle of a run and is the caller's.
    """
    if plan.strategy != reranked.strategy or plan.metadata.get("settings") != reranked.metadata.get(
        "settings"
    ):
        raise ValueError(
            f"cannot splice a {reranked.strategy} plan with other settings into a {plan.strategy} "
            "plan; re-plan with the same strategy and settings"
        )
    shape = [len(plan.stage_epochs(s)) for s in range(1, plan.num_stages + 1)]
    if shape != [len(reranked.stage_epochs(s)) for s in range(1, reranked.num_stages + 1)] or set(
        plan.metadata["order"]
    ) != set(reranked.metadata["order"]):
        raise ValueError(
            "the re-ranked plan is not of the same examples, stages and epochs as the plan; "
            "rescore the same examples"
        )
    if isinstance(from_stage, bool) or not isinstance(from_stage, int):
        raise ValueError(f"from_stage={from_stage!r} must be an integer stage number")
    if not 2 <= from_stage <= plan.num_stages:
        raise ValueError(
            f"from_stage={from_stage} must be a stage boundary 2..{plan.num_stages} of this plan"
        )
    epochs = tuple(e for e in plan.epochs if e.stage < from_stage) + tuple(
        e for e in reranked.epochs if e.stage >= from_stage
    )
    trained = len({id_ for e in epochs for id_ in e.ids})
    split = from_stage - 1
    metadata = {
        **reranked.metadata,
        "num_trained": trained,
        "num_discarded": plan.metadata["num_examples"] - trained,
        "total_visits": sum(len(e.ids) for e in epochs),
        "stages": plan.metadata["stages"][:split] + reranked.metadata["stages"][split:],
        "reranked_at": [*plan.metadata.get("reranked_at", []), from_stage],
    }
    return CurriculumPlan(strategy=plan.strategy, epochs=epochs, metadata=metadata)


class StageRamp:
    """What POCL's and SRD's settings share: ``num_stages`` stages of ``epochs_per_stage``
    epochs each, with the temperature and the KD weight rising linearly across stages. A mixin
    (not a dataclass) so each settings dataclass keeps its own field order and defaults."""

    num_stages: int
    epochs_per_stage: int
    tau_start: float
    tau_end: float
    kd_weight_start: float
    kd_weight_end: float

    def check_ramp(self) -> None:
        check_count("num_stages", self.num_stages)
        check_count("epochs_per_stage", self.epochs_per_stage)
        check_temperature("tau_start", self.tau_start)
        check_temperature("tau_end", self.tau_end)
        check_kd_weight("kd_weight_start", self.kd_weight_start)
        check_kd_weight("kd_weight_end", self.kd_weight_end)

    def temperatures(self) -> list[float]:
        return linear_ramp(self.num_stages, self.tau_start, self.tau_end)

    def kd_weights(self) -> list[float]:
        return linear_ramp(self.num_stages, self.kd_weight_start, self.kd_weight_end)
