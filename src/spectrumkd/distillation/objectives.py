"""White-box KD objectives (spec: shared/spec/losses.md) as short, pure per-token functions.

Conventions, the same for every objective:

- p is the teacher's and q the student's distribution at one position, both
  ``log_softmax(logits / tau)`` in float32. Each divergence maps log-probabilities
  ``(student_logp, teacher_logp)`` of shape [K, V] to per-token values of shape [K].
- One tau^2 convention: :func:`kd_loss` (and the chunked engine) return the *unscaled* sum of
  per-token divergences; the only tau^2 lives in :func:`combine`,
  ``(alpha * CE + (1 - alpha) * tau^2 * KD) / num_tokens``, for every objective alike (it keeps
  gradient magnitudes comparable across temperatures; the POCL code forgets it for RKL and TVD).
  CE is the student's cross-entropy on the labels at temperature 1.
- Sums, not means: callers divide by a GLOBAL count of response tokens (gradient accumulation,
  several processes), so no micro-batch is normalised twice.
- Zero probabilities (logit -inf): a term x_v log(x_v / y_v) is 0 where x_v = 0 (the limit
  0 log 0 = 0). Where y_v = 0 but x_v > 0 the true divergence is +inf; as the spec asks (and as
  DistiLLM and Liger do) that entry is left out, so values and gradients stay finite. Masking
  the same entries in both models (padded vocabulary) is therefore exact. TVD is always finite
  and needs no exception. Masking uses ``torch.where`` on the inputs, so masked entries receive
  an exact zero gradient (no 0 * inf = NaN in backward).
- Forward KL is the true KL, sum p (log p - log q). DistiLLM computes -sum p log q = KL + H(p):
  the same gradient in the student, but not 0 at p = q.
- A truncated teacher (the offline cache keeps only its top k logits) is not a teacher with
  zeros outside the top k: its leftover mass is known (``teacher_tail``) and is carried as ONE
  TAIL BUCKET that the student's leftover mass is compared with. Every objective is then computed
  on the two (k + 1)-outcome distributions (top-k entries, tail). Why a bucket and not a
  renormalisation: renormalising the teacher over its top k makes the student move all its mass
  into the top k (about 23 % of SmolLM2's mass lies outside the top 4,096 at tau 2), and leaving
  the student's outside mass out of reverse KL (the left-out rule above) makes it negative and
  pushes the student's mass OUT of the top k. On buckets every objective is a true divergence
  (>= 0, 0 only when the bucket masses agree), it equals the live value when k = V (an empty
  tail), and for these f-divergences it never exceeds the live value (data processing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from spectrumkd.batching import IGNORE_INDEX

Divergence = Callable[..., Tensor]


# --------------------------------------------------------------------------- building blocks


def _kl(log_x: Tensor, log_y: Tensor) -> Tensor:
    """sum_v x_v (log x_v - log y_v) over the last axis; entries where x_v or y_v is 0 give 0."""
    keep = torch.isfinite(log_x) & torch.isfinite(log_y)
    log_x = torch.where(keep, log_x, 0.0)
    log_y = torch.where(keep, log_y, 0.0)
    # left-out entries now read exp(0) * (0 - 0) = 0, and torch.where sends them no gradient
    return (log_x.exp() * (log_x - log_y)).sum(-1)


def _log_mix(log_x: Tensor, log_y: Tensor, w: float) -> Tensor:
    """log(w x + (1 - w) y) in log space (logsumexp); -inf where both x and y are 0."""
    if w == 1.0:
        return log_x
    if w == 0.0:
        return log_y
    both = torch.stack((log_x + math.log(w), log_y + math.log1p(-w)))
    empty = torch.isneginf(both).all(0)
    both = torch.where(empty, 0.0, both)  # logsumexp of (-inf, -inf) has a NaN gradient
    return torch.where(empty, -math.inf, torch.logsumexp(both, 0))


def _safe_logsumexp(log_x: Tensor) -> Tensor:
    """logsumexp over the last axis; -inf with a zero (not NaN) gradient where all are -inf."""
    empty = torch.isneginf(log_x).all(-1, keepdim=True)
    total = torch.logsumexp(torch.where(empty, 0.0, log_x), -1)
    return torch.where(empty.squeeze(-1), -math.inf, total)


def tail_buckets(
    student_logp: Tensor, teacher_scaled_logits: Tensor, teacher_tail: Tensor
) -> tuple[Tensor, Tensor]:
    """(student, teacher) log-probabilities over the teacher's finite entries plus one tail bucket.

    ``teacher_scaled_logits`` [K, V] are the truncated teacher's logits divided by tau (-inf
    outside its top k), ``teacher_tail`` [K] is log sum_{v outside} exp(z_v / tau), the mass the
    truncation left out, in the same units. ``student_logp`` [K, V] is the student's full
    log-softmax. Both results are [K, V + 1] and sum to 1 over the last axis: entry V is the tail
    (the teacher's leftover mass, and the student's mass on the same entries); the student's
    outside entries are -inf, so the objectives count them only through the bucket.
    """
    teacher = F.log_softmax(torch.cat([teacher_scaled_logits, teacher_tail[:, None]], -1), -1)
    inside = torch.isfinite(teacher_scaled_logits)
    student_tail = _safe_logsumexp(torch.where(inside, -math.inf, student_logp))
    student = torch.cat([torch.where(inside, student_logp, -math.inf), student_tail[:, None]], -1)
    return student, teacher


def scaled_log_probs(logits: Tensor, temperature: float) -> Tensor:
    """log_softmax(logits / tau) over the vocabulary, in float32 whatever the input dtype."""
    return F.log_softmax(logits.float() / temperature, dim=-1)


# --------------------------------------------------------------------------- the objectives


def forward_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """KL(p || q) = sum p (log p - log q) (true KL, 0 at p = q)."""
    return _kl(teacher_logp, student_logp)


def reverse_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """KL(q || p) = sum q (log q - log p)."""
    return _kl(student_logp, teacher_logp)


def jsd(student_logp: Tensor, teacher_logp: Tensor, beta: float = 0.5) -> Tensor:
    """TRL's generalized JSD: beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q.

    At beta = 0 and 1 JSD itself vanishes; as in TRL those ends are the limits of the normalised
    divergence instead, JSD/beta -> forward KL and JSD/(1 - beta) -> reverse KL.
    """
    if beta == 0.0:
        return forward_kl(student_logp, teacher_logp)
    if beta == 1.0:
        return reverse_kl(student_logp, teacher_logp)
    log_m = _log_mix(teacher_logp, student_logp, beta)
    return beta * _kl(teacher_logp, log_m) + (1.0 - beta) * _kl(student_logp, log_m)


def tvd(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """Total variation distance 1/2 sum |p - q|."""
    return 0.5 * (teacher_logp.exp() - student_logp.exp()).abs().sum(-1)


def skew_kl(student_logp: Tensor, teacher_logp: Tensor, a: float = 0.1) -> Tensor:
    """Skew KL: KL(p || a p + (1 - a) q); a = 0 is forward KL."""
    return _kl(teacher_logp, _log_mix(teacher_logp, student_logp, a))


def skew_reverse_kl(student_logp: Tensor, teacher_logp: Tensor, a: float = 0.1) -> Tensor:
    """Skew reverse KL: KL(q || (1 - a) p + a q); a = 0 is reverse KL."""
    return _kl(student_logp, _log_mix(teacher_logp, student_logp, 1.0 - a))


def bdl(student_logp: Tensor, teacher_logp: Tensor, lam: float = 0.9) -> Tensor:
    """DA-KD's bidirectional discrepancy loss: KL((1 - l) p + l q || l p + (1 - l) q), l = lam.

    Both sides mix teacher and student, so the value stays finite where either has no mass;
    it is 0 at p = q and identically 0 at lam = 0.5 (the two mixtures coincide)."""
    return _kl(
        _log_mix(teacher_logp, student_logp, 1.0 - lam), _log_mix(teacher_logp, student_logp, lam)
    )


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Objective:
    """A named per-token divergence with its parameters; call it on (student_logp, teacher_logp)."""

    name: str
    fn: Divergence
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in self.params.items():
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{self.name}: {key}={value!r} must be a number in [0, 1]")

    def __call__(self, student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
        return self.fn(student_logp, teacher_logp, **self.params)


OBJECTIVES: dict[str, Objective] = {
    "forward_kl": Objective("forward_kl", forward_kl),
    "reverse_kl": Objective("reverse_kl", reverse_kl),
    "jsd": Objective("jsd", jsd, {"beta": 0.5}),
    "tvd": Objective("tvd", tvd),
    "skew_kl": Objective("skew_kl", skew_kl, {"a": 0.1}),
    "skew_reverse_kl": Objective("skew_reverse_kl", skew_reverse_kl, {"a": 0.1}),
    "bdl": Objective("bdl", bdl, {"lam": 0.9}),  # DA-KD (siblings spec section 6)
}


def get_objective(name: str, **params: float) -> Objective:
    """The objective ``name`` with its default parameters overridden by ``params``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    base = OBJECTIVES[name]
    unknown = sorted(set(params) - set(base.params))
    if unknown:
        valid = ", ".join(base.params) or "no parameters"
        raise ValueError(f"{name} takes {valid}; got {', '.join(unknown)}")
    return Objective(name, base.fn, {**base.params, **params})


