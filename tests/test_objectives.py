"""KD objectives: each against its plain full-vocabulary reference (values and gradients), the
spec's mathematical checks, masking/padding invariance, -inf and extreme logits, and the
memory-bounded chunked engine against the full-logits path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrumkd.distillation import (
    OBJECTIVES,
    TrainConfig,
    chunked_kd_loss,
    combine,
    get_objective,
    kd_loss,
)
from spectrumkd.distillation.reference import reference_ce, reference_kd_loss

NAMES = list(OBJECTIVES)
# (name, params) pairs covering defaults, other mixing weights and the beta/a ends
CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 1.0}),
    ("tvd", {}),
    ("skew_kl", {"a": 0.1}),
    ("skew_kl", {"a": 0.0}),
    ("skew_kl", {"a": 0.7}),
    ("skew_reverse_kl", {"a": 0.1}),
    ("skew_reverse_kl", {"a": 0.0}),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in p.items()) or 'default'}" for n, p in CASES]
SHAPES = [(2, 5, 7), (1, 3, 50), (3, 4, 2)]
ATOL = 1e-5


def _logits(shape, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(shape, generator=g) * scale).requires_grad_()
    teacher = torch.randn(shape, generator=g) * scale
    return student, teacher


def _labels(shape, seed, masked_share=0.3):
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    labels[torch.rand(shape[:-1], generator=g) < masked_share] = -100
    labels.view(-1)[0] = 0  # at least one unmasked position
    return labels


def _value_and_grad(fn, student):
    student.grad = None
    value, count = fn()
    (grad,) = torch.autograd.grad(value, student)
    return value.detach(), count, grad


# ------------------------------------------------------------------ against the reference


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_matches_reference(name, params, shape, tau):
    student, teacher = _logits(shape, seed=sum(shape))
    labels = _labels(shape, seed=3)
    objective = get_objective(name, **params)
    got, n_got, grad_got = _value_and_grad(
        lambda: kd_loss(student, teacher, labels, objective, tau), student
    )
    want, n_want, grad_want = _value_and_grad(
        lambda: reference_kd_loss(student, teacher, labels, name, tau, **params), student
    )
    assert n_got == n_want == (labels != -100).sum()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(grad_got, grad_want, atol=ATOL, rtol=ATOL)


# ------------------------------------------------------------------ mathematical checks


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("name", NAMES)
def test_zero_loss_for_identical_inputs(name, tau):
    student, _ = _logits((2, 6, 11), seed=5)
    labels = _labels((2, 6, 11), seed=5)
    loss, _ = kd_loss(student, student.detach().clone(), labels, name, tau)
    assert abs(loss.item()) < 1e-5
    (grad,) = torch.autograd.grad(loss, student)
    assert grad.abs().max() < 1e-5


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_non_negative_per_token(name, params, tau):
    student, teacher = _logits((4, 8, 13), seed=7, scale=4.0)
    objective = get_objective(name, **params)
    per_token = objective(
        F.log_softmax(student.detach() / tau, -1).reshape(-1, 13),
        F.log_softmax(teacher / tau, -1).reshape(-1, 13),
    )
    assert per_token.shape == (32,)
    assert (per_token >= -1e-6).all()


def _per_token(name, student_logits, teacher_logits, **params):
    objective = get_objective(name, **params)
    return objective(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1))


def test_jsd_half_is_symmetric_and_bounded_by_ln2():
    a, b = _logits((64, 30), seed=11, scale=8.0)
    a = a.detach()
    forward = _per_token("jsd", a, b, beta=0.5)
    backward = _per_token("jsd", b, a, beta=0.5)
    torch.testing.assert_close(forward, backward, atol=1e-6, rtol=1e-6)
    assert (forward <= math.log(2) + 1e-6).all()
    assert forward.max() > 0.5  # far-apart distributions come close to the bound


def test_jsd_limits_are_forward_and_reverse_kl():
    # the gap is O(beta * chi^2(p, q)) mathematically, so keep the two distributions moderate
    student, teacher = _logits((16, 20), seed=13, scale=1.0)
    student = student.detach()
    beta = 1e-4
    near_zero = _per_token("jsd", student, teacher, beta=beta) / beta
    near_one = _per_token("jsd", student, teacher, beta=1 - beta) / beta
    torch.testing.assert_close(
        near_zero, _per_token("forward_kl", student, teacher), rtol=1e-2, atol=1e-3
    )
    torch.testing.assert_close(
        near_one, _per_token("reverse_kl", student, teacher), rtol=1e-2, atol=1e-3
    )


def test_skew_with_zero_weight_is_plain_kl():
    student, teacher = _logits((16, 20), seed=17)
    student = student.detach()
    torch.testing.assert_close(
        _per_token("skew_kl", student, teacher, a=0.0), _per_token("forward_kl", student, teacher)
    )
    torch.testing.assert_close(
        _per_token("skew_reverse_kl", student, teacher, a=0.0),
        _per_token("reverse_kl", student, teacher),
    )
    # and a = 1 mixes in nothing of the other model: the divergence vanishes
    assert _per_token("skew_kl", student, teacher, a=1.0).abs().max() < 1e-6


def test_forward_kl_is_true_kl_not_distillm_cross_entropy():
    student, teacher = _logits((8, 9), seed=19)
    p_logp = F.log_softmax(teacher, -1)
    cross_entropy = -(p_logp.exp() * F.log_softmax(student.detach(), -1)).sum(-1)
    entropy = -(p_logp.exp() * p_logp).sum(-1)
    fkl = _per_token("forward_kl", student.detach(), teacher)
    torch.testing.assert_close(fkl, cross_entropy - entropy, atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 6),
    vocab=st.integers(2, 40),
    tau=st.floats(0.25, 4.0),
    scale=st.floats(0.1, 20.0),
    seed=st.integers(0, 2**16),
)
def test_property_non_negative_and_zero_at_equal(batch, length, vocab, tau, scale, seed):
    shape = (batch, length, vocab)
    student, teacher = _logits(shape, seed, scale)
    labels = _labels(shape, seed)
    for name in NAMES:
        loss, count = kd_loss(student.detach(), teacher, labels, name, tau)
        assert torch.isfinite(loss) and loss >= -1e-5 * count
        same, _ = kd_loss(teacher, teacher.clone(), labels, name, tau)
        assert abs(same.item()) <= 1e-5 * count.item()


# ------------------------------------------------------------------ masking and padding


@pytest.mark.parametrize("name", NAMES)
def test_masked_positions_and_padding_do_not_matter(name):
    shape = (2, 6, 9)
    student, teacher = _logits(shape, seed=23)
    labels = _labels(shape, seed=23)
    base, n_base, grad = _value_and_grad(
        lambda: kd_loss(student, teacher, labels, name, 2.0), student
    )
    assert (grad[labels == -100] == 0).all()

    # anything at masked positions, even NaN, changes nothing
    masked = labels == -100
    student2 = student.detach().clone()
    teacher2 = teacher.clone()
    student2[masked] = torch.randn_like(student2[masked]) * 50
    teacher2[masked] = float("nan")
    student2.requires_grad_()
    value, n, grad2 = _value_and_grad(
        lambda: kd_loss(student2, teacher2, labels, name, 2.0), student2
    )
    assert n == n_base
    torch.testing.assert_close(value, base)
    torch.testing.assert_close(grad2[~masked], grad[~masked])

    # left-padding by 3 and right-padding by 2 masked positions, with random logits there
    pad_left, pad_right = 3, 2
    padded_shape = (2, 6 + pad_left + pad_right, 9)
    student3 = torch.randn(padded_shape)
    teacher3 = torch.randn(padded_shape)
    labels3 = torch.full(padded_shape[:-1], -100)
    student3[:, pad_left : pad_left + 6] = student.detach()
    teacher3[:, pad_left : pad_left + 6] = teacher
    labels3[:, pad_left : pad_left + 6] = labels
    value3, n3 = kd_loss(student3, teacher3, labels3, name, 2.0)
    assert n3 == n_base
    torch.testing.assert_close(value3, base)


def test_sums_add_up_over_micro_batches():
    shape = (4, 5, 12)
    student, teacher = _logits(shape, seed=29)
    labels = _labels(shape, seed=29)
    whole, n_whole = kd_loss(student, teacher, labels, "jsd")
    parts = [
        kd_loss(student[i : i + 2], teacher[i : i + 2], labels[i : i + 2], "jsd") for i in (0, 2)
    ]
    torch.testing.assert_close(sum(p[0] for p in parts), whole)
    assert sum(p[1] for p in parts) == n_whole


# ------------------------------------------------------------------ -inf and extreme logits


def _hostile_logits(kind):
    shape = (2, 4, 16)
    student, teacher = _logits(shape, seed=31)
    student = student.detach()
    if kind in ("teacher_inf", "both_inf", "same_inf"):
        teacher[..., :5] = -math.inf  # e.g. a top-k teacher
    if kind in ("student_inf", "both_inf"):
        student[..., 3:8] = -math.inf
    if kind == "same_inf":  # a padded vocabulary: exact
        student[..., :5] = -math.inf
    if kind == "extreme":
        student = torch.where(student > 0, 1e4, -1e4)
        teacher = torch.where(teacher > 1, 1e4, -1e4)
    return student.requires_grad_(), teacher, _labels(shape, seed=31)


KINDS = ["teacher_inf", "student_inf", "both_inf", "same_inf", "extreme"]


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_inf_and_extreme_logits_are_finite(name, params, kind, tau):
    student, teacher, labels = _hostile_logits(kind)
    objective = get_objective(name, **params)
    value, _, grad = _value_and_grad(
        lambda: kd_loss(student, teacher, labels, objective, tau), student
    )
    assert torch.isfinite(value)
    assert torch.isfinite(grad).all()
    if kind != "extreme":  # no underflow: the reference follows the same convention exactly
        want, _, grad_want = _value_and_grad(
            lambda: reference_kd_loss(student, teacher, labels, name, tau, **params), student
        )
        torch.testing.assert_close(value, want, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(grad, grad_want, atol=ATOL, rtol=ATOL)


# ------------------------------------------------------------------ registry and combine


def test_registry_refuses_bad_names_and_params():
    with pytest.raises(ValueError, match="forward_kl, reverse_kl, jsd, tvd, skew_kl"):
        get_objective("kld")
    with pytest.raises(ValueError, match="1.5"):
        get_objective("jsd", beta=1.5)
    with pytest.raises(ValueError, match="-0.1"):
        get_objective("skew_kl", a=-0.1)
    with pytest.raises(ValueError, match="takes beta; got a"):
        get_objective("jsd", a=0.2)
    assert get_objective("jsd").params == {"beta": 0.5}
    assert get_objective("skew_reverse_kl", a=0.3).params == {"a": 0.3}


def test_vocab_mismatch_is_refused_naming_both_sizes():
    with pytest.raises(ValueError, match=r"\(7\).*\(8\)"):
        kd_loss(
            torch.zeros(1, 2, 7), torch.zeros(1, 2, 8), torch.zeros(1, 2, dtype=torch.long), "tvd"
        )
    with pytest.raises(ValueError, match=r"\(7\).*\(8\)"):
        chunked_kd_loss(
            torch.zeros(2, 3), torch.zeros(7, 3), torch.zeros(2, 4), torch.zeros(8, 4),
            torch.zeros(2, dtype=torch.long), "tvd",
        )  # fmt: skip


def test_combine_applies_one_tau_squared_and_global_count():
    assert combine(2.0, 3.0, 4, alpha=0.3, temperature=2.0) == pytest.approx(
        (0.3 * 2.0 + 0.7 * 4.0 * 3.0) / 4
    )
    empty = combine(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0), 0.5, 1.0)
    assert empty == 0  # no response token anywhere: 0, not NaN
    with pytest.raises(ValueError, match="alpha"):
        combine(1.0, 1.0, 1, alpha=1.5, temperature=1.0)


# ------------------------------------------------------------------ chunked engine


N, H, H_T, V = 29, 6, 10, 23  # distinct so that N * V matches no other tensor size


def _hidden_setup(seed=37, n=N):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.7).requires_grad_()
    t_hidden = torch.randn(n, H_T, generator=g)
    t_weight = torch.randn(V, H_T, generator=g) * 0.7
    labels = torch.randint(0, V, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = -100
    return hidden, weight, t_hidden, t_weight, labels


@pytest.mark.parametrize("chunk_size", [1, 4, 7, N, 1024])
@pytest.mark.parametrize("name", NAMES)
def test_chunked_matches_full_logits(name, chunk_size):
    hidden, weight, t_hidden, t_weight, labels = _hidden_setup()
    tau, alpha = 2.0, 0.3

    kd_full, n_full = kd_loss(hidden @ weight.T, t_hidden @ t_weight.T, labels, name, tau)
    ce_full = reference_ce(hidden @ weight.T, labels)
    loss_full = combine(ce_full, kd_full, n_full, alpha, tau)
    grads_full = torch.autograd.grad(loss_full, (hidden, weight))

    kd, ce, n = chunked_kd_loss(hidden, weight, t_hidden, t_weight, labels, name, tau, chunk_size)
    loss = combine(ce, kd, n, alpha, tau)
    grads = torch.autograd.grad(loss, (hidden, weight))

    assert n == n_full
    torch.testing.assert_close(kd, kd_full.detach(), atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(ce, ce_full.detach(), atol=ATOL, rtol=ATOL)
    for got, want in zip(grads, grads_full, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_chunked_kd_only_gradients_and_batched_shapes(tau):
    hidden, weight, t_hidden, t_weight, labels = _hidden_setup(seed=41, n=24)
    kd_full, _ = kd_loss(hidden @ weight.T, t_hidden @ t_weight.T, labels, "skew_kl", tau)
    want = torch.autograd.grad(kd_full, (hidden, weight))

    kd, ce, n = chunked_kd_loss(
        hidden.reshape(3, 8, H), weight, t_hidden.reshape(3, 8, H_T), t_weight,
        labels.reshape(3, 8), "skew_kl", tau, chunk_size=5, with_ce=False,
    )  # fmt: skip
    assert ce == 0 and not ce.requires_grad
    got = torch.autograd.grad(kd, (hidden, weight))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=ATOL)


def test_chunked_frozen_head_inference_teacher_and_no_teacher_grad():
    hidden, weight, t_hidden, t_weight, labels = _hidden_setup(seed=43)
    weight = weight.detach()  # a frozen head (LoRA)
    with torch.inference_mode():
        t_hidden_inf = t_hidden * 1.0
    t_weight.requires_grad_()
    kd, ce, n = chunked_kd_loss(hidden, weight, t_hidden_inf, t_weight, labels, "jsd", chunk_size=8)
    (kd + ce).backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    assert t_weight.grad is None
    assert (hidden.grad[labels == -100] == 0).all()
    with torch.no_grad():
        kd2, ce2, _ = chunked_kd_loss(
            hidden, weight, t_hidden, t_weight, labels, "jsd", chunk_size=8
        )
    torch.testing.assert_close(kd2, kd.detach())
    torch.testing.assert_close(ce2, ce.detach())


def _saved_tensor_sizes(fn) -> list[int]:
    sizes: list[int] = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sizes


def test_chunked_never_saves_full_logits():
    n = 64
    hidden, weight, t_hidden, t_weight, labels = _hidden_setup(seed=47, n=n)
    chunk = 8

    def full():
        kd, _ = kd_loss(hidden @ weight.T, t_hidden @ t_weight.T, labels, "forward_kl")
        return kd

    def chunked():
        return chunked_kd_loss(hidden, weight, t_hidden, t_weight, labels, "forward_kl", 1.0, chunk)

    rows = int((labels != -100).sum())  # both paths compute unmasked rows only
    # the hook sees the full path's [rows, V] logits (positive control) ...
    assert max(_saved_tensor_sizes(full)) >= rows * V
    # ... and nothing in the chunked path (including the per-chunk graphs inside its forward)
    # is larger than a chunk of logits or the saved [N, H] / [V, H] gradients
    sizes = _saved_tensor_sizes(chunked)
    assert sizes and max(sizes) <= max(2 * chunk * V, n * H, V * H) < rows * V


def test_chunked_keeps_no_autograd_history_of_its_chunks():
    # What backward keeps must be plain tensors: accumulators with autograd history would hold
    # every chunk's [chunk, V] logits gradient alive until backward (a memory leak in N x V).
    hidden, weight, t_hidden, t_weight, labels = _hidden_setup(seed=48, n=64)
    kd_sum, _, _ = chunked_kd_loss(hidden, weight, t_hidden, t_weight, labels, "forward_kl", 1.0, 8)
    saved = kd_sum.grad_fn.saved_tensors
    assert saved and all(t is None or (t.grad_fn is None and not t.requires_grad) for t in saved)


def test_chunked_ce_without_gradient_keeps_the_value_and_the_kd_gradients():
    hidden, weight, t_hidden, t_weight, labels = _hidden_setup(seed=47)
    _, ce_want, _ = chunked_kd_loss(hidden, weight, t_hidden, t_weight, labels, "jsd", 2.0, 8)
    kd_only, _, _ = chunked_kd_loss(
        hidden, weight, t_hidden, t_weight, labels, "jsd", 2.0, 8, with_ce=False
    )
    want = torch.autograd.grad(kd_only, (hidden, weight))

    kd, ce, _ = chunked_kd_loss(
        hidden, weight, t_hidden, t_weight, labels, "jsd", 2.0, 8, ce_grad=False
    )
    assert not ce.requires_grad and ce > 0
    torch.testing.assert_close(ce, ce_want.detach(), atol=0, rtol=0)
    got = torch.autograd.grad(kd, (hidden, weight))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=0, rtol=0)


class _MatmulDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the input dtypes of every matrix product dispatched while active."""

    PRODUCTS = ("aten.mm", "aten.addmm", "aten.bmm", "aten.matmul")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name.startswith(self.PRODUCTS):
            self.seen.append((name, args[-1].dtype))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("with_ce", [True, False])
