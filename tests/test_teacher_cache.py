"""The offline teacher cache against the live teacher: exact at k = vocabulary, exact top-k
renormalisation at any temperature, an approximation error that shrinks with k and equals
-log(top-k mass), reuse by teacher and data, kill-and-resume, and the missing-id error."""

from __future__ import annotations

import pytest
import torch
from conftest import TokenExample, build_tiny_llama, random_token_examples
from safetensors.torch import load_file

from spectrumkd.batching import collate, predicting_positions
from spectrumkd.distillation.objectives import OBJECTIVES, kd_loss
from spectrumkd.distillation.signals import LiveTeacher, TeacherSignalSource
from spectrumkd.distillation.teacher_cache import (
    CachedTeacher,
    MissingFromCacheError,
    approximation_error,
    build_teacher_cache,
)
from spectrumkd.scoring import ScoringSettings

VOCAB = 128
# float32: these tests compare the cache with the live float32 teacher to rounding (the bf16
# build is checked against float32 in tests/test_precision_paths.py)
SETTINGS = ScoringSettings(max_tokens_per_batch=128, shard_batches=2, precision="float32")


Ex = TokenExample


def make_examples(n: int, seed: int = 0, max_len: int = 40) -> list[TokenExample]:
    return random_token_examples(n, VOCAB, seed, max_len, id_format="ex{:03d}")


@pytest.fixture(scope="module")
def teacher():
    return build_tiny_llama(VOCAB, num_layers=2, seed=0)


@pytest.fixture(scope="module")
def examples():
    return make_examples(12)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("teacher-cache")


@pytest.fixture(scope="module")
def batch(examples):
    """Every example in one right-padded batch, in an order unlike the build's length buckets."""
    order = examples[::-1]
    return {**collate(order, pad_token_id=0), "ids": [e.id for e in order]}


def build(teacher, examples, root, k):
    return build_teacher_cache(teacher, examples, root, k=k, settings=SETTINGS, progress=False)


