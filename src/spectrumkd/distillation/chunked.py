"""The memory-bounded KD engine: fused LM head + objective over chunks of tokens (Liger style).

The full-logits path holds [N, V] logits of both models plus the objective's [N, V]
intermediates saved for backward; at V = 152k and a few thousand tokens that dominates memory.
Here one ``torch.autograd.Function`` loops over chunks of the *unmasked* tokens: for each chunk
it computes both models' logits (or, for a cached teacher, reads its top k and tail bucket:
:func:`chunked_topk_kd_loss`), the per-token divergence and (optionally) the student's
cross-entropy, and the gradients of those sums w.r.t. the chunk's logits, which it immediately
folds into gradients w.r.t. ``student_hidden`` and ``student_head_weight``. Nothing of size
[N, V] outlives its chunk, and nothing of size [*, V] is kept for backward; backward only scales
the stored gradients by the incoming ``grad_output``. The teacher gets no gradient.

Memory kept for backward: float32 gradients of the student's hidden states [N, H] and head
[V, H] (each only if that input requires grad, e.g. not the head under LoRA), twice when the
cross-entropy is computed too, because KD and CE are returned as separate sums that a caller
weights only later (see ``objectives.combine``). Head biases are not supported: the heads of
Llama, Qwen and GPT-2 have none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spectrumkd.distillation.objectives import (
    IGNORE_INDEX,
    Objective,
    as_objective,
    check_temperature,
    check_topk_signal,
    check_vocab,
    scaled_log_probs,
    topk_buckets,
)

# glibc's malloc serves blocks up to 32 MiB from its heap, where a freed block is reused; a
# bigger one is mapped afresh and faulted in page by page (zeroed by the kernel) every time it
# is allocated. Chunks whose [chunk, V] float32 tensors stay under it cost far less kernel time:
# on the project's CPU, the engine's forward + backward over 1,700 tokens of a 49k vocabulary
# faulted in 1.0 M pages at 128 tokens a chunk against 2.2-2.35 M at 1,024, with 2.5 s of kernel
# time against 5.5 (benchmarks/bench_chunk_faults.py, benchmarks/README.md).
HEAP_BLOCK_BYTES = 32 * 2**20
GPU_CHUNK_SIZE = 1024


def auto_chunk_size(vocab_size: int, device: torch.device | str) -> int:
    """Tokens per chunk: on a CPU the most (a multiple of 16, at least 16) whose float32
    [chunk, vocab_size] tensors fit a heap block of glibc; on a GPU (a caching allocator, no
    page faults) 1,024."""
    if torch.device(device).type != "cpu":
        return GPU_CHUNK_SIZE
    rows = HEAP_BLOCK_BYTES // (4 * vocab_size)
    return max(16, rows // 16 * 16)


@torch.no_grad()
def _fold(grad_logits: Tensor, hidden: Tensor, weight: Tensor, acc_h, acc_w, rows) -> None:
    """Add the chunk's logits gradient, pulled back through logits = hidden @ weight.T.

    Without grad: it is called inside the chunk's ``enable_grad`` block, and autograd history
    on the accumulators would keep every chunk's [chunk, V] gradient alive until backward
    (found by benchmarks/bench_loss_memory.py)."""
    if acc_h is not None:
        acc_h[rows] = (grad_logits.to(weight.dtype) @ weight).float()
    if acc_w is None:
        return
    if torch.is_autocast_enabled(grad_logits.device.type):
        # An in-place addmm_ is outside autocast's op list and would run this [V, chunk] x
        # [chunk, H] product, the size of the head's forward, in float32; the full-logits path
        # under autocast gets this gradient from a bf16 product too. The sum stays float32.
        acc_w += grad_logits.T @ hidden
    else:
        acc_w.addmm_(grad_logits.T, hidden.float())


class _DenseTeacher:
    """A chunk's KD sum against a live teacher: its logits from its hidden states and head."""

    def __init__(self, hidden: Tensor, weight: Tensor, objective: Objective, temperature: float):
        self.hidden, self.weight = hidden, weight
        self.objective, self.temperature = objective, temperature

    def __call__(self, logits: Tensor, chunk: Tensor, start: int) -> Tensor:
        with torch.no_grad():  # called where grad is on, for the student's logits: not ours
            teacher_logp = scaled_log_probs(self.hidden[chunk] @ self.weight.T, self.temperature)
        return self.objective(scaled_log_probs(logits, self.temperature), teacher_logp).sum()


