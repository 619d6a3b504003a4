"""SRD, selective reflection distillation (spec ``siblings.md`` section 3).

The easy-to-hard order (by default the fused student-reflection ranking, section 1) is cut to
its first floor(rho * N) examples, the rest are never trained on; those are split into S equal
cumulative stages (floor(kept/S) each, the remainder in the last), a fixed number of epochs each,
from the previous stage's weights with a fresh optimiser and LR schedule. Defaults are the
authors' GPT-2 profile: rho = 0.75 (only three of four buckets are ever used in their scripts),
3 stages of 8 epochs (8 * (1/4 + 1/2 + 3/4) = 12 full-data epochs of visits against 20: 0.6x),
temperatures 1.0, 1.5, 2.0 and KD weights 0.8, 0.9, 1.0. Their OpenLLaMA-3B LoRA profile is
``SRDConfig(epochs_per_stage=4, tau_end=5/3, kd_weight_start=0.7, kd_weight_end=0.9)``
(temperatures 1.0, 1.33, 1.67; KD weights 0.7, 0.8, 0.9).

Re-ranking between stages: the paper's abstract says "dynamically", but the authors' code ranks
once, so :class:`SRD` plans from one static ranking. The optional re-ranking is the pure splice
:func:`~spectrumkd.curation.staged.replan_from_stage` (the stages already trained as planned,
the rest from a plan on rescored difficulties). ``rerank_between_stages=True`` asks the distill
job to use it: each stage is trained as its own run, the trained student rescored with the run's
metric and the remaining stages replanned (:mod:`spectrumkd.jobs.reranking`). Off (the default),
the plan and its ``schedule.json`` are those of the static ranking, the setting not recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from spectrumkd.curation.plan import CurationStrategy, CurriculumPlan
from spectrumkd.curation.pocl import baby_step_prefixes
from spectrumkd.curation.ranking import rank_easy_to_hard
from spectrumkd.curation.staged import Stage, StageRamp, staged_plan


@dataclass(frozen=True)
class SRDConfig(StageRamp):
    """SRD's settings; defaults are the authors' GPT-2 runs. Each field's ``help`` is its flag's."""

    selection_ratio: float = field(
        default=0.75, metadata={"help": "share rho of the easiest examples kept"}
    )
    num_stages: int = field(default=3, metadata={"help": "stages over the kept examples"})
    epochs_per_stage: int = field(default=8, metadata={"help": "epochs in every stage"})
    tau_start: float = field(default=1.0, metadata={"help": "temperature of the first stage"})
    tau_end: float = field(default=2.0, metadata={"help": "temperature of the last stage"})
    kd_weight_start: float = field(default=0.8, metadata={"help": "KD weight of the first stage"})
    kd_weight_end: float = field(default=1.0, metadata={"help": "KD weight of the last stage"})
    rerank_between_stages: bool = field(
        default=False,
        metadata={
            "help": "rescore the examples with the partly trained student after each stage and "
            "replan the remaining stages (the distill job trains stage by stage)"
        },
    )

    def __post_init__(self) -> None:
        rho = self.selection_ratio
        if (
            isinstance(rho, bool)
            or not isinstance(rho, (int, float))
            or not math.isfinite(rho)
            or not 0.0 < rho <= 1.0
        ):
            raise ValueError(
                f"selection_ratio={rho!r} must be a share in (0, 1] of the examples to keep"
            )
        self.check_ramp()
        if not isinstance(self.rerank_between_stages, bool):
            raise ValueError(
                f"rerank_between_stages={self.rerank_between_stages!r} must be true or false"
            )

    def kept(self, num_examples: int) -> int:
        """floor(rho * N). Rounded to 9 decimals first, so that 0.29 * 100 = 28.999999999999996
        keeps the 29 examples the user meant."""
        return math.floor(round(self.selection_ratio * num_examples, 9))


class SRD(CurationStrategy):
    """The easiest rho of the order in nested equal stages; the rest is never trained on."""

    name = "srd"

    def __init__(self, config: SRDConfig | None = None) -> None:
        self.config = config or SRDConfig()

    def stage_sizes(self, num_examples: int) -> list[int]:
        config = self.config
        kept = config.kept(num_examples)
        if kept < config.num_stages:
            raise ValueError(
                f"selection_ratio={config.selection_ratio} keeps {kept} of {num_examples} "
                f"examples, fewer than the {config.num_stages} stages; raise selection_ratio, "
                "lower num_stages or add data"
            )
        return baby_step_prefixes(kept, config.num_stages)

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
        plan = staged_plan(
            self.name,
            ranking,
            stages,
            config.epochs_per_stage,
            config,
            {"num_kept": config.kept(len(ranking))},
        )
        if not config.rerank_between_stages:
            # Off, the schedule reads as it did before the setting existed.
            del plan.metadata["settings"]["rerank_between_stages"]
        return plan
