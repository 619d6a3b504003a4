"""DDK (domain-aware dynamic data mixture for distillation; ``../shared/spec/siblings.md``
section 4) and fixed domain mixing, its baseline.

A mixture plan's "epoch" is one update interval: ``update_every_steps`` optimiser steps, that is
``update_every_steps x examples_per_step`` examples drawn by domain weights
(:class:`~spectrumkd.curation.mixture.DomainSampler`). :class:`DomainMix` keeps the weights
fixed (uniform unless given). :class:`DDK` starts from ``softmax(l_S / l_T)`` over the
per-domain validation perplexities of the untrained student and the teacher, and before every
interval after the first its :class:`DDKUpdater` (the plan's
:class:`~spectrumkd.curation.plan.PlanUpdater`) measures the student again on the domain
validation sets and moves the weights toward the domains where it lags most. The trainer only
knows the hook, never the strategy.

Loss: the spec's ``CE + gamma * KL`` at temperature ``T`` is trained as
``(CE + gamma * KL) / (1 + gamma)``, the trainer's ``alpha CE + (1 - alpha) tau^2 KD`` with
``kd_weight = 1 - alpha = gamma / (1 + gamma)`` (at T = 1): the same direction and, under AdamW,
which divides by the gradient's own scale, the same steps up to epsilon and gradient clipping.
The KL direction is the run's objective (``train.objective``; forward KL by default).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from spectrumkd.curation.mixture import (
    DomainSampler,
    check_weights,
    domain_ratios,
    initial_weights,
    perplexity,
    update_weights,
)
from spectrumkd.curation.plan import (
    CurationStrategy,
    CurriculumPlan,
    EpochPlan,
    PlanUpdater,
    StudentProbe,
)


@dataclass(frozen=True)
class MixtureConfig:
    """What every domain mixture shares: its length, its interval and its loss."""

    intervals: int = 10  # plan epochs; each is update_every_steps optimiser steps
    update_every_steps: int = 1000  # K: DDK updates its weights every K steps
    # Examples per optimiser step (batch_size x grad_accum x processes); None: the job fills it
    # in from the run's train settings.
    examples_per_step: int | None = None
    gamma: float = 0.2  # the KD weight of the spec's loss CE + gamma * KL
    temperature: float = 1.0
    seed: int = 0  # the domain draws and the within-domain orders

    def __post_init__(self) -> None:
        for name in ("intervals", "update_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.examples_per_step is not None and self.examples_per_step < 1:
            raise ValueError(f"examples_per_step={self.examples_per_step} must be >= 1")
        if self.gamma < 0:
            raise ValueError(f"gamma={self.gamma} must be >= 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")

    @property
    def kd_weight(self) -> float:
        """``1 - alpha`` of the trainer's loss for the spec's ``CE + gamma KL``."""
        return self.gamma / (1.0 + self.gamma)

    def interval_size(self) -> int:
        if self.examples_per_step is None:
            raise ValueError(
                "examples_per_step is unset: give batch_size x grad_accum x processes "
                "(spectrumkd distill fills it in from the train settings)"
            )
        return self.update_every_steps * self.examples_per_step


@dataclass(frozen=True)
class DomainMixConfig(MixtureConfig):
    # Fixed weights per domain name (normalised); None: every domain 1/D.
    weights: dict[str, float] | None = None


@dataclass(frozen=True)
class DDKConfig(MixtureConfig):
    smoothing: float = 0.5  # a: r' = a psi / sum(psi) + (1 - a) / D
    # Validation rows per domain the student is measured on every K steps (the paper: 500);
    # the first ones of each domain's held-out rows.
    validation_rows_per_domain: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"smoothing={self.smoothing} must be in [0, 1]")
        if self.validation_rows_per_domain < 1:
            raise ValueError(
                f"validation_rows_per_domain={self.validation_rows_per_domain} must be >= 1"
            )


def ids_by_domain(domains: Mapping[str, str]) -> dict[str, list[str]]:
    """``{domain: [ids]}`` from ``{id: domain}``, ids in their given order."""
    grouped: dict[str, list[str]] = {}
    for id_, domain in domains.items():
        grouped.setdefault(str(domain), []).append(id_)
    return grouped


def _named(domains: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    return {d: float(v) for d, v in zip(domains, values, strict=True)}


class DomainMixtureStrategy(CurationStrategy):
    """A strategy that mixes domains rather than ranking by difficulty."""

    settings_type: ClassVar[type]

    def __init__(self, settings: MixtureConfig | None = None) -> None:
        self.settings = settings if settings is not None else self.settings_type()

    def plan(self, ids: Sequence[str], difficulties: Sequence[float]) -> CurriculumPlan:
        raise ValueError(
            f"the {self.name} strategy mixes domains instead of ranking by difficulty: build its "
            "plan with plan_for_domains() (spectrumkd distill does, from data.domain_field or "
            "data.mix)"
        )

    def _epochs(
        self,
        sampler: DomainSampler,
        weights: np.ndarray,
        epochs: range,
        info: dict[str, Any],
    ) -> list[EpochPlan]:
        settings = self.settings
        planned = []
        for epoch in epochs:
            ids = sampler.draw(weights, settings.interval_size())
            planned.append(
                EpochPlan(
                    epoch,
                    ids,
                    settings.temperature,
                    kd_weight=settings.kd_weight,
                    info={**info, "drawn": sampler.counts(ids)},
                )
            )
        return planned


class DomainMix(DomainMixtureStrategy):
    """Fixed domain weights for every interval: DDK's baseline (uniform by default)."""

    name = "domain_mix"
    settings_type = DomainMixConfig

    def plan_for_domains(self, domains: Mapping[str, str]) -> CurriculumPlan:
        grouped = ids_by_domain(domains)
        sampler = DomainSampler(grouped, seed=self.settings.seed)
        names = sampler.domains
        if self.settings.weights is None:
            weights = np.full(len(names), 1.0 / len(names))
        else:
            weights = check_weights(self.settings.weights, names)
        named = _named(names, weights)
        epochs = self._epochs(
            sampler, weights, range(1, self.settings.intervals + 1), {"weights": named}
        )
        metadata = {"mixture": {"domains": list(names), "weights": named}}
        return CurriculumPlan(self.name, tuple(epochs), metadata)


