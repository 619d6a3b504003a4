"""Scoring: the initial student's per-example difficulty, by any of several metrics.

:func:`compute_difficulty` computes a metric by name (:data:`METRICS`) into a folder; the
cross-entropy pass itself is :func:`score_examples`; :func:`fuse` is reciprocal rank fusion of
finished tables.
"""

from spectrumkd.scoring.difficulty import REDUCTIONS, DifficultyTable, read_difficulties
from spectrumkd.scoring.fusion import RRF_CONSTANT, easy_first_ranks, fuse, fused_positions
from spectrumkd.scoring.metrics import DifficultyResult, compute_difficulty
from spectrumkd.scoring.registry import (
    METRICS,
    MetricInputs,
    MetricSpec,
    get_metric,
    metric_names,
    register_metric,
)
from spectrumkd.scoring.scorer import (
    ScoringSettings,
    example_token_losses,
    response_token_losses,
    score_examples,
)

__all__ = [
    "METRICS",
    "REDUCTIONS",
    "RRF_CONSTANT",
    "DifficultyResult",
    "DifficultyTable",
    "MetricInputs",
    "MetricSpec",
    "ScoringSettings",
    "compute_difficulty",
    "easy_first_ranks",
    "fuse",
    "fused_positions",
    "get_metric",
    "metric_names",
    "read_difficulties",
    "register_metric",
    "response_token_losses",
    "example_token_losses",
    "score_examples",
]
