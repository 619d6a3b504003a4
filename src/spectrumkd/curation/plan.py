"""What every curation strategy hands to a trainer: per epoch, which examples and which temperature.

A trainer, sampler or callback depends on :class:`CurriculumPlan` only, so a new strategy
(POCL, SRD, a classic curriculum, ...) plugs in by implementing :class:`CurationStrategy`
without touching the training code.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, overload


class RankSlice(Sequence[str]):
    """A read-only view ``ids[start:stop]`` that does not copy: a 1M-example schedule of 25
    epochs would otherwise hold 25 copies of almost the whole id list."""

    __slots__ = ("_ids", "_start", "_stop")

    def __init__(self, ids: Sequence[str], start: int, stop: int) -> None:
        self._ids, self._start, self._stop = ids, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._ids[self._start + index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids[self._start : self._stop])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RankSlice(ranks {self._start + 1}..{self._stop}, {len(self)} ids)"


@dataclass(frozen=True)
class EpochPlan:
    """One epoch of a curriculum. ``epoch`` is 1-based, as in the paper."""

    epoch: int
    ids: Sequence[str]
    temperature: float
    kd_weight: float | None = None  # None: the trainer's own alpha decides
    info: dict[str, Any] = field(default_factory=dict)  # strategy-specific facts, e.g. window ranks
    # Staged curricula (POCL, SRD, Baby Step): the 1-based stage this epoch belongs to, and
    # whether the optimiser and the LR schedule start afresh here (the first epoch of every
    # stage after the first). The weights always carry over from the previous epoch.
    stage: int = 1
    restart: bool = False

    def to_dict(self, staged: bool | None = None) -> dict[str, Any]:
        """The epoch as a ``schedule.json`` row; ``stage`` and ``restart`` are written when the
        plan has stages (``staged``; alone, when this epoch is not a plain stage-1 epoch), so a
        plan without stages keeps the rows it always had."""
        row: dict[str, Any] = {"epoch": self.epoch, **self.info, "temperature": self.temperature}
        if staged if staged is not None else (self.stage != 1 or self.restart):
            row["stage"] = self.stage
            row["restart"] = self.restart
        if self.kd_weight is not None:
            row["kd_weight"] = self.kd_weight
        row["num_examples"] = len(self.ids)
        row["ids"] = list(self.ids)
        return row


@dataclass(frozen=True)
class CurriculumPlan:
    """A whole curriculum: ``epochs[j-1]`` is epoch ``j``."""

    strategy: str
    epochs: tuple[EpochPlan, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    # A dynamic plan (DDK): decides epochs from the student as it trains; None for a static one.
    updater: PlanUpdater | None = field(default=None, compare=False, repr=False)

    @property
    def num_epochs(self) -> int:
        return len(self.epochs)

    def epoch(self, epoch: int) -> EpochPlan:
        if not 1 <= epoch <= self.num_epochs:
            raise ValueError(
                f"epoch {epoch} is outside this {self.strategy} plan's epochs 1..{self.num_epochs}"
            )
        return self.epochs[epoch - 1]

    @property
    def total_visits(self) -> int:
        """Example visits over all epochs (the sum of the epochs' sizes): at one batch size this
        sets the optimiser steps, so two plans with equal visits train for the same budget."""
        return sum(len(e.ids) for e in self.epochs)

    @property
    def num_stages(self) -> int:
        return max((e.stage for e in self.epochs), default=0)

    @property
    def has_restarts(self) -> bool:
        """Whether any epoch restarts the optimiser and the LR schedule."""
        return any(epoch.restart for epoch in self.epochs)

    @property
    def is_staged(self) -> bool:
        """Whether the plan has stages or restarts (metric rows and trainer states then name the
        stage; those of a plan without stages stay as they were)."""
        return self.num_stages > 1 or self.has_restarts

    def span_epochs(self, epoch: int) -> range:
        """The 1-based epochs that one optimiser and one LR schedule run through, around
        ``epoch``: from the last restart at or before it (or epoch 1) to the epoch before the
        next restart (or the last epoch). A plan without restarts is one span."""
        self.epoch(epoch)  # refuses an epoch outside the plan, naming its range
        first = max((e.epoch for e in self.epochs[:epoch] if e.restart), default=1)
        following = (e.epoch for e in self.epochs[epoch:] if e.restart)
        return range(first, next(following, self.num_epochs + 1))

    @property
    def is_dynamic(self) -> bool:
        return self.updater is not None

    def with_epoch(self, epoch: EpochPlan) -> CurriculumPlan:
        """The plan with ``epoch`` (same number, same size) in place of the one it had: what a
        :class:`PlanUpdater` returns. The size is kept so that the LR schedule, which counted
        the steps of every epoch at the start, stays right."""
        old = self.epoch(epoch.epoch)
        if len(epoch.ids) != len(old.ids):
            raise ValueError(
                f"a plan update must keep epoch {epoch.epoch}'s size ({len(old.ids)} examples), "
                f"not {len(epoch.ids)}"
            )
        epochs = list(self.epochs)
        epochs[epoch.epoch - 1] = epoch
        return dataclasses.replace(self, epochs=tuple(epochs))

    def digest(self) -> str:
        """A short hash of what the plan trains on (strategy, and per epoch its ids,
        temperature, KD weight, stage and restart), so a checkpoint can tell whether it belongs
        to this plan. Hashed epoch by epoch: a million-example plan never becomes one string."""
        hashed = hashlib.sha256(self.strategy.encode())
        for e in self.epochs:
            head = [e.epoch, e.temperature, e.kd_weight, e.stage, e.restart, len(e.ids)]
            hashed.update(json.dumps(head).encode())
            for id_ in e.ids:
                hashed.update(id_.encode() + b"\0")
        return hashed.hexdigest()[:16]

    def stage_epochs(self, stage: int) -> tuple[EpochPlan, ...]:
        """The epochs of one 1-based stage, in order."""
        return tuple(e for e in self.epochs if e.stage == stage)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            **self.metadata,
            "epochs": [e.to_dict(staged=self.num_stages > 1) for e in self.epochs],
        }


class CurationStrategy(abc.ABC):
    """Turns per-example difficulties into a :class:`CurriculumPlan`.

    Strategies that need more than difficulties (reflections, domains, a model) take those in
    their constructor, so the call that trainers and the CLI make stays the same.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def plan(self, ids: Sequence[str], difficulties: Sequence[float]) -> CurriculumPlan:
        """Build the plan; a pure function of the inputs and the strategy's configuration."""


class StudentProbe(Protocol):
    """What a trainer lets a :class:`PlanUpdater` measure: the student as it is now.

    ``token_losses(examples)`` returns, per example (a ``TokenizedExample``), the summed
    cross-entropy of the student over its response tokens and the number of those tokens, in
    the examples' order (no gradients; the run's precision)."""

    def token_losses(self, examples: Sequence[Any]) -> list[tuple[float, int]]: ...


class PlanUpdater(abc.ABC):
    """The dynamic-plan hook: a strategy whose epochs depend on the student as it trains (DDK's
    domain weights follow the student's gap to the teacher).

    A trainer calls :meth:`update` before every epoch for which :meth:`updates_before` is
    true, with a :class:`StudentProbe`, and trains that epoch from the plan it returns. The
    trainer does not know which strategy runs; it saves :meth:`state_dict` (JSON values) with
    every checkpoint and hands it back to :meth:`load_state_dict` on resume, where
    :meth:`restored` gives the plan as it stood at the checkpoint.
    """

    @abc.abstractmethod
    def updates_before(self, epoch: int) -> bool:
        """Whether the plan is updated before 1-based ``epoch`` (the declared interval)."""

    @abc.abstractmethod
    def update(
        self, epoch: int, plan: CurriculumPlan, probe: StudentProbe
    ) -> tuple[CurriculumPlan, dict[str, Any]]:
        """The plan to train ``epoch`` from, and a row of facts to log (JSON values)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a restart, as JSON values."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def restored(self, plan: CurriculumPlan) -> CurriculumPlan:
        """``plan`` (the one the strategy built at the start) with the epochs decided up to the
        loaded state, so a resumed run trains the epoch it was in on the same examples."""
