"""Holding out a seeded share of the examples for validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

Row = TypeVar("Row")


def split_validation(
    examples: Sequence[Row], ratio: float, seed: int
) -> tuple[list[Row], list[Row]]:
    """A seeded ``ratio`` of the examples held out (never scored, curated or trained on).

    Returns (training, held out), each in the examples' own order. The same examples, ratio
    and seed always hold out the same rows, so a resumed run validates on what it began with.
    """
    if ratio == 0:
        return list(examples), []
    order = np.random.default_rng(seed).permutation(len(examples))
    held = set(order[: max(1, round(ratio * len(examples)))].tolist())
    return [e for i, e in enumerate(examples) if i not in held], [
        e for i, e in enumerate(examples) if i in held
    ]
