"""The sliding window and the temperature schedule (spec sections 3 and 4; paper Algorithm 1).

Pure functions: the same losses and configuration give the same schedule, byte for byte.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spectrumkd.curation.config import SpectrumKDConfig
from spectrumkd.curation.plan import CurationStrategy, CurriculumPlan, EpochPlan, RankSlice
from spectrumkd.curation.spectrum import (
    ZONES,
    Spectrum,
    ZoneSizes,
    build_spectrum,
    round_half_up,
    zone_sizes,
)


def temperatures(epochs: int, tau_start: float, tau_end: float) -> list[float]:
    """tau_j = tau_0 + (tau_n - tau_0) (j - 1) / (n - 1), j = 1..n; one epoch -> tau_0."""
    if epochs == 1:
        return [float(tau_start)]
    return [
        tau_start + (tau_end - tau_start) * (j - 1) / (epochs - 1) for j in range(1, epochs + 1)
    ]


def step_parity_epochs(baseline_epochs: int, n_examples: int, window: int) -> int:
    """Epochs that give SpectrumKD the optimiser steps of a full-data baseline (paper C.3):
    each epoch sees M/N of the data, so n = round(n_baseline N / M). 20 epochs at 80 % -> 25."""
    if baseline_epochs < 1 or window < 1 or n_examples < window:
        raise ValueError(
            f"step parity needs baseline_epochs >= 1 and 1 <= window <= n_examples "
            f"(got {baseline_epochs}, window={window}, n_examples={n_examples})"
        )
    return round_half_up(baseline_epochs * n_examples / window)


@dataclass(frozen=True)
class StepParity:
    """A SpectrumKD schedule sized for the optimiser steps of a full-data baseline."""

    n_examples: int
    window: int  # M, the rows each SpectrumKD epoch trains on
    baseline_epochs: int
    config: SpectrumKDConfig  # the caller's config with ``epochs`` and ``warmup_epochs`` set

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def warmup_epochs(self) -> int:
        return self.config.warmup_epochs

    def to_dict(self) -> dict[str, int]:
        return {
            "n_examples": self.n_examples,
            "window": self.window,
            "baseline_epochs": self.baseline_epochs,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
        }


def step_parity(
    config: SpectrumKDConfig,
    baseline_epochs: int,
    n_examples: int,
    *,
    warmup_fraction: float | None = None,
) -> StepParity:
    """``config`` with as many epochs as give SpectrumKD the optimiser steps of
    ``baseline_epochs`` full-data epochs over ``n_examples`` rows (:func:`step_parity_epochs`).

    The window M depends only on N and the zone ratios of ``config``. The warm-up is one of two
    rules, named by the caller: ``warmup_fraction=None`` keeps ``config.warmup_epochs`` as the
    user gave it (``spectrumkd curate --baseline-epochs``), while a fraction warms up for
    ``int(fraction * epochs)`` epochs (the paper's fifth, 5 of 25: the demo and the experiment
    runner), so the warm-up scales with the epochs parity chose.
    """
    window = zone_sizes(n_examples, config.lambda_a, config.lambda_b).window
    epochs = step_parity_epochs(baseline_epochs, n_examples, window)
    warmup = config.warmup_epochs if warmup_fraction is None else int(warmup_fraction * epochs)
    return StepParity(
        n_examples=n_examples,
        window=window,
        baseline_epochs=baseline_epochs,
        config=dataclasses.replace(config, epochs=epochs, warmup_epochs=warmup),
    )


def window_totals(kept: np.ndarray, sizes: ZoneSizes) -> np.ndarray:
    """td(w) for w = 0..E: the total difficulty of ranks w+1..w+M, from prefix sums.

    The running maximum only irons out float rounding in the prefix sums: mathematically td
    never decreases over a sorted spectrum, and the search below relies on that.
    """
    prefix = np.concatenate(([0.0], np.cumsum(kept, dtype=np.float64)))
    starts = np.arange(sizes.early + 1)
    return np.maximum.accumulate(prefix[starts + sizes.window] - prefix[starts])


def forward_window_starts(
    kept: np.ndarray, sizes: ZoneSizes, config: SpectrumKDConfig
) -> list[int]:
    """0-based window start w of each epoch 1..n, sliding from easy to hard.

    ``kept`` is the ascending difficulty of ranks 1..N' (Early, Continuous, Late).
    """
    n, k, early = config.epochs, config.warmup_epochs, sizes.early
    if early == 0 and config.lambda_a > 0 and n > k + 1:
        # Refused, not warned: the "curriculum" would be one fixed window, which a user who
        # asked for SpectrumKD on a handful of rows would otherwise only notice in the results.
        needed = math.ceil(0.5 / config.lambda_a - 1e-12)
        raise ValueError(
            f"{sizes.n} examples with lambda_a={config.lambda_a:g} give an Early zone of 0 "
            f"(round({config.lambda_a * sizes.n:g})), so the window never slides; "
            f"use at least {needed} examples or a larger lambda_a"
        )
    if n <= k + 1 or early == 0:
        if n <= k + 1:
            warnings.warn(
                f"epochs={n} <= warmup_epochs+1={k + 1}: the window never slides; every epoch "
                f"trains on the first window ({sizes.window} of {sizes.n} examples)",
                stacklevel=3,
            )
        else:
            warnings.warn(
                "lambda_a=0: no Early or Late zone, so the window never slides; every epoch "
                f"trains on the {sizes.window} easiest of {sizes.n} examples",
                stacklevel=3,
            )
        return [0] * n
    td = window_totals(kept, sizes)
    shifting = n - k - 1  # epochs k+2..n move the window
    delta_avg = (td[early] - td[0]) / shifting
    starts, w = [0] * (k + 1), 0
    for j in range(1, shifting + 1):  # j = epoch - k - 1
        if j == shifting:
            w = early  # the last epoch ends at w = E (delta_avg is defined by that window)
        elif config.step_mode == "adaptive":
            # Algorithm 1 lines 12-17: step one rank at a time, delta += L(in) - L(out), until
            # delta > delta_avg. The running delta after reaching w equals td(w) - td(w_start),
            # so the loop is a search for the first w with td(w) > td(w_start) + delta_avg.
            if w < early:
                w = min(early, int(np.searchsorted(td, td[w] + delta_avg, side="right")))
        elif config.step_mode == "drift_free":
            # Aim at the cumulative target, so overshoot in one epoch is not carried forward.
            w = max(w, min(early, int(np.searchsorted(td, td[0] + j * delta_avg, side="left"))))
        else:  # linear ablation
            w = round_half_up(early * j / shifting)
        starts.append(w)
    return starts


def window_starts(spectrum: Spectrum, config: SpectrumKDConfig) -> list[int]:
    """Window starts in the configured direction. Reverse sliding (hard to easy) is the forward
    schedule on the mirrored spectrum: rank r of N' becomes N'-1-r, losses negated so that they
    ascend again, and start w maps back to E - w."""
    sizes = spectrum.sizes
    kept = spectrum.difficulties[: sizes.n_kept]
    if config.direction == "forward":
        return forward_window_starts(kept, sizes, config)
    mirrored = forward_window_starts(-kept[::-1], sizes, config)
    return [sizes.early - w for w in mirrored]


class SpectrumKD(CurationStrategy):
    """SpectrumKD curation: difficulty spectrum, zones, sliding window, rising temperature."""

    name = "spectrumkd"

    def __init__(self, config: SpectrumKDConfig | None = None) -> None:
        self.config = config or SpectrumKDConfig()

    def spectrum(self, ids: Sequence[str], difficulties: Sequence[float]) -> Spectrum:
        return build_spectrum(ids, difficulties, self.config.lambda_a, self.config.lambda_b)

    def plan(self, ids: Sequence[str], difficulties: Sequence[float]) -> CurriculumPlan:
        return self.plan_from_spectrum(self.spectrum(ids, difficulties))

    def plan_from_spectrum(self, spectrum: Spectrum) -> CurriculumPlan:
        config, sizes = self.config, spectrum.sizes
        prefix = np.concatenate(([0.0], np.cumsum(spectrum.difficulties, dtype=np.float64)))
        epochs = []
        for epoch, (w, tau) in enumerate(
            zip(
                window_starts(spectrum, config),
                temperatures(config.epochs, config.tau_start, config.tau_end),
                strict=True,
            ),
            start=1,
        ):
            total = float(prefix[w + sizes.window] - prefix[w])
            info = {
                "window_start_rank": w + 1,
                "window_end_rank": w + sizes.window,
                "total_difficulty": total,
                "mean_difficulty": total / sizes.window,
            }
            epochs.append(
                EpochPlan(
                    epoch, RankSlice(spectrum.ids, w, w + sizes.window), float(tau), None, info
                )
            )
        zones = {}
        for zone, (start, end) in sizes.bounds().items():
            zone_ids = spectrum.ids[start - 1 : end]
            zone_losses = spectrum.difficulties[start - 1 : end]
            zones[zone] = {
                "start_rank": start,
                "end_rank": end,
                "size": len(zone_ids),
                "min_difficulty": float(zone_losses.min()) if len(zone_ids) else None,
                "max_difficulty": float(zone_losses.max()) if len(zone_ids) else None,
                "ids": list(zone_ids),
            }
        assert tuple(zones) == ZONES
        metadata = {
            "config": config.to_dict(),
            "settings": config.to_dict(),  # the key every strategy's plan records its settings in
            "n_examples": spectrum.n,
            "window_size": sizes.window,
            "zones": zones,
        }
        return CurriculumPlan(strategy=self.name, epochs=tuple(epochs), metadata=metadata)
