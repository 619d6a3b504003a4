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

from spectrumkd.curation.config import SpectrumKDConfig
from spectrumkd.curation.plan import CurationStrategy
from spectrumkd.curation.schedule import SpectrumKD


@dataclass(frozen=True)
class StrategySpec:
    """How to build one strategy: its settings dataclass, the strategy from those settings, the
    difficulty metric it ranks by unless told otherwise, and one line for ``--help``."""

    settings: type
    build: Callable[[Any], CurationStrategy]
    default_metric: str
    summary: str


STRATEGIES: dict[str, StrategySpec] = {
    "spectrumkd": StrategySpec(
        settings=SpectrumKDConfig,
        build=SpectrumKD,
        default_metric="ce_mean",
        summary="difficulty spectrum, zones, a window sliding easy to hard, rising temperature",
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
