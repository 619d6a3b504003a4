"""Every curation strategy by name, each with its settings dataclass, so a config or a flag picks
one with a word (``curation: {strategy: pocl}``, ``spectrumkd curate --strategy srd``).

A strategy is a :class:`~spectrumkd.curation.plan.CurationStrategy` built from one settings
dataclass (defaults = the method's published settings, validated on construction); its plan
records the strategy's name and settings in ``CurriculumPlan.metadata["settings"]``, so a
``schedule.json`` says how it was made. Adding a method: a module with the strategy and its
settings, one line in :data:`STRATEGIES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spectrumkd.curation.classic import BabyStep, ClassicCurriculumConfig, OnePass
from spectrumkd.curation.config import SpectrumKDConfig
from spectrumkd.curation.dakd import DAKD, DAKDConfig
from spectrumkd.curation.ddk import DDK, DDKConfig, DomainMix, DomainMixConfig, MixtureConfig
from spectrumkd.curation.plan import CurationStrategy
from spectrumkd.curation.pocl import POCL, POCLConfig
from spectrumkd.curation.schedule import SpectrumKD, step_parity
from spectrumkd.curation.srd import SRD, SRDConfig
from spectrumkd.curation.staged import epochs_per_stage_for_budget


@dataclass(frozen=True)
class StrategySpec:
    """How to build one strategy: its settings dataclass, the strategy from those settings, the
    difficulty metric it ranks by unless told otherwise, and one line for ``--help``."""

    settings: type
    build: Callable[[Any], CurationStrategy]
    default_metric: str | None  # None: a strategy that ranks by no difficulty table
    summary: str
    # What the plan is made from: "difficulties" (a table: curate, distill), "domains" (DDK,
    # fixed mixing) or "models" (DA-KD); the last two are planned by distill from its models.
    plans_from: str = "difficulties"

    @property
    def mixes_domains(self) -> bool:
        """Whether the strategy plans from domains (DDK, fixed mixing), not difficulties."""
        return self.plans_from == "domains"

    @property
    def planned_by_distill(self) -> bool:
        """Whether only ``distill`` can plan it (it measures the run's models, not a table)."""
        return self.plans_from != "difficulties"


STRATEGIES: dict[str, StrategySpec] = {
    "spectrumkd": StrategySpec(
        settings=SpectrumKDConfig,
        build=SpectrumKD,
        default_metric="ce_mean",
        summary="difficulty spectrum, zones, a window sliding easy to hard, rising temperature",
    ),
    "pocl": StrategySpec(
        settings=POCLConfig,
        build=POCL,
        default_metric="reflection_rrf",
        summary="POCL: nested easy-to-hard stages 25/50/75/100 %, rising temperature and KD weight",
    ),
    "srd": StrategySpec(
        settings=SRDConfig,
        build=SRD,
        default_metric="reflection_rrf",
        summary="SRD: the easiest 75 % only, in three nested stages; the hardest never trained on",
    ),
    "baby_step": StrategySpec(
        settings=ClassicCurriculumConfig,
        build=BabyStep,
        default_metric="length",
        summary="classic Baby Step: stage s trains on buckets 1..s of k equal buckets",
    ),
    "one_pass": StrategySpec(
        settings=ClassicCurriculumConfig,
        build=OnePass,
        default_metric="length",
        summary="classic One-Pass: stage s trains on bucket s of k equal buckets only",
    ),
    "ddk": StrategySpec(
        settings=DDKConfig,
        build=DDK,
        default_metric=None,
        summary="DDK: domain weights that follow the student's perplexity gap to the teacher",
        plans_from="domains",
    ),
    "domain_mix": StrategySpec(
        settings=DomainMixConfig,
        build=DomainMix,
        default_metric=None,
        summary="fixed domain weights (uniform unless given): DDK's baseline",
        plans_from="domains",
    ),
    "dakd": StrategySpec(
        settings=DAKDConfig,
        build=DAKD,
        default_metric=None,
        summary="DA-KD: each epoch the rows the student finds hardest against the teacher, a "
        "cosine-shrinking share (use objective bdl)",
        plans_from="models",
    ),
}


def strategy_names() -> tuple[str, ...]:
    return tuple(STRATEGIES)


def strategy_spec(name: str) -> StrategySpec:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown curation strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        ) from None


def strategy_settings(name: str, values: Mapping[str, Any] | None = None) -> Any:
    """The settings dataclass of ``name`` from a mapping (a config section, ``--option``s),
    refusing keys it does not have in one line that lists the known ones."""
    spec = strategy_spec(name)
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(spec.settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown {name} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return spec.settings(**values)


def build_strategy(name: str, values: Mapping[str, Any] | Any = None) -> CurationStrategy:
    """The strategy ``name`` with ``values``: a mapping of settings, or the settings dataclass
    itself."""
    spec = strategy_spec(name)
    settings = values if isinstance(values, spec.settings) else strategy_settings(name, values)
    return spec.build(settings)


def settings_for_visit_budget(
    name: str,
    values: Mapping[str, Any] | Any,
    num_examples: int,
    baseline_epochs: int,
    *,
    warmup_fraction: float | None = None,
) -> Any:
    """The settings of ``name`` (from ``values``) with as many epochs as give the strategy the
    example visits, and so at one batch size the optimiser steps, of ``baseline_epochs``
    full-data epochs over ``num_examples`` rows: the same budget for every strategy.

    SpectrumKD: its step parity (``epochs``; ``warmup_fraction`` as in
    :func:`~spectrumkd.curation.schedule.step_parity`). A staged strategy: ``epochs_per_stage``
    = round(E N / sum of its stage sizes), exact when the stage sizes divide E N.
    """
    spec = strategy_spec(name)
    settings = values if isinstance(values, spec.settings) else strategy_settings(name, values)
    if isinstance(settings, SpectrumKDConfig):
        return step_parity(
            settings, baseline_epochs, num_examples, warmup_fraction=warmup_fraction
        ).config
    if isinstance(settings, MixtureConfig):  # intervals of K steps: as many as the budget holds
        intervals = max(1, round(baseline_epochs * num_examples / settings.interval_size()))
        return dataclasses.replace(settings, intervals=intervals)
    strategy = spec.build(settings)
    stage_sizes = getattr(strategy, "stage_sizes", None)
    if stage_sizes is None or not hasattr(settings, "epochs_per_stage"):
        raise ValueError(
            f"strategy {name!r} has no rule for a visit budget; set its epochs yourself"
        )
    epochs = epochs_per_stage_for_budget(stage_sizes(num_examples), baseline_epochs, num_examples)
    return dataclasses.replace(settings, epochs_per_stage=epochs)