class _TopKTeacher:
    """A chunk's KD sum against a truncated (cached) teacher: its top k and tail bucket, given
    in the order of the unmasked rows, so a chunk is the slice of rows it starts at."""

    def __init__(self, values, indices, tail, objective: Objective, temperature: float):
        self.values, self.indices, self.tail = values, indices, tail
        self.objective, self.temperature = objective, temperature

    def __call__(self, logits: Tensor, chunk: Tensor, start: int) -> Tensor:
        part = slice(start, start + chunk.numel())
        student, teacher = topk_buckets(
            scaled_log_probs(logits, self.temperature),
            self.values[part],
            self.indices[part],
            self.tail[part],
            self.temperature,
        )
        return self.objective(student, teacher).sum()


class _ChunkedKD(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        student_hidden: Tensor,
        student_weight: Tensor,
        labels: Tensor,
        teacher_chunk,
        chunk_size: int,
        with_ce: bool,
        ce_grad: bool,
        need_h: bool,
        need_w: bool,
    ):
        """``teacher_chunk(logits, chunk, start)``: the KD sum of a chunk's rows (positions
        ``chunk``, the ``start``-th unmasked row first) from the student's float32 logits."""
        device = student_hidden.device
        rows = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
        student_weight_c = _autocast_weight(student_weight)

        def zeros(like: Tensor, needed: bool) -> Tensor | None:
            return torch.zeros(like.shape, dtype=torch.float32, device=device) if needed else None

        kd_h, kd_w = zeros(student_hidden, need_h), zeros(student_weight, need_w)
        ce_h, ce_w = (
            zeros(student_hidden, need_h and with_ce and ce_grad),
            zeros(student_weight, need_w and with_ce and ce_grad),
        )
        kd_sum = torch.zeros((), dtype=torch.float32, device=device)
        ce_sum = torch.zeros((), dtype=torch.float32, device=device)

        for start in range(0, rows.numel(), chunk_size):
            chunk = rows[start : start + chunk_size]
            hidden = student_hidden[chunk]
            logits = (hidden @ student_weight_c.T).float()
            with torch.enable_grad():
                logits.requires_grad_(need_h or need_w)
                kd = teacher_chunk(logits, chunk, start)
                ce = F.cross_entropy(logits, labels[chunk], reduction="sum") if with_ce else None
                if need_h or need_w:
                    (grad,) = torch.autograd.grad(kd, logits)
                    _fold(grad, hidden, student_weight_c, kd_h, kd_w, chunk)
                    if ce is not None and ce_grad:
                        (grad,) = torch.autograd.grad(ce, logits)
                        _fold(grad, hidden, student_weight_c, ce_h, ce_w, chunk)
            kd_sum += kd.detach()
            if ce is not None:
                ce_sum += ce.detach()

        num_tokens = torch.tensor(rows.numel(), device=device)
        ctx.save_for_backward(kd_h, kd_w, ce_h, ce_w)
        ctx.dtypes = (student_hidden.dtype, student_weight.dtype)
        ctx.mark_non_differentiable(num_tokens)
        if not (with_ce and ce_grad):
            ctx.mark_non_differentiable(ce_sum)
        return kd_sum, ce_sum, num_tokens

    @staticmethod
    def backward(ctx, grad_kd: Tensor, grad_ce: Tensor, _grad_num_tokens: Tensor):
        kd_h, kd_w, ce_h, ce_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes

        def scaled(kd_part: Tensor | None, ce_part: Tensor | None, dtype) -> Tensor | None:
            if kd_part is None:
                return None
            total = grad_kd * kd_part
            if ce_part is not None:
                total = total + grad_ce * ce_part
            return total.to(dtype)

        return (
            scaled(kd_h, ce_h, h_dtype),
            scaled(kd_w, ce_w, w_dtype),
            *([None] * 7),
        )


