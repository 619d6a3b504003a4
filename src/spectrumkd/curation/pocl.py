"""POCL, progressive overload curriculum learning (spec ``siblings.md`` section 2).

Baby-step stages over the easy-to-hard order (by default the fused student-reflection ranking,
section 1): stage j of K trains on the first (j+1)*floor(N/K) examples, the last on all N, for a
fixed number of epochs each; the temperature and the KD weight rise linearly across stages and
stay constant within one; the optimiser and LR schedule restart where a stage begins, the
weights carry over. The authors' defaults: K = 4, 8 epochs per stage (8 * (1/4 + 1/2 + 3/4 + 1) =
20 full-data epochs of visits), temperatures 1.0, 1.33, 1.67, 2.0 and KD weights 0.7, 0.8, 0.9,
1.0 (from their scripts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from spectrumkd.curation.plan import CurationStrategy, CurriculumPlan
from spectrumkd.curation.ranking import bucket_bounds, rank_easy_to_hard
from spectrumkd.curation.staged import Stage, StageRamp, staged_plan


@dataclass(frozen=True)
class POCLConfig(StageRamp):
    """POCL's settings; defaults are the authors' runs. Each field's ``help`` is its flag's."""

    num_stages: int = field(default=4, metadata={"help": "stages K (buckets of the order)"})
    epochs_per_stage: int = field(default=8, metadata={"help": "epochs in every stage"})
    tau_start: float = field(default=1.0, metadata={"help": "temperature of the first stage"})
    tau_end: float = field(default=2.0, metadata={"help": "temperature of the last stage"})
    kd_weight_start: float = field(default=0.7, metadata={"help": "KD weight of the first stage"})
    kd_weight_end: float = field(default=1.0, metadata={"help": "KD weight of the last stage"})

    def __post_init__(self) -> None:
        self.check_ramp()


def baby_step_prefixes(n: int, k: int) -> list[int]:
    """Stage sizes of a baby-step curriculum: the cumulative bucket ends (j+1)*floor(n/k) for
    j < k-1, then n (spec section 1 step 6)."""
    return [stop for _, stop in bucket_bounds(n, k)]


class POCL(CurationStrategy):
    """Nested easy-to-hard prefixes, rising temperature and KD weight, restarts per stage."""

    name = "pocl"

    def __init__(self, config: POCLConfig | None = None) -> None:
        self.config = config or POCLConfig()

    def stage_sizes(self, num_examples: int) -> list[int]:
        return baby_step_prefixes(num_examples, self.config.num_stages)

    def plan(self, ids: Sequence[str], difficulties: Sequence[float]) -> CurriculumPlan:
        config = self.config
        ranking = rank_easy_to_hard(ids, difficulties)
        stages = [
            Stage(0, stop, tau, weight)
            for stop, tau, weight in zip(
                self.stage_sizes(len(ranking)),
                config.temperatures(),
                config.kd_weights(),
                strict=True,
            )
        ]
        return staged_plan(self.name, ranking, stages, config.epochs_per_stage, config)