def as_objective(objective: Objective | str) -> Objective:
    return get_objective(objective) if isinstance(objective, str) else objective


def check_vocab(student_vocab: int, teacher_vocab: int) -> None:
    if student_vocab != teacher_vocab:
        raise ValueError(
            f"student vocabulary ({student_vocab}) and teacher vocabulary ({teacher_vocab}) "
            "differ; white-box KD needs one shared vocabulary"
        )


def check_temperature(temperature: float) -> None:
    if not temperature > 0 or math.isinf(temperature):
        raise ValueError(f"temperature={temperature!r} must be a positive finite number")


# --------------------------------------------------------------------------- losses


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    objective: Objective | str,
    temperature: float = 1.0,
    teacher_tail: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(sum of per-token divergences over unmasked positions, number of unmasked positions).

    ``student_logits`` and ``teacher_logits`` are [..., V] (any float dtype, computed in
    float32), ``labels`` is [...] with ``IGNORE_INDEX`` (-100) at prompt and padding positions.
    The labels must already be aligned to the logits (label t is the token predicted at
    position t: the caller has shifted them). No tau^2 and no division here: see :func:`combine`.
    Only unmasked rows are computed, so masked positions never influence value or gradient.

    ``teacher_tail`` [...] marks a truncated teacher (top-k logits, -inf elsewhere): at each
    position, log sum_{v outside the top k} exp(z_v / tau), the teacher's leftover mass at this
    temperature (see :func:`tail_buckets`; -inf for an empty tail). Without it, -inf teacher
    logits are exact zeros of the teacher's distribution.
    """
    objective = as_objective(objective)
    check_vocab(student_logits.shape[-1], teacher_logits.shape[-1])
    check_temperature(temperature)
    if student_logits.shape[:-1] != labels.shape or teacher_logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(student_logits.shape)} (student), {tuple(teacher_logits.shape)} "
            f"(teacher) do not match labels {tuple(labels.shape)} + (V,)"
        )
    if teacher_tail is not None and teacher_tail.shape != labels.shape:
        raise ValueError(
            f"teacher_tail {tuple(teacher_tail.shape)} does not match labels {tuple(labels.shape)}"
        )
    mask = labels != IGNORE_INDEX
    student_logp = scaled_log_probs(student_logits[mask], temperature)
    tail = None if teacher_tail is None else teacher_tail[mask]
    if tail is None or bool(torch.isneginf(tail).all()):
        # No truncation (k = V leaves an empty tail): the plain path, so that the cache at k = V
        # trains to the live teacher's weights bit for bit, not merely to rounding.
        teacher_logp = scaled_log_probs(teacher_logits[mask], temperature)
    else:
        scaled = teacher_logits[mask].float() / temperature
        student_logp, teacher_logp = tail_buckets(
            student_logp, scaled, tail.to(scaled.device, torch.float32)
        )
    return objective(student_logp, teacher_logp).sum(), mask.sum()


def topk_kd_loss(
    student_logits: Tensor,
    labels: Tensor,
    teacher_values: Tensor,
    teacher_indices: Tensor,
    teacher_tail: Tensor,
    objective: Objective | str,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """:func:`kd_loss` of a truncated teacher given as its top-k entries, without a dense
    [..., V] teacher tensor: the same (sum, count) as ``kd_loss`` on the teacher's logits
    scattered into ``-inf`` with ``teacher_tail``, to float rounding.

    ``teacher_values`` and ``teacher_indices`` [n, k] are the teacher's raw top-k logits and
    their vocabulary ids at the n unmasked positions of ``labels`` in row-major order (what
    ``CachedTeacher.top_k`` returns), ``teacher_tail`` [n] the tail's log-partition at this
    temperature. The objective runs over k + 1 buckets (the top k and the tail) instead of
    V + 1: the other entries are -inf on both sides of :func:`tail_buckets`, which every
    objective counts as 0, so only the student's full log-softmax and its tail remain [n, V].
    """
    objective = as_objective(objective)
    check_temperature(temperature)
    if student_logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} do not match labels "
            f"{tuple(labels.shape)} + (V,)"
        )
    mask = labels != IGNORE_INDEX
    student_logp = scaled_log_probs(student_logits[mask], temperature)
    check_topk_signal(student_logp.shape[0], teacher_values, teacher_indices, teacher_tail)
    student, teacher = topk_buckets(
        student_logp, teacher_values, teacher_indices, teacher_tail, temperature
    )
    return objective(student, teacher).sum(), mask.sum()


def check_topk_signal(rows: int, values: Tensor, indices: Tensor, tail: Tensor) -> None:
    """Refuse a truncated teacher's signal that is not one top-k row and one tail per label."""
    if values.shape != indices.shape or values.shape[0] != rows:
        raise ValueError(
            f"teacher top-k values {tuple(values.shape)} and indices "
            f"{tuple(indices.shape)} must both be [{rows}, k] (one row per label)"
        )
    if tail.shape != (rows,):
        raise ValueError(f"teacher_tail {tuple(tail.shape)} must be [{rows}]")


