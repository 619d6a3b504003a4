"""Reciprocal rank fusion of difficulty tables (spec section 1, steps 4-5), as pure functions.

Each metric ranks the examples from easiest (rank 1) to hardest, ties kept in the original index
order; the fused score is ``s_i = sum_m 1 / (c + rank_m(i))`` with ``c = 60``; sorting ``s``
descending (ties again in index order) gives the easy-to-hard order ``pi``. Only ranks enter, so
any strictly increasing transform of a metric leaves ``pi`` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RRF_CONSTANT = 60


def easy_first_ranks(difficulties: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks, lowest difficulty first; tied values ranked in index order."""
    values = np.asarray(difficulties, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError("difficulties must be one value per example")
    if not np.isfinite(values).all():
        raise ValueError("difficulties must be finite to be ranked")
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def rrf_scores(rank_lists: Sequence[np.ndarray], constant: int = RRF_CONSTANT) -> np.ndarray:
    """``s_i = sum_m 1 / (constant + rank_m(i))`` (higher = easier)."""
    if not rank_lists:
        raise ValueError("reciprocal rank fusion needs at least one ranking")
    if constant < 0:
        raise ValueError(f"the fusion constant must be >= 0, got {constant}")
    sizes = {len(ranks) for ranks in rank_lists}
    if len(sizes) != 1:
        raise ValueError(f"the rankings cover different numbers of examples: {sorted(sizes)}")
    return np.sum([1.0 / (constant + np.asarray(r, dtype=np.float64)) for r in rank_lists], axis=0)


def easy_to_hard_order(scores: np.ndarray) -> np.ndarray:
    """Indices by fused score descending, ties in index order: the order ``pi``."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def fused_positions(
    difficulty_lists: Sequence[Sequence[float] | np.ndarray], constant: int = RRF_CONSTANT
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(1-based position of each example in ``pi``, fused scores, per-metric ranks) for
    difficulty lists over the same examples (lower = easier in each).

    The position is what a fused table records as its difficulty: ascending it is exactly
    ``pi``, it has no ties, and it is positive (a log-normal spectrum fit reads it too)."""
    ranks = [easy_first_ranks(values) for values in difficulty_lists]
    scores = rrf_scores(ranks, constant)
    positions = np.empty(len(scores), dtype=np.int64)
    positions[easy_to_hard_order(scores)] = np.arange(1, len(scores) + 1)
    return positions, scores, ranks


def fuse(
    tables: Sequence[tuple[Sequence[str], Sequence[float] | np.ndarray]],
    names: Sequence[str] | None = None,
    constant: int = RRF_CONSTANT,
) -> list[dict]:
    """Reciprocal rank fusion of finished difficulty tables, each ``(ids, difficulties)`` as
    :func:`spectrumkd.scoring.read_difficulties` returns them, over the same ids (in any
    order; the first table's order is kept, and its index order breaks ties). Rows:
    ``{"id", "difficulty" (position in pi), "rrf_score", "<name>_rank" per table}``."""
    if not tables:
        raise ValueError("fuse needs at least one difficulty table")
    names = list(names) if names is not None else [f"metric{i}" for i in range(len(tables))]
    if len(names) != len(tables) or len(set(names)) != len(names):
        raise ValueError("fuse needs one distinct name per table")
    ids = [str(i) for i in tables[0][0]]
    if len(set(ids)) != len(ids):
        raise ValueError("the first table repeats an id; each example must appear once")
    aligned = []
    for name, (table_ids, values) in zip(names, tables, strict=True):
        table_ids = [str(i) for i in table_ids]
        values = np.asarray(values, dtype=np.float64)
        if len(table_ids) != len(values):
            raise ValueError(f"table {name!r} has {len(table_ids)} ids but {len(values)} values")
        lookup = dict(zip(table_ids, values, strict=True))
        if len(lookup) != len(table_ids) or set(lookup) != set(ids):
            raise ValueError(
                f"table {name!r} does not cover exactly the ids of table {names[0]!r}; fuse "
                "tables scored on the same data"
            )
        aligned.append(np.asarray([lookup[i] for i in ids]))
    positions, scores, ranks = fused_positions(aligned, constant)
    return [
        {
            "id": example_id,
            "difficulty": int(positions[i]),
            "rrf_score": float(scores[i]),
            **{f"{name}_rank": int(r[i]) for name, r in zip(names, ranks, strict=True)},
        }
        for i, example_id in enumerate(ids)
    ]
