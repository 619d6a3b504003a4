"""The difficulty spectrum: sort examples by the untrained student's loss, cut four zones.

Spec section 2. Pure functions of (ids, difficulties, ratios); no model, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ZONES: tuple[str, ...] = ("early", "continuous", "late", "excluded")


def round_half_up(x: float) -> int:
    """The spec's ``round``: Python's ``round`` rounds halves to even (round(2.5) == 2), which
    would make zone sizes jump by parity of N; halves go up here, documented and tested."""
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class ZoneSizes:
    """Zone sizes for N examples: Early E, Excluded X, N' = N - X, window M = N' - E."""

    n: int
    early: int
    excluded: int

    @property
    def n_kept(self) -> int:
        return self.n - self.excluded

    @property
    def window(self) -> int:
        return self.n_kept - self.early

    @property
    def late(self) -> int:
        return self.early

    @property
    def continuous(self) -> int:
        return self.n_kept - 2 * self.early

    def zone_of_rank(self, rank: int) -> str:
        """Zone of a 1-based rank."""
        if rank <= self.early:
            return "early"
        if rank <= self.n_kept - self.early:
            return "continuous"
        if rank <= self.n_kept:
            return "late"
        return "excluded"

    def bounds(self) -> dict[str, tuple[int, int]]:
        """1-based inclusive rank ranges of each zone (an empty zone has start > end)."""
        return {
            "early": (1, self.early),
            "continuous": (self.early + 1, self.n_kept - self.early),
            "late": (self.n_kept - self.early + 1, self.n_kept),
            "excluded": (self.n_kept + 1, self.n),
        }


def zone_sizes(n: int, lambda_a: float, lambda_b: float) -> ZoneSizes:
    """E = round(lambda_a N), X = round(lambda_b N); refuse ratios whose zones overlap."""
    if n < 1:
        raise ValueError("the spectrum needs at least one example; the dataset is empty")
    early, excluded = round_half_up(lambda_a * n), round_half_up(lambda_b * n)
    if 2 * early + excluded > n or n - excluded - early < 1:
        raise ValueError(
            f"lambda_a={lambda_a}, lambda_b={lambda_b} leave no room for a window on N={n} examples "
            f"(Early={early}, Late={early}, Excluded={excluded}); lower the ratios or add data"
        )
    return ZoneSizes(n=n, early=early, excluded=excluded)


@dataclass(frozen=True)
class Spectrum:
    """Examples sorted by difficulty (ascending, ties by id) with their zones."""

    ids: tuple[str, ...]  # in rank order: ids[0] has rank 1
    difficulties: np.ndarray  # float64, ascending, aligned with ids
    sizes: ZoneSizes

    @property
    def n(self) -> int:
        return len(self.ids)

    def zone_ids(self, zone: str) -> tuple[str, ...]:
        start, end = self.sizes.bounds()[zone]
        return self.ids[start - 1 : end]

    def rows(self) -> list[dict[str, object]]:
        """One row per example in rank order: id, difficulty, rank (1-based), zone."""
        return [
            {"id": id_, "difficulty": float(d), "rank": rank, "zone": self.sizes.zone_of_rank(rank)}
            for rank, (id_, d) in enumerate(zip(self.ids, self.difficulties, strict=True), start=1)
        ]


def build_spectrum(
    ids: Sequence[str], difficulties: Sequence[float] | np.ndarray, lambda_a: float, lambda_b: float
) -> Spectrum:
    """Sort ascending by difficulty, ties broken by id, and cut the four zones."""
    ids = list(ids)
    if not all(map(str.__instancecheck__, ids)):
        ids = [str(i) for i in ids]
    values = np.asarray(difficulties, dtype=np.float64)
    if values.ndim != 1 or len(values) != len(ids):
        raise ValueError(
            f"got {len(ids)} ids but {values.size} difficulties; they must pair one to one"
        )
    bad = ~np.isfinite(values)
    if bad.any():
        named = ", ".join(ids[i] for i in np.flatnonzero(bad)[:5])
        raise ValueError(
            f"{int(bad.sum())} difficulties are NaN or infinite (ids {named}...); rescore those examples or drop them"
        )
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"example id {duplicate!r} appears more than once; ids must be unique")
    order = _sort_by_difficulty_then_id(values, ids)
    return Spectrum(
        ids=tuple(
            np.array(ids, dtype=object)[order]
        ),  # fancy indexing beats a list comprehension 5x at 1M
        difficulties=values[order],
        sizes=zone_sizes(len(ids), lambda_a, lambda_b),
    )


def _sort_by_difficulty_then_id(values: np.ndarray, ids: list[str]) -> np.ndarray:
    """Ascending difficulty, ties by id. Sorting a million strings costs more than the rest of
    the schedule together, and real losses rarely tie, so ids are compared only inside tied runs."""
    order = np.argsort(values)  # ties are ordered by id below, so no stable sort is needed
    ordered = values[order]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])
    # Each tied run [a, b] shows up as consecutive entries a..b-1 of ``tied``.
    run_breaks = np.flatnonzero(np.diff(tied) != 1) + 1
    for run in np.split(tied, run_breaks) if tied.size else []:
        first, last = int(run[0]), int(run[-1]) + 1
        order[first : last + 1] = sorted(order[first : last + 1].tolist(), key=ids.__getitem__)
    return order