def topk_buckets(
    student_logp: Tensor,
    teacher_values: Tensor,
    teacher_indices: Tensor,
    teacher_tail: Tensor,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """(student, teacher) log-probabilities [n, k + 1] over a truncated teacher's top k and its
    tail bucket, from the student's full log-softmax [n, V] (at ``temperature``) and the
    teacher's raw top-k logits, their ids and tail log-partition (see :func:`topk_kd_loss`)."""
    indices = teacher_indices.to(student_logp.device, torch.long)
    inside = student_logp.gather(-1, indices)
    # the student's mass outside the teacher's top k, summed as tail_buckets sums it
    student_tail = _safe_logsumexp(student_logp.scatter(-1, indices, -math.inf))
    scaled = teacher_values.to(student_logp.device, torch.float32) / temperature
    tail = teacher_tail.to(student_logp.device, torch.float32)
    teacher = F.log_softmax(torch.cat([scaled, tail[:, None]], -1), -1)
    return torch.cat([inside, student_tail[:, None]], -1), teacher


def combine(
    ce_sum: Tensor | float,
    kd_sum: Tensor | float,
    num_tokens: Tensor | int,
    alpha: float,
    temperature: float,
) -> Tensor | float:
    """``(alpha * ce_sum + (1 - alpha) * tau^2 * kd_sum) / num_tokens`` (the one tau^2 rule).

    ``num_tokens`` should be the global count of response tokens of the optimiser step; an empty
    count gives 0 rather than NaN.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} must be in [0, 1]")
    check_temperature(temperature)
    total = alpha * ce_sum + (1.0 - alpha) * temperature**2 * kd_sum
    if isinstance(num_tokens, Tensor):
        return total / num_tokens.clamp(min=1)
    return total / max(num_tokens, 1)
