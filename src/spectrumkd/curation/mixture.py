"""Domain mixtures: DDK's weight update (``../shared/spec/siblings.md`` section 4) and the
sampler that draws a stream of examples by domain weights.

Pure maths first: :func:`initial_weights` is ``softmax_i(l_S[i] / l_T[i])`` over the
student's and the teacher's per-domain perplexities, :func:`update_weights` the smoothed
multiplicative step ``r[i] <- a * psi[i] / sum(psi) + (1 - a) / D`` with
``psi[i] = r[i] * exp(l_S[i] / l_T[i])``. From the first update on every weight is at least
``(1 - a) / D`` and they sum to 1; with equal ratios the weights approach uniform geometrically,
``r' - 1/D = a (r - 1/D)``.

:class:`DomainSampler` draws each example's domain from the weights and, within a domain, reads
the examples without replacement in a seeded order, reshuffling when a domain is exhausted. Its
state is a handful of integers and the generator's state, so a checkpoint can hold it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def perplexity(losses: Sequence[tuple[float, int]]) -> float:
    """``exp`` of the mean token cross-entropy over (summed CE, tokens) pairs: a domain's
    perplexity over its validation set (token-weighted, as one long text)."""
    tokens = sum(count for _, count in losses)
    if tokens == 0:
        raise ValueError("a perplexity needs at least one response token")
    return math.exp(sum(total for total, _ in losses) / tokens)


def domain_ratios(student: Sequence[float], teacher: Sequence[float]) -> np.ndarray:
    """``l_S[i] / l_T[i]``: how far the student lags the teacher in each domain."""
    student, teacher = np.asarray(student, dtype=float), np.asarray(teacher, dtype=float)
    if student.shape != teacher.shape or student.ndim != 1 or student.size == 0:
        raise ValueError(
            f"need one student and one teacher perplexity per domain, got {student.size} and "
            f"{teacher.size}"
        )
    for name, values in (("student", student), ("teacher", teacher)):
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"the {name} perplexities must be finite and > 0, got {values}")
    return student / teacher


def initial_weights(ratios: Sequence[float]) -> np.ndarray:
    """``r_0 = softmax(ratios)`` (spec step 2; the floor of the updates does not apply yet)."""
    ratios = np.asarray(ratios, dtype=float)
    shifted = np.exp(ratios - ratios.max())
    return shifted / shifted.sum()


def update_weights(
    weights: Sequence[float], ratios: Sequence[float], smoothing: float
) -> np.ndarray:
    """One DDK update: ``psi = r * exp(ratios)``, ``r' = a psi / sum(psi) + (1 - a) / D``."""
    weights, ratios = np.asarray(weights, dtype=float), np.asarray(ratios, dtype=float)
    if weights.shape != ratios.shape:
        raise ValueError(f"{weights.size} weights but {ratios.size} domain ratios")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing={smoothing} must be in [0, 1]")
    # In log space: exp(ratio) overflows float64 past a ratio of about 709.
    log_psi = np.log(np.maximum(weights, np.finfo(float).tiny)) + ratios
    psi = np.exp(log_psi - log_psi.max())
    return smoothing * psi / psi.sum() + (1.0 - smoothing) / weights.size


def check_weights(weights: Mapping[str, float], domains: Sequence[str]) -> np.ndarray:
    """Fixed weights given per domain name, as a vector over ``domains`` normalised to sum 1;
    one line naming a missing, unknown or negative entry."""
    unknown = sorted(set(weights) - set(domains))
    missing = [d for d in domains if d not in weights]
    if unknown or missing:
        raise ValueError(
            f"the mixture weights must name each domain once: domains {', '.join(domains)}"
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
            + (f"; missing {', '.join(missing)}" if missing else "")
        )
    vector = np.array([float(weights[d]) for d in domains])
    if not np.all(np.isfinite(vector)) or np.any(vector < 0) or vector.sum() <= 0:
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {dict(weights)}")
    return vector / vector.sum()


class DomainSampler:
    """Draws example ids: each draw's domain from the weights, then the next unread example of
    that domain in a seeded order (a new order each time the domain is exhausted).

    Domains are kept in sorted order; ``weights`` given to :meth:`draw` follow :attr:`domains`.
    """

    def __init__(self, ids_by_domain: Mapping[str, Sequence[str]], seed: int = 0) -> None:
        empty = sorted(d for d, ids in ids_by_domain.items() if not ids)
        if not ids_by_domain or empty:
            raise ValueError(
                "every domain needs training examples"
                + (f"; none in {', '.join(empty)}" if empty else "")
            )
        self.domains: tuple[str, ...] = tuple(sorted(ids_by_domain))
        self._ids = {d: list(ids_by_domain[d]) for d in self.domains}
        self._domain_of = {id_: d for d in self.domains for id_ in self._ids[d]}
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._passes = dict.fromkeys(self.domains, 0)  # completed reads through each domain
        self._positions = dict.fromkeys(self.domains, 0)

    def _order(self, domain: str) -> list[str]:
        # A function of (seed, domain, pass): the state need not hold the permutations.
        index = self.domains.index(domain)
        rng = np.random.default_rng([self.seed, index, self._passes[domain]])
        ids = self._ids[domain]
        return [ids[i] for i in rng.permutation(len(ids))]

    def draw(self, weights: Sequence[float], count: int) -> list[str]:
        """``count`` ids, their domains drawn from ``weights`` (one per domain, summing to 1)."""
        weights = np.asarray(weights, dtype=float)
        if weights.shape != (len(self.domains),) or not np.isclose(weights.sum(), 1.0):
            raise ValueError(
                f"need {len(self.domains)} weights summing to 1 (domains "
                f"{', '.join(self.domains)}), got {weights.tolist()}"
            )
        choices = self._rng.choice(len(self.domains), size=count, p=weights / weights.sum())
        orders: dict[str, list[str]] = {}
        drawn = []
        for choice in choices.tolist():
            domain = self.domains[choice]
            if self._positions[domain] == len(self._ids[domain]):
                self._passes[domain] += 1
                self._positions[domain] = 0
                orders.pop(domain, None)
            if domain not in orders:
                orders[domain] = self._order(domain)
            drawn.append(orders[domain][self._positions[domain]])
            self._positions[domain] += 1
        return drawn

    def counts(self, ids: Sequence[str]) -> dict[str, int]:
        """How many of ``ids`` each domain holds (every domain named, zeros included)."""
        counts = dict.fromkeys(self.domains, 0)
        for id_ in ids:
            counts[self._domain_of[id_]] += 1
        return counts

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self._rng.bit_generator.state,
            "passes": dict(self._passes),
            "positions": dict(self._positions),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state["passes"]) != set(self.domains):
            raise ValueError(
                f"the saved sampler state has domains {sorted(state['passes'])}, this run "
                f"{list(self.domains)}"
            )
        self._rng.bit_generator.state = state["rng"]
        self._passes = {d: int(state["passes"][d]) for d in self.domains}
        self._positions = {d: int(state["positions"][d]) for d in self.domains}
