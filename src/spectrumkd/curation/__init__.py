"""Curation: from per-example difficulties to a per-epoch curriculum (pure functions)."""

from spectrumkd.curation.analyzer import ChosenRatios, LogNormalFit, choose_ratios, fit_lognormal
from spectrumkd.curation.config import SpectrumKDConfig
from spectrumkd.curation.files import SCHEDULE_FILE, SPECTRUM_FILE, spectrum_rows, write_curation
from spectrumkd.curation.plan import CurationStrategy, CurriculumPlan, EpochPlan, RankSlice
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
]