def test_chunked_under_bf16_autocast_matches_float32(with_ce):
    """Under bf16 autocast every product of the engine runs in bf16 (the head-weight gradient's
    in-place addmm used to run in float32), and the loss and gradients stay within bf16
    rounding of the plain float32 full-logits path."""
    g = torch.Generator().manual_seed(53)
    n, h, h_t, v = 64, 32, 48, 257
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.2).requires_grad_()
    t_hidden, t_weight = torch.randn(n, h_t, generator=g), torch.randn(v, h_t, generator=g) * 0.2
    labels = torch.randint(0, v, (n,), generator=g)
    labels[:10] = -100
    alpha = 0.3 if with_ce else 0.0

    kd_full, count = kd_loss(hidden @ weight.T, t_hidden @ t_weight.T, labels, "forward_kl")
    ce_full = reference_ce(hidden @ weight.T, labels)
    loss_full = combine(ce_full, kd_full, count, alpha, 1.0)
    want = torch.autograd.grad(loss_full, (hidden, weight))

    recorder = _MatmulDtypes()
    with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
        kd, ce, count = chunked_kd_loss(
            hidden, weight, t_hidden, t_weight, labels, "forward_kl", 1.0, 16, ce_grad=with_ce
        )
        loss = combine(ce, kd, count, alpha, 1.0)
        got = torch.autograd.grad(loss, (hidden, weight))
    assert recorder.seen and {dtype for _, dtype in recorder.seen} == {torch.bfloat16}
    assert got[0].dtype == got[1].dtype == torch.float32
    # bf16 has 8 significant bits: the loss agrees to about 1e-2 relative, the gradients too.
    torch.testing.assert_close(kd, kd_full.detach(), rtol=2e-2, atol=0)
    torch.testing.assert_close(ce, ce_full.detach(), rtol=2e-2, atol=0)
    for g_got, g_want in zip(got, want, strict=True):
        error = (g_got - g_want).norm() / g_want.norm()
        assert error < 3e-2, error


