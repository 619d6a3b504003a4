"""Plain reference implementations of the KD objectives, for tests and benchmarks only.

Written straight from the formulas of shared/spec/losses.md over the full vocabulary, with
probabilities (softmax), explicit sums and explicit masks; it deliberately shares no code with
``objectives.py`` so that the comparison tests mean something. It materialises every
[batch, length, vocab] tensor and is neither fast nor memory-bounded.

p = teacher probabilities, q = student probabilities, both softmax(logits / tau) in float32.
An entry where a probability is 0 is left out of a sum x log(x / y) (spec: -inf logits
contribute 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kl(x: Tensor, y: Tensor) -> Tensor:
    """sum over the vocabulary of x log(x / y), leaving out entries where x or y is 0."""
    keep = (x > 0) & (y > 0)
    x_kept = torch.where(keep, x, 1.0)  # a left-out entry reads 1 * log(1 / 1) = 0
    y_kept = torch.where(keep, y, 1.0)
    return (x_kept * torch.log(x_kept / y_kept)).sum(-1)


def forward_kl(q: Tensor, p: Tensor) -> Tensor:
    return kl(p, q)


def reverse_kl(q: Tensor, p: Tensor) -> Tensor:
    return kl(q, p)


def jsd(q: Tensor, p: Tensor, beta: float = 0.5) -> Tensor:
    if beta == 0.0:  # TRL's convention for the ends: the limits of JSD/beta, JSD/(1 - beta)
        return kl(p, q)
    if beta == 1.0:
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def tvd(q: Tensor, p: Tensor) -> Tensor:
    return 0.5 * (p - q).abs().sum(-1)


def skew_kl(q: Tensor, p: Tensor, a: float = 0.1) -> Tensor:
    return kl(p, a * p + (1 - a) * q)


def skew_reverse_kl(q: Tensor, p: Tensor, a: float = 0.1) -> Tensor:
    return kl(q, (1 - a) * p + a * q)


def bdl(q: Tensor, p: Tensor, lam: float = 0.9) -> Tensor:
    return kl((1 - lam) * p + lam * q, lam * p + (1 - lam) * q)


REFERENCES = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "tvd": tvd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "bdl": bdl,
}


def reference_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    name: str,
    temperature: float = 1.0,
    **params: float,
) -> tuple[Tensor, Tensor]:
    """(sum over positions with label != -100 of D(p, q), number of such positions)."""
    q = torch.softmax(student_logits.float() / temperature, dim=-1)
    p = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    per_position = REFERENCES[name](q, p, **params)
    mask = labels != -100
    return torch.where(mask, per_position, 0.0).sum(), mask.sum()


def reference_ce(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Summed cross-entropy of the student on the labels (temperature 1), -100 ignored."""
    vocab = student_logits.shape[-1]
    return F.cross_entropy(
        student_logits.float().reshape(-1, vocab),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def reference_truncated_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    teacher_tail: Tensor,
    labels: Tensor,
    name: str,
    temperature: float = 1.0,
    **params: float,
) -> tuple[Tensor, Tensor]:
    """The objective on the (top-k, tail bucket) distributions of a truncated teacher.

    ``teacher_logits`` hold the teacher's top-k logits and -inf elsewhere, ``teacher_tail`` the
    log of sum_{v outside} exp(z_v / tau). In probabilities and float64, from the definition:
    p_v = exp(z_v / tau) / (sum_top exp(z / tau) + exp(tail)) on the top k and
    p_tail = exp(tail) / (same), q the student's full softmax, q_tail = the sum of q outside the
    top k (an explicit masked sum, not 1 - sum inside). Returns (sum over unmasked positions of
    D(p, q) on the k + 1 outcomes, number of unmasked positions).
    """
    q = torch.softmax(student_logits.double() / temperature, dim=-1)
    inside = torch.isfinite(teacher_logits)
    top = torch.where(inside, torch.exp(teacher_logits.double() / temperature), 0.0)
    tail = torch.exp(teacher_tail.double())
    norm = top.sum(-1) + tail
    p = torch.cat([top / norm[..., None], (tail / norm)[..., None]], -1)
    q_buckets = torch.cat(
        [torch.where(inside, q, 0.0), torch.where(inside, 0.0, q).sum(-1, keepdim=True)], -1
    )
    per_position = REFERENCES[name](q_buckets, p, **params)
    mask = labels != -100
    return torch.where(mask, per_position, 0.0).sum(), mask.sum()
