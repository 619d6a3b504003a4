"""Scoring: the initial student's per-example difficulty (one inference pass)."""

from spectrumkd.scoring.difficulty import REDUCTIONS, DifficultyTable, read_difficulties
from spectrumkd.scoring.scorer import (
    ScoringSettings,
    response_token_losses,
    score_examples,
)

__all__ = [
    "REDUCTIONS",
    "DifficultyTable",
    "ScoringSettings",
    "read_difficulties",
    "response_token_losses",
    "score_examples",
]
