"""DA-KD (difficulty-aware KD; ``../shared/spec/siblings.md`` section 6): every epoch the
student's cross-entropy over the teacher's on each training row decides what the epoch trains on.

Epoch ``e = 0..E-1`` keeps ``r_e = cos(pi e / E) / 2 + 1/2`` of the N rows: the top ``r_e N``
by score ``CE_student / CE_teacher`` (per-token means on the reference answer; the teacher's
once, before training) form the *high* set; the epoch draws ``(1 - tau) |high|`` rows from it
and ``tau |high|`` from the rest (filling from the high set when the rest is short), ``tau =
0.1``. The first epoch keeps every row (``r_0 = 1``), so the untrained student needs no scoring;
before every later epoch :class:`DAKDUpdater` (the plan's
:class:`~spectrumkd.curation.plan.PlanUpdater`) scores every training row with the student as
it is. The loss is the run's objective: DA-KD's is ``bdl`` (``train.objective: bdl``); its
paper trains E = 10 epochs at learning rate 1e-5 with a cosine schedule.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spectrumkd.curation.plan import (
    CurationStrategy,
    CurriculumPlan,
    EpochPlan,
    PlanUpdater,
    StudentProbe,
)


@dataclass(frozen=True)
class DAKDConfig:
    epochs: int = 10  # E
    low_share: float = 0.1  # tau: the share of an epoch drawn from outside the high set
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if not 0.0 <= self.low_share <= 1.0:
            raise ValueError(f"low_share={self.low_share} must be in [0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")


def keep_ratio(epoch: int, epochs: int) -> float:
    """``r_e = cos(pi e / E) / 2 + 1/2`` for the 0-based epoch ``e``."""
    return math.cos(math.pi * epoch / epochs) / 2 + 0.5


def epoch_sizes(num_examples: int, epochs: int) -> list[int]:
    """Rows per epoch, ``round(r_e N)`` and at least one."""
    return [max(1, round(keep_ratio(e, epochs) * num_examples)) for e in range(epochs)]


def difficulty_ratios(
    student: Sequence[tuple[float, int]], teacher: Sequence[tuple[float, int]]
) -> np.ndarray:
    """Per row, the student's mean token CE over the teacher's (each from (sum, tokens))."""

    def means(losses: Sequence[tuple[float, int]]) -> np.ndarray:
        return np.array([total / max(count, 1) for total, count in losses])

    teacher_means = means(teacher)
    if len(student) != len(teacher_means):
        raise ValueError(f"{len(student)} student losses for {len(teacher_means)} rows")
    # A row the teacher predicts perfectly would divide by zero: its ratio is the student's CE
    # over the smallest positive teacher CE, so such rows rank as the hardest they can be.
    floor = teacher_means[teacher_means > 0].min() if np.any(teacher_means > 0) else 1.0
    return means(student) / np.maximum(teacher_means, floor * 1e-3)


def select_epoch(
    ids: Sequence[str],
    scores: Sequence[float],
    size: int,
    low_share: float,
    rng: np.random.Generator,
) -> list[str]:
    """``size`` ids: the ``size`` highest-scoring rows form the high set; ``round(low_share *
    size)`` rows are drawn from the rest (as many as it has), the others from the high set, all
    without replacement."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    high, rest = order[:size], order[size:]
    low_count = min(round(low_share * size), len(rest))
    chosen = np.concatenate(
        [
            rng.choice(high, size=size - low_count, replace=False),
            rng.choice(rest, size=low_count, replace=False),
        ]
    ).astype(int)
    return [ids[i] for i in chosen]


class DAKD(CurationStrategy):
    """DA-KD's plan: sizes fixed by the cosine keep-ratio, rows chosen each epoch by score."""

    name = "dakd"

    def __init__(self, settings: DAKDConfig | None = None) -> None:
        self.settings = settings if settings is not None else DAKDConfig()

    def plan(self, ids: Sequence[str], difficulties: Sequence[float]) -> CurriculumPlan:
        raise ValueError(
            "the dakd strategy scores the student during training: build its plan with "
            "plan_for_examples() (spectrumkd distill does, from the run's models)"
        )

    def plan_for_examples(
        self, examples: Sequence[Any], teacher_losses: Sequence[tuple[float, int]]
    ) -> CurriculumPlan:
        """The plan over the training rows ``examples`` (``TokenizedExample``s), with the
        teacher's (summed CE, tokens) on each. Epochs after the first hold the teacher-only
        ranking's choice until the updater replaces them (``provisional``)."""
        settings = self.settings
        ids = [example.id for example in examples]
        if len(set(ids)) != len(ids):
            raise ValueError("DA-KD needs unique example ids")
        sizes = epoch_sizes(len(ids), settings.epochs)
        rng = np.random.default_rng(settings.seed)
        provisional = -np.array([total / max(count, 1) for total, count in teacher_losses])
        epochs = [EpochPlan(1, list(ids), settings.temperature, info={"keep_ratio": 1.0})]
        after_first = rng.bit_generator.state
        for e in range(1, settings.epochs):
            chosen = select_epoch(ids, provisional, sizes[e], settings.low_share, rng)
            info = {"keep_ratio": keep_ratio(e, settings.epochs), "provisional": True}
            epochs.append(EpochPlan(e + 1, chosen, settings.temperature, info=info))
        rng.bit_generator.state = after_first
        updater = DAKDUpdater(settings, list(examples), list(teacher_losses), rng)
        return CurriculumPlan(self.name, tuple(epochs), {"sizes": sizes}, updater=updater)


@dataclass
class DAKDUpdater(PlanUpdater):
    """Before every epoch after the first: every training row scored by the student now, the
    epoch's rows chosen from the scores."""

    settings: DAKDConfig
    examples: list[Any]
    teacher_losses: list[tuple[float, int]]
    rng: np.random.Generator
    current: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def updates_before(self, epoch: int) -> bool:
        return epoch >= 2

    def update(
        self, epoch: int, plan: CurriculumPlan, probe: StudentProbe
    ) -> tuple[CurriculumPlan, dict[str, Any]]:
        started = time.perf_counter()
        scores = difficulty_ratios(probe.token_losses(self.examples), self.teacher_losses)
        ids = [example.id for example in self.examples]
        size = len(plan.epoch(epoch).ids)
        chosen = select_epoch(ids, scores, size, self.settings.low_share, self.rng)
        self.current = {"epoch": epoch, "ids": chosen}
        entry = {
            "epoch": epoch,
            "keep_ratio": keep_ratio(epoch - 1, self.settings.epochs),
            "rows": size,
            "score_mean": float(scores.mean()),
            "score_threshold": float(np.sort(scores)[::-1][size - 1]),
            "measure_seconds": time.perf_counter() - started,
        }
        self.history.append(entry)
        info = {"keep_ratio": entry["keep_ratio"]}
        updated = dataclasses.replace(plan.epoch(epoch), ids=chosen, info=info)
        return plan.with_epoch(updated), {"plan_update": DAKD.name, **entry}

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "current": self.current,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.current = dict(state["current"])
        self.history = list(state["history"])

    def restored(self, plan: CurriculumPlan) -> CurriculumPlan:
        if not self.current or self.current["epoch"] == 1:
            return plan
        epoch = plan.epoch(self.current["epoch"])
        info = {"keep_ratio": keep_ratio(epoch.epoch - 1, self.settings.epochs)}
        return plan.with_epoch(dataclasses.replace(epoch, ids=list(self.current["ids"]), info=info))
