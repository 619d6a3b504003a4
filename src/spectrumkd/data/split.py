"""Holding out a seeded share of the examples for validation, per domain where there are any."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

Row = TypeVar("Row")


def split_validation(
    examples: Sequence[Row],
    ratio: float,
    seed: int,
    *,
    domains: Sequence[str] | None = None,
) -> tuple[list[Row], list[Row]]:
    """A seeded ``ratio`` of the examples held out (never scored, curated or trained on).

    Returns (training, held out), each in the examples' own order. The same examples, ratio
    and seed always hold out the same rows, so a resumed run validates on what it began with.

    With ``domains`` (each example's domain, in order) the split is stratified: every domain
    holds out ``max(1, round(ratio * its rows))`` of its own rows, drawn from a generator
    seeded by ``seed`` and the domain's name, so a domain's held-out rows do not depend on
    the other domains. A domain that would keep no training row is refused.
    """
    if ratio == 0:
        return list(examples), []
    if domains is None:
        order = np.random.default_rng(seed).permutation(len(examples))
        held = set(order[: max(1, round(ratio * len(examples)))].tolist())
    else:
        held = _held_per_domain(domains, len(examples), ratio, seed)
    return [e for i, e in enumerate(examples) if i not in held], [
        e for i, e in enumerate(examples) if i in held
    ]


def _held_per_domain(domains: Sequence[str], count: int, ratio: float, seed: int) -> set[int]:
    if len(domains) != count:
        raise ValueError(f"{len(domains)} domains given for {count} examples; give one each")
    rows: dict[str, list[int]] = {}
    for index, domain in enumerate(domains):
        rows.setdefault(str(domain), []).append(index)
    held: set[int] = set()
    for domain in sorted(rows):
        indices = rows[domain]
        size = max(1, round(ratio * len(indices)))
        if size >= len(indices):
            raise ValueError(
                f"domain {domain!r} has {len(indices)} row(s): its validation share "
                f"({size}) would leave none to train on; give it more rows or lower "
                "validation_ratio"
            )
        order = np.random.default_rng([seed, domain_key(domain)]).permutation(len(indices))
        held.update(indices[i] for i in order[:size].tolist())
    return held


def domain_key(domain: str) -> int:
    """A stable 63-bit number for a domain name (Python's ``hash`` changes between runs)."""
    return int.from_bytes(hashlib.sha256(domain.encode("utf-8")).digest()[:8], "big") >> 1