def test_auto_chunk_size_keeps_a_chunks_float32_logits_in_a_heap_block():
    from spectrumkd.distillation.chunked import HEAP_BLOCK_BYTES, auto_chunk_size

    for vocab in (96, 32_000, 49_152, 151_936, 4_000_000):
        rows = auto_chunk_size(vocab, "cpu")
        assert rows >= 16 and rows % 16 == 0
        if rows > 16:  # the floor of 16 rows wins only for giant vocabularies
            assert rows * vocab * 4 <= HEAP_BLOCK_BYTES < (rows + 16) * vocab * 4
    assert auto_chunk_size(49_152, "cpu") == 160  # SmolLM2
    assert auto_chunk_size(49_152, "cuda") == 1024
    with pytest.raises(ValueError, match="chunk_size=-1"):
        TrainConfig(chunk_size=-1)


def _topk_setup(seed=43, n=N, k=5):
    """A truncated teacher at the unmasked rows: k distinct ids per row, their raw logits and
    the log-partition of the rest (what CachedTeacher.top_k returns)."""
    hidden, weight, _, _, labels = _hidden_setup(seed, n)
    g = torch.Generator().manual_seed(seed + 1)
    rows = int((labels != -100).sum())
    indices = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(rows)])
    values = torch.randn(rows, k, generator=g) * 2
    tail = torch.randn(rows, generator=g) - 1.0
    return hidden, weight, labels, values, indices, tail


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1024])
@pytest.mark.parametrize("name", NAMES)
def test_chunked_topk_matches_topk_kd_loss_on_full_logits(name, chunk_size):
    from spectrumkd.distillation.chunked import chunked_topk_kd_loss
    from spectrumkd.distillation.objectives import topk_kd_loss

    hidden, weight, labels, values, indices, tail = _topk_setup()
    tau, alpha = 2.0, 0.3
    # the tail at tau 2 from a tail at tau 1 would need the rest's logits: any finite value is a
    # valid truncated teacher for the comparison
    kd_full, n_full = topk_kd_loss(hidden @ weight.T, labels, values, indices, tail, name, tau)
    ce_full = reference_ce(hidden @ weight.T, labels)
    grads_full = torch.autograd.grad(
        combine(ce_full, kd_full, n_full, alpha, tau), (hidden, weight)
    )

    kd, ce, n = chunked_topk_kd_loss(
        hidden, weight, labels, values, indices, tail, name, tau, chunk_size
    )
    grads = torch.autograd.grad(combine(ce, kd, n, alpha, tau), (hidden, weight))
    assert n == n_full
    torch.testing.assert_close(kd, kd_full.detach(), atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(ce, ce_full.detach(), atol=ATOL, rtol=ATOL)
    for got, want in zip(grads, grads_full, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)


def test_chunked_topk_refuses_a_signal_of_other_rows():
    from spectrumkd.distillation.chunked import chunked_topk_kd_loss

    hidden, weight, labels, values, indices, tail = _topk_setup()
    with pytest.raises(ValueError, match="one row per label"):
        chunked_topk_kd_loss(hidden, weight, labels, values[1:], indices[1:], tail[1:], "jsd")
    with pytest.raises(ValueError, match="teacher_tail"):
        chunked_topk_kd_loss(hidden, weight, labels, values, indices, tail[1:], "jsd")