def aligned(labels: torch.Tensor) -> torch.Tensor:
    """Labels shifted so label t is the token predicted at position t (what kd_loss takes)."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)


def test_full_vocabulary_cache_is_the_live_teacher_for_every_objective(
    teacher, examples, cache_root, batch
):
    cached = CachedTeacher(build(teacher, examples, cache_root, VOCAB), VOCAB)
    assert isinstance(cached, TeacherSignalSource)
    live = LiveTeacher(teacher).logits(batch)
    from_cache = cached.logits(batch)
    predicts = predicting_positions(batch["labels"])
    assert from_cache.shape == live.shape and from_cache.dtype == torch.float32
    torch.testing.assert_close(from_cache[predicts], live[predicts], rtol=0, atol=1e-5)
    assert torch.isneginf(from_cache[~predicts]).all()  # prompt, last token and padding

    student = build_tiny_llama(VOCAB, num_layers=1, seed=1)
    with torch.no_grad():
        student_logits = student(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    labels = aligned(batch["labels"])
    for name in OBJECTIVES:
        for tau in (1.0, 2.0):
            expected, count = kd_loss(student_logits, live, labels, name, tau)
            value, cached_count = kd_loss(student_logits, from_cache, labels, name, tau)
            assert count == cached_count == predicts.sum()
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5, msg=name)

    # A narrower student vocabulary (a padded teacher): the cache is trimmed like the live logits.
    narrow = CachedTeacher(cached.cache_dir, VOCAB - 8).logits(batch)
    torch.testing.assert_close(narrow[predicts], live[predicts][:, : VOCAB - 8], rtol=0, atol=1e-5)


def test_top_k_softmax_is_the_live_top_k_renormalised_at_any_temperature(
    teacher, examples, cache_root, batch
):
    k = 16
    cached = CachedTeacher(build(teacher, examples, cache_root, k), VOCAB)
    predicts = predicting_positions(batch["labels"])
    live = LiveTeacher(teacher).logits(batch)[predicts]
    from_cache = cached.logits(batch)[predicts]
    top = live.topk(k, dim=-1).indices
    assert torch.equal(torch.isfinite(from_cache), torch.zeros_like(live).scatter(-1, top, 1) > 0)
    for tau in (1.0, 2.0):
        p = torch.softmax(live / tau, dim=-1)
        renormalised = torch.zeros_like(p).scatter(-1, top, p.gather(-1, top))
        renormalised /= renormalised.sum(-1, keepdim=True)
        torch.testing.assert_close(torch.softmax(from_cache / tau, -1), renormalised)
    # The stored log-partition is the live one, so the tau = 1 mass is known without the teacher.
    lse = torch.cat([cached.entry(e)[2] for e in batch["ids"]])
    torch.testing.assert_close(lse, torch.logsumexp(live, -1), rtol=0, atol=1e-5)


def test_approximation_error_shrinks_with_k_and_is_minus_log_top_k_mass(
    teacher, examples, cache_root, batch
):
    predicts = predicting_positions(batch["labels"])
    live = LiveTeacher(teacher).logits(batch)[predicts]
    for tau in (1.0, 2.0):
        errors = []
        for k in (4, 16, 64):
            cached = CachedTeacher(build(teacher, examples, cache_root, k), VOCAB)
            error = approximation_error(teacher, cached, examples, temperature=tau)
            mass = torch.softmax(live / tau, -1).topk(k, dim=-1).values.sum(-1)
            assert error == pytest.approx(float(-mass.log().mean()), rel=1e-4, abs=1e-6)
            errors.append(error)
        assert errors[0] > errors[1] > errors[2] > 0
    full = CachedTeacher(build(teacher, examples, cache_root, VOCAB), VOCAB)
    assert abs(approximation_error(teacher, full, examples)) < 1e-5


def test_a_second_build_reuses_the_cache_and_another_teacher_gets_its_own(
    teacher, examples, tmp_path
):
    folder = build(teacher, examples, tmp_path, 8)
    files = sorted(folder.iterdir())
    assert len([f for f in files if f.suffix == ".safetensors"]) > 1
    mtimes = {f.name: f.stat().st_mtime_ns for f in files}
    calls = []
    handle = teacher.register_forward_hook(lambda *args: calls.append(1))
    try:
        assert build(teacher, examples, tmp_path, 8) == folder
    finally:
        handle.remove()
    assert not calls
    assert {f.name: f.stat().st_mtime_ns for f in sorted(folder.iterdir())} == mtimes
    other = build(build_tiny_llama(VOCAB, num_layers=2, seed=1), examples, tmp_path, 8)
    assert other != folder and other.parent == folder.parent
    assert build(teacher, examples[:6], tmp_path, 8) not in (folder, other)


def test_a_killed_build_resumes_to_the_uninterrupted_cache(teacher, examples, tmp_path):
    settings = ScoringSettings(max_tokens_per_batch=128, shard_batches=1)
    calls = []

    def die_on_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")

    handle = teacher.register_forward_hook(die_on_second_batch)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            build_teacher_cache(teacher, examples, tmp_path / "a", k=8, settings=settings)
    finally:
        handle.remove()
    (folder,) = (tmp_path / "a").iterdir()
    assert not (folder / "index.json").exists()
    first = folder / "shard-00000.safetensors"
    assert sorted(p.name for p in folder.glob("shard-*")) == [first.name]
    mtime = first.stat().st_mtime_ns

    resumed = build_teacher_cache(teacher, examples, tmp_path / "a", k=8, settings=settings)
    assert resumed == folder and first.stat().st_mtime_ns == mtime
    straight = build_teacher_cache(teacher, examples, tmp_path / "b", k=8, settings=settings)
    assert (resumed / "index.json").read_text() == (straight / "index.json").read_text()
    shards = sorted(p.name for p in straight.glob("shard-*"))
    assert shards == sorted(p.name for p in resumed.glob("shard-*")) and len(shards) > 2
    for name in shards:
        a, b = load_file(resumed / name), load_file(straight / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)


def test_an_id_missing_from_the_cache_names_it(teacher, examples, cache_root, batch):
    cached = CachedTeacher(build(teacher, examples, cache_root, 4), VOCAB)
    with pytest.raises(MissingFromCacheError) as caught:
        cached.logits({**batch, "ids": [*batch["ids"][:-1], "not-scheduled"]})
    message = str(caught.value)
    assert "'not-scheduled'" in message and "rebuild" in message and "\n" not in message


@pytest.mark.parametrize("vocab", [VOCAB, VOCAB - 8, VOCAB + 8])
def test_logits_are_the_cached_entries_scattered_row_by_row(
    teacher, examples, cache_root, batch, vocab
):
    """The batched build equals the plain per-row scatter of each example's entries, bit for
    bit, for a student vocabulary equal to, narrower than (padded teacher) and wider than
    (padded student) the cache's."""
    cached = CachedTeacher(build(teacher, examples, cache_root, 16), vocab)
    predicts = predicting_positions(batch["labels"])
    want = torch.full((*batch["labels"].shape, max(vocab, VOCAB)), -torch.inf)
    for row, example_id in enumerate(batch["ids"]):
        values, indices, _, _ = cached.entry(example_id)
        want[row, predicts[row]] = want[row, predicts[row]].scatter(-1, indices, values)
    got = cached.logits(batch)
    assert got.shape == (*batch["labels"].shape, vocab) and got.dtype == torch.float32
    assert torch.equal(got, want[..., :vocab])


@pytest.mark.parametrize("k", [16, VOCAB])
def test_top_k_loss_equals_the_dense_cached_loss_for_every_objective(
    teacher, examples, cache_root, batch, k
):
    """topk_kd_loss on CachedTeacher.top_k gives kd_loss's value and student gradient on the
    dense logits() with tail_logsumexp(), for every objective at tau 1 and 2 (and k = V, the
    empty tail)."""
    from spectrumkd.distillation.objectives import topk_kd_loss

    cached = CachedTeacher(build(teacher, examples, cache_root, k), VOCAB)
    student = build_tiny_llama(VOCAB, num_layers=1, seed=1)
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    labels = aligned(batch["labels"])
    dense = cached.logits(batch)
    for tau in (1.0, 2.0):
        tail = cached.tail_logsumexp(batch, tau)
        values, indices, tails = cached.top_k(batch, tau)
        for name in OBJECTIVES:
            a = logits.logits.clone().requires_grad_()
            want, count = kd_loss(a, dense, labels, name, tau, tail)
            (grad_want,) = torch.autograd.grad(want, a)
            b = logits.logits.clone().requires_grad_()
            got, got_count = topk_kd_loss(b, labels, values, indices, tails, name, tau)
            (grad_got,) = torch.autograd.grad(got, b)
            assert got_count == count
            msg = f"{name} tau {tau}"
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=msg)
            torch.testing.assert_close(grad_got, grad_want, rtol=1e-5, atol=1e-6, msg=msg)
