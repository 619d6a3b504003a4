"""The easy-to-hard order and its equal buckets: what every staged curriculum cuts its stages from.

Spec ``siblings.md`` section 1 steps 4 and 6: ties keep the input order (a stable sort, not a
tie-break by id as SpectrumKD's spectrum does), and K buckets of floor(N/K) items each, the
remainder going to the last, so stage j < K-1 is the first (j+1)*floor(N/K) items and the last
stage is all N. Pure functions of ids and difficulties (lower = easier).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranking:
    """Examples in easy-to-hard order: ``ids[0]`` is the easiest, with its difficulty beside it."""

    ids: tuple[str, ...]
    difficulties: np.ndarray  # float64, ascending, aligned with ids

    def __len__(self) -> int:
        return len(self.ids)

    def mean_difficulty(self, start: int, stop: int) -> float:
        """Mean difficulty of the 0-based ranks ``start..stop-1`` (a bucket or a stage)."""
        return float(self.difficulties[start:stop].mean())


def rank_easy_to_hard(ids: Sequence[str], difficulties: Sequence[float]) -> Ranking:
    """Sort ascending by difficulty; examples that tie keep their input order.

    Refuses, in one line each: ids and difficulties of different lengths, no examples, a NaN or
    infinite difficulty (naming the first such id), a repeated id.
    """
    ids = [str(i) for i in ids]
    values = np.asarray(difficulties, dtype=np.float64)
    if values.ndim != 1 or len(values) != len(ids):
        raise ValueError(
            f"got {len(ids)} ids but {values.size} difficulties; they must pair one to one"
        )
    if not ids:
        raise ValueError("a curriculum needs at least one example; the difficulty table is empty")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        first = int(bad[0])
        raise ValueError(
            f"difficulty of example {ids[first]!r} is {values[first]} ({bad.size} NaN or "
            "infinite in all); rescore those examples or drop them"
        )
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"example id {duplicate!r} appears more than once; ids must be unique")
    order = np.argsort(values, kind="stable")
    return Ranking(ids=tuple(ids[i] for i in order.tolist()), difficulties=values[order])


def easy_to_hard(ids: Sequence[str], difficulties: Sequence[float]) -> list[str]:
    """The ids from easiest to hardest (ascending difficulty, ties in input order)."""
    return list(rank_easy_to_hard(ids, difficulties).ids)


def equal_buckets(n: int, k: int) -> list[int]:
    """Sizes of ``k`` consecutive buckets of ``n`` ranked items: floor(n/k) each, the remainder
    in the last one (spec section 1 step 6)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cannot cut {n!r} examples into buckets; need an integer >= 1")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"number of buckets {k!r} must be an integer >= 1")
    if k > n:
        raise ValueError(
            f"{k} buckets of {n} examples would leave a bucket empty; use at most {n} buckets "
            "or more data"
        )
    size = n // k
    return [size] * (k - 1) + [n - size * (k - 1)]


def bucket_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """0-based ``(start, stop)`` of each of :func:`equal_buckets`' buckets, in order."""
    bounds, start = [], 0
    for size in equal_buckets(n, k):
        bounds.append((start, start + size))
        start += size
    return bounds