class DDK(DomainMixtureStrategy):
    """DDK: weights that follow the student's perplexity gap to the teacher per domain."""

    name = "ddk"
    settings_type = DDKConfig

    def plan_for_domains(
        self,
        domains: Mapping[str, str],
        *,
        teacher_perplexity: Mapping[str, float],
        student_perplexity: Mapping[str, float],
        validation: Mapping[str, Sequence[Any]],
    ) -> CurriculumPlan:
        """The plan from ``{id: domain}`` of the training rows, the teacher's and the untrained
        student's perplexity per domain (on ``validation``: ``{domain: examples}``, held out,
        never trained on), with a :class:`DDKUpdater` that re-measures the student on those
        validation rows before every interval after the first.

        Epochs after the first hold draws from the initial weights until the updater replaces
        them (their ``info`` says ``provisional``): what the run would train with no update."""
        settings: DDKConfig = self.settings  # type: ignore[assignment]
        grouped = ids_by_domain(domains)
        sampler = DomainSampler(grouped, seed=settings.seed)
        names = sampler.domains
        for what, given in (
            ("teacher_perplexity", teacher_perplexity),
            ("student_perplexity", student_perplexity),
            ("validation", validation),
        ):
            if set(given) != set(names):
                raise ValueError(
                    f"DDK needs {what} for each training domain ({', '.join(names)}), got "
                    f"{', '.join(sorted(given)) or 'none'}"
                )
        empty = [d for d in names if not validation[d]]
        if empty:
            raise ValueError(
                f"DDK needs held-out validation rows in every domain; none in {', '.join(empty)} "
                "(raise data.validation_ratio)"
            )
        teacher = [teacher_perplexity[d] for d in names]
        student = [student_perplexity[d] for d in names]
        weights = initial_weights(domain_ratios(student, teacher))
        named = _named(names, weights)
        (first,) = self._epochs(sampler, weights, range(1, 2), {"weights": named})
        after_first = sampler.state_dict()
        provisional = {"weights": named, "provisional": True}
        rest = self._epochs(sampler, weights, range(2, settings.intervals + 1), provisional)
        sampler.load_state_dict(after_first)
        updater = DDKUpdater(
            settings,
            sampler,
            np.asarray(teacher, dtype=float),
            weights,
            {d: list(validation[d]) for d in names},
            current={"epoch": 1, "ids": list(first.ids)},
        )
        metadata = {
            "mixture": {
                "domains": list(names),
                "weights": named,
                "teacher_perplexity": _named(names, teacher),
                "student_perplexity": _named(names, student),
                "validation_rows": {d: len(validation[d]) for d in names},
            }
        }
        return CurriculumPlan(self.name, (first, *rest), metadata, updater=updater)


