"""Curation: from per-example difficulties to a per-epoch curriculum (pure functions)."""

from spectrumkd.curation.analyzer import ChosenRatios, LogNormalFit, choose_ratios, fit_lognormal
from spectrumkd.curation.classic import BabyStep, ClassicCurriculumConfig, OnePass
from spectrumkd.curation.config import SpectrumKDConfig
from spectrumkd.curation.files import SCHEDULE_FILE, SPECTRUM_FILE, spectrum_rows, write_curation
from spectrumkd.curation.plan import CurationStrategy, CurriculumPlan, EpochPlan, RankSlice
from spectrumkd.curation.pocl import POCL, POCLConfig, baby_step_prefixes
from spectrumkd.curation.ranking import (
    Ranking,
    bucket_bounds,
    easy_to_hard,
    equal_buckets,
    rank_easy_to_hard,
)
from spectrumkd.curation.schedule import (
    SpectrumKD,
    StepParity,
    forward_window_starts,
    step_parity,
    step_parity_epochs,
    temperatures,
    window_starts,
    window_totals,
)
from spectrumkd.curation.spectrum import (
    ZONES,
    Spectrum,
    ZoneSizes,
    build_spectrum,
    round_half_up,
    zone_sizes,
)
from spectrumkd.curation.srd import SRD, SRDConfig
from spectrumkd.curation.staged import (
    Stage,
    covered_ranks,
    epochs_per_stage_for_budget,
    linear_ramp,
    replan_from_stage,
    staged_plan,
)
from spectrumkd.curation.strategies import (
    STRATEGIES,
    StrategySpec,
    build_strategy,
    settings_for_visit_budget,
    strategy_names,
    strategy_settings,
    strategy_spec,
)

__all__ = [
    "ChosenRatios",
    "LogNormalFit",
    "choose_ratios",
    "fit_lognormal",
    "SCHEDULE_FILE",
    "SPECTRUM_FILE",
    "spectrum_rows",
    "write_curation",
    "ZONES",
    "CurationStrategy",
    "CurriculumPlan",
    "EpochPlan",
    "RankSlice",
    "Spectrum",
    "SpectrumKD",
    "SpectrumKDConfig",
    "StepParity",
    "ZoneSizes",
    "build_spectrum",
    "forward_window_starts",
    "round_half_up",
    "step_parity",
    "step_parity_epochs",
    "temperatures",
    "window_starts",
    "window_totals",
    "zone_sizes",
    # staged curricula: POCL, SRD, the classic Baby Step and One-Pass
    "BabyStep",
    "ClassicCurriculumConfig",
    "OnePass",
    "POCL",
    "POCLConfig",
    "SRD",
    "SRDConfig",
    "Ranking",
    "Stage",
    "baby_step_prefixes",
    "bucket_bounds",
    "covered_ranks",
    "easy_to_hard",
    "epochs_per_stage_for_budget",
    "equal_buckets",
    "linear_ramp",
    "rank_easy_to_hard",
    "replan_from_stage",
    "staged_plan",
    # strategies by name
    "STRATEGIES",
    "StrategySpec",
    "build_strategy",
    "settings_for_visit_budget",
    "strategy_names",
    "strategy_settings",
    "strategy_spec",
]
