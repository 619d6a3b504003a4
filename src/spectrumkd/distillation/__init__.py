"""Distillation: white-box KD objectives and the memory-bounded (chunked) engine."""

from spectrumkd.distillation.chunked import chunked_kd_loss
from spectrumkd.distillation.objectives import (
    IGNORE_INDEX,
    OBJECTIVES,
    Objective,
    combine,
    forward_kl,
    get_objective,
    jsd,
    kd_loss,
    reverse_kl,
    scaled_log_probs,
    skew_kl,
    skew_reverse_kl,
    tvd,
)

__all__ = [
    "IGNORE_INDEX",
    "OBJECTIVES",
    "Objective",
    "chunked_kd_loss",
    "combine",
    "forward_kl",
    "get_objective",
    "jsd",
    "kd_loss",
    "reverse_kl",
    "scaled_log_probs",
    "skew_kl",
    "skew_reverse_kl",
    "tvd",
]
