"""Algorithm 1 line 3, ``lambda_a, lambda_b = analyzer(CE-Loss)``: choose the excluded share
from the shape of the loss distribution instead of fixing it.

The paper shows (Figure 3a) that per-example losses follow a log-normal law with a long right
tail. The analyzer fits that law and excludes the examples beyond its ``quantile`` point:
for losses that really are log-normal this excludes about ``1 - quantile`` of the data (0.1 at
the default, the paper's fixed value), and more when the empirical tail is heavier than the fit,
which is exactly the noisy-hard mass the Excluded zone is for. Fixed ratios stay the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class LogNormalFit:
    """``log(loss) ~ Normal(mu, sigma)`` on the positive losses, by robust estimates: the median
    and the scaled median absolute deviation of the log-losses. A maximum-likelihood fit would
    widen itself to cover a noisy hard tail, and the tail is what the analyzer must detect."""

    mu: float
    sigma: float
    ks_statistic: float  # Kolmogorov-Smirnov distance between the data and the fit
    ks_pvalue: float
    n: int

    def quantile(self, q: float) -> float:
        return float(np.exp(self.mu + self.sigma * stats.norm.ppf(q)))

    def pdf(self, x: np.ndarray) -> np.ndarray:
        return stats.lognorm.pdf(x, s=self.sigma, scale=np.exp(self.mu))


def fit_lognormal(losses: Sequence[float] | np.ndarray) -> LogNormalFit:
    values = np.asarray(losses, dtype=np.float64)
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size < 10:
        raise ValueError(
            f"a log-normal fit needs at least 10 positive finite losses, got {positive.size}"
        )
    logs = np.log(positive)
    mu = float(np.median(logs))
    sigma = float(stats.median_abs_deviation(logs, scale="normal"))
    if sigma == 0:
        raise ValueError("all losses are equal; there is no distribution to fit")
    ks = stats.kstest(logs, "norm", args=(mu, sigma))
    return LogNormalFit(
        mu=mu,
        sigma=sigma,
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        n=int(positive.size),
    )


@dataclass(frozen=True)
class ChosenRatios:
    lambda_a: float
    lambda_b: float
    threshold: float  # losses above this are excluded
    quantile: float
    fit: LogNormalFit

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return describe_choice(self.to_dict())


def describe_choice(chosen: dict) -> str:
    """One line for a :class:`ChosenRatios` as stored in ``schedule.json``."""
    fit = chosen["fit"]
    return (
        f"analyzer: log-normal fit mu={fit['mu']:.3f} sigma={fit['sigma']:.3f} "
        f"(KS distance {fit['ks_statistic']:.3f}); losses above {chosen['threshold']:.3f} (fit quantile "
        f"{chosen['quantile']}) excluded -> lambda_b={chosen['lambda_b']:.4f}, lambda_a={chosen['lambda_a']}"
    )


def choose_ratios(
    losses: Sequence[float] | np.ndarray, *, lambda_a: float = 0.1, quantile: float = 0.9
) -> ChosenRatios:
    """``lambda_b`` = share of examples whose loss exceeds the fitted log-normal's ``quantile``,
    capped so that ``2 lambda_a + lambda_b <= 1``."""
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile={quantile} must be in [0.5, 1)")
    values = np.asarray(losses, dtype=np.float64)
    fit = fit_lognormal(values)
    threshold = fit.quantile(quantile)
    lambda_b = min(float(np.mean(values > threshold)), 1.0 - 2 * lambda_a)
    return ChosenRatios(
        lambda_a=lambda_a, lambda_b=lambda_b, threshold=threshold, quantile=quantile, fit=fit
    )