def chunked_kd_loss(
    student_hidden: Tensor,
    student_head_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_head_weight: Tensor,
    labels: Tensor,
    objective: Objective | str,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_ce: bool = True,
    ce_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """(kd_sum, ce_sum, num_tokens) without materialising [N, V] logits; see the module doc.

    ``student_hidden`` [..., H] and ``teacher_hidden`` [..., H_t] are the final hidden states
    (after the last norm), ``student_head_weight`` [V, H] and ``teacher_head_weight`` [V, H_t]
    the LM heads (no bias), ``labels`` [...] aligned to the positions (already shifted) with
    -100 masked. Values and gradients equal ``kd_loss`` on ``hidden @ weight.T``; ``ce_sum`` is
    the student's summed cross-entropy at temperature 1 (0, without gradient, if not
    ``with_ce``). ``ce_grad=False`` still returns ``ce_sum`` but without gradient, for a caller
    that only logs it (alpha 0): that skips the CE's two [chunk, V] x [V, H] products per chunk.
    At most ``chunk_size`` tokens' logits exist at a time.

    Under autocast (bf16, fp16) the chunk's products run in that dtype, as the full-logits path's
    do; the log-softmax, the objective and the gradient sums stay float32.
    """
    objective = as_objective(objective)
    check_vocab(student_head_weight.shape[0], teacher_head_weight.shape[0])
    check_temperature(temperature)
    _check_student(student_hidden, student_head_weight, labels, chunk_size)
    if teacher_hidden.shape[-1] != teacher_head_weight.shape[1]:
        raise ValueError(
            f"teacher hidden size {teacher_hidden.shape[-1]} != head input size "
            f"{teacher_head_weight.shape[1]}"
        )
    if teacher_hidden.shape[:-1] != labels.shape:
        raise ValueError(
            f"teacher hidden states {tuple(teacher_hidden.shape)} do not match labels "
            f"{tuple(labels.shape)}"
        )
    teacher = _DenseTeacher(
        teacher_hidden.reshape(-1, teacher_hidden.shape[-1]),
        _autocast_weight(teacher_head_weight),
        objective,
        float(temperature),
    )
    return _apply(
        student_hidden, student_head_weight, labels, teacher, chunk_size, with_ce, ce_grad
    )


def chunked_topk_kd_loss(
    student_hidden: Tensor,
    student_head_weight: Tensor,
    labels: Tensor,
    teacher_values: Tensor,
    teacher_indices: Tensor,
    teacher_tail: Tensor,
    objective: Objective | str,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_ce: bool = True,
    ce_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`chunked_kd_loss` against a truncated (cached) teacher: (kd_sum, ce_sum,
    num_tokens) equal to :func:`~spectrumkd.distillation.objectives.topk_kd_loss` on
    ``hidden @ weight.T`` (values and gradients), without the student's [N, V] logits.

    ``teacher_values`` and ``teacher_indices`` [n, k] and ``teacher_tail`` [n] are what
    ``CachedTeacher.top_k`` returns: one row per unmasked position of ``labels``, row-major."""
    objective = as_objective(objective)
    check_temperature(temperature)
    _check_student(student_hidden, student_head_weight, labels, chunk_size)
    rows = int((labels != IGNORE_INDEX).sum())
    check_topk_signal(rows, teacher_values, teacher_indices, teacher_tail)
    device = student_hidden.device
    teacher = _TopKTeacher(
        teacher_values.to(device),
        teacher_indices.to(device, torch.long),
        teacher_tail.to(device),
        objective,
        float(temperature),
    )
    return _apply(
        student_hidden, student_head_weight, labels, teacher, chunk_size, with_ce, ce_grad
    )


def _check_student(hidden: Tensor, weight: Tensor, labels: Tensor, chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be >= 1")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"student hidden size {hidden.shape[-1]} != head input size {weight.shape[1]}"
        )
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(
            f"student hidden states {tuple(hidden.shape)} do not match labels {tuple(labels.shape)}"
        )


def _autocast_weight(weight: Tensor) -> Tensor:
    """A frozen head in the autocast dtype, cast once: under autocast each chunk's product would
    cast it again (autocast caches no cast inside a Function's forward, where grad is off), a
    fresh [V, H] allocation three or four times a chunk. Autocast's casts are plain .to(dtype)
    roundings, so the products are the same bits."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return weight.detach().to(torch.get_autocast_dtype(device))
    return weight


def _apply(hidden, weight, labels, teacher, chunk_size, with_ce, ce_grad):
    grad_on = torch.is_grad_enabled()
    return _ChunkedKD.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        labels.reshape(-1),
        teacher,
        int(chunk_size),
        bool(with_ce),
        bool(ce_grad),
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
    )
