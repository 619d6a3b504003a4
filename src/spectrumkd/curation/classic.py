"""The classic curricula the SpectrumKD paper compares against (its section 5.4, Table 5; spec
``siblings.md`` section 5, a reconstruction): traditional curriculum learning (TCL), a
hand-crafted difficulty (response length, sentence-level entropy) under a standard scheduler.

The order is cut into k equal buckets B_1..B_k (floor(N/k) each, the remainder in the last);
each stage trains p epochs with the optimiser and LR schedule restarting where it begins:

- Baby Step: stage s trains on B_1 u ... u B_s (p N (k+1) / 2 example visits in all);
- One-Pass: stage s trains on B_s only (p N visits in all, every example in one stage).

Nothing is filtered out, and the temperature is constant (the paper's TCL has no temperature
schedule). The difficulty metric is a separate choice (``length`` by default; ``unigram_entropy``
or ``predictive_entropy`` for the entropy variant).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from spectrumkd.curation.plan import CurationStrategy, CurriculumPlan
from spectrumkd.curation.ranking import bucket_bounds, rank_easy_to_hard
from spectrumkd.curation.staged import (
    Stage,
    check_count,
    check_kd_weight,
    check_temperature,
    staged_plan,
)


@dataclass(frozen=True)
class ClassicCurriculumConfig:
    """Settings of Baby Step and One-Pass. Each field's ``help`` is its flag's."""

    num_buckets: int = field(default=4, metadata={"help": "buckets k of the order (= stages)"})
    epochs_per_stage: int = field(default=8, metadata={"help": "epochs p in every stage"})
    temperature: float = field(default=1.0, metadata={"help": "temperature of every epoch"})
    kd_weight: float | None = field(
        default=None, metadata={"help": "KD weight of every epoch (unset: the trainer's alpha)"}
    )

    def __post_init__(self) -> None:
        check_count("num_buckets", self.num_buckets)
        check_count("epochs_per_stage", self.epochs_per_stage)
        check_temperature("temperature", self.temperature)
        check_kd_weight("kd_weight", self.kd_weight, optional=True)


class _ClassicCurriculum(CurationStrategy):
    """k equal buckets of the easy-to-hard order, one stage per bucket; subclasses say which
    ranks stage s trains on."""

    cumulative: bool

    def __init__(self, config: ClassicCurriculumConfig | None = None) -> None:
        self.config = config or ClassicCurriculumConfig()

    def stage_bounds(self, num_examples: int) -> list[tuple[int, int]]:
        """0-based ``(start, stop)`` ranks of each stage."""
        buckets = bucket_bounds(num_examples, self.config.num_buckets)
        return [(0, stop) if self.cumulative else (start, stop) for start, stop in buckets]

    def stage_sizes(self, num_examples: int) -> list[int]:
        return [stop - start for start, stop in self.stage_bounds(num_examples)]

    def plan(self, ids: Sequence[str], difficulties: Sequence[float]) -> CurriculumPlan:
        config = self.config
        ranking = rank_easy_to_hard(ids, difficulties)
        stages = [
            Stage(start, stop, config.temperature, config.kd_weight)
            for start, stop in self.stage_bounds(len(ranking))
        ]
        return staged_plan(self.name, ranking, stages, config.epochs_per_stage, config)


class BabyStep(_ClassicCurriculum):
    """Stage s trains on buckets B_1..B_s: nested, growing by one bucket a stage."""

    name = "baby_step"
    cumulative = True


class OnePass(_ClassicCurriculum):
    """Stage s trains on bucket B_s alone: disjoint, each example in exactly one stage."""

    name = "one_pass"
    cumulative = False