@dataclass
class DDKUpdater(PlanUpdater):
    """DDK's dynamic-plan hook: before every interval after the first, the student's perplexity
    per domain on the held-out rows, the smoothed weight update, and that interval's draws."""

    settings: DDKConfig
    sampler: DomainSampler
    teacher_perplexity: np.ndarray
    weights: np.ndarray
    validation: dict[str, list[Any]]
    current: dict[str, Any] = field(default_factory=dict)  # the latest decided epoch's ids
    history: list[dict[str, Any]] = field(default_factory=list)

    def updates_before(self, epoch: int) -> bool:
        return epoch >= 2  # epoch 1 trains on the initial weights, measured at plan time

    def update(
        self, epoch: int, plan: CurriculumPlan, probe: StudentProbe
    ) -> tuple[CurriculumPlan, dict[str, Any]]:
        started = time.perf_counter()
        names = self.sampler.domains
        flat = [example for d in names for example in self.validation[d]]
        losses = probe.token_losses(flat)
        student, offset = [], 0
        for d in names:
            count = len(self.validation[d])
            student.append(perplexity(losses[offset : offset + count]))
            offset += count
        ratios = domain_ratios(student, self.teacher_perplexity)
        self.weights = update_weights(self.weights, ratios, self.settings.smoothing)
        ids = self.sampler.draw(self.weights, self.settings.interval_size())
        weights = _named(names, self.weights)
        self.current = {"epoch": epoch, "ids": ids}
        entry = {
            "epoch": epoch,
            "student_perplexity": _named(names, student),
            "ratios": _named(names, ratios),
            "weights": weights,
            "drawn": self.sampler.counts(ids),
            "measure_seconds": time.perf_counter() - started,
            "validation_tokens": sum(count for _, count in losses),
        }
        self.history.append(entry)
        info = {"weights": weights, "drawn": entry["drawn"]}
        updated = dataclasses.replace(plan.epoch(epoch), ids=ids, info=info)
        return plan.with_epoch(updated), {"plan_update": DDK.name, **entry}

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.tolist(),
            "sampler": self.sampler.state_dict(),
            "current": self.current,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = np.asarray(state["weights"], dtype=float)
        self.sampler.load_state_dict(state["sampler"])
        self.current = dict(state["current"])
        self.history = list(state["history"])

    def restored(self, plan: CurriculumPlan) -> CurriculumPlan:
        if not self.current or self.current["epoch"] == 1:
            return plan  # epoch 1 is the plan's own
        epoch = plan.epoch(self.current["epoch"])
        ids = list(self.current["ids"])
        info = {"weights": _named(self.sampler.domains, self.weights)}
        info["drawn"] = self.sampler.counts(ids)
        return plan.with_epoch(dataclasses.replace(epoch, ids=ids, info=info))
