"""Mixed precision on the toolkit's forward paths against the plain float32 path: the teacher
cache, a training step, the trainer's Accelerator and its live teacher, the CLI's choices.

Tolerances are stated where bf16 is compared with float32; the float32 path must be exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import build_tiny_llama, random_token_examples
from test_trainer import VOCAB, KilledTeacher, make_examples

from spectrumkd.distillation.objectives import get_objective
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.steps import accumulate_gradients, collate_with_ids, step_losses
from spectrumkd.distillation.teacher_cache import build_teacher_cache, teacher_cache_dir
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.distillation.trainer import train
from spectrumkd.models.precision import PRECISIONS, has_fast_bf16
from spectrumkd.scoring import ScoringSettings


class AutocastProbe:
    """Records, at each forward of a module, whether CPU autocast is on and in which dtype."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seen: set[tuple[bool, torch.dtype]] = set()
        self._handle = module.register_forward_pre_hook(self._record)

    def _record(self, module, args) -> None:
        self.seen.add((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed precision per process: the tests that build their own start
    and leave it empty, so no other test inherits their bf16."""
    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_teacher_cache_precision_has_its_own_folder_and_close_values(tmp_path):
    teacher = build_tiny_llama(128, num_layers=2, seed=1)
    examples = random_token_examples(12, 128, seed=4)
    probe = AutocastProbe(teacher)
    try:
        exact = build_teacher_cache(
            teacher, examples, tmp_path, k=8, settings=ScoringSettings(precision="float32")
        )
        assert {enabled for enabled, _ in probe.seen} == {False}
        probe.seen.clear()
        mixed = build_teacher_cache(
            teacher, examples, tmp_path, k=8, settings=ScoringSettings(precision="bf16")
        )
        assert probe.seen == {(True, torch.bfloat16)}
    finally:
        probe.remove()
    # float32 keeps the folder name of the caches built before mixed precision existed.
    assert exact == teacher_cache_dir(teacher, examples, tmp_path, 8, precision="float32")
    assert exact.name.endswith("-k8")
    assert mixed == teacher_cache_dir(teacher, examples, tmp_path, 8, precision="bf16")
    assert mixed.name == exact.name + "-bf16"
    assert teacher_cache_dir(teacher, examples, tmp_path, 8) == (
        mixed if has_fast_bf16("cpu") else exact
    )
    exact_index = json.loads((exact / "index.json").read_text())
    mixed_index = json.loads((mixed / "index.json").read_text())
    assert "precision" not in exact_index["settings"]
    assert mixed_index["settings"]["precision"] == "bf16"

    from safetensors.torch import load_file

    a = load_file(exact / exact_index["shards"][0])
    b = load_file(mixed / mixed_index["shards"][0])
    assert a["values"].dtype == b["values"].dtype == torch.float32
    # Stated tolerance: 0.05 on raw logits of order 1 and on their log-partition (bf16 keeps 8
    # bits of mantissa in the matmuls; top-k, logsumexp and tail are float32 in both).
    torch.testing.assert_close(b["logsumexp"], a["logsumexp"], rtol=0, atol=0.05)
    assert (b["logsumexp"] - a["logsumexp"]).abs().max() > 0  # the bf16 forward ran
    top1_exact, top1_mixed = a["values"][:, 0], b["values"][:, 0]
    torch.testing.assert_close(top1_mixed, top1_exact, rtol=0, atol=0.05)


def _step(student, teacher, batch, precision: str):
    objective = get_objective("forward_kl")
    student.zero_grad(set_to_none=True)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else None
    with context if context is not None else torch.autocast("cpu", enabled=False):
        ce, kd = step_losses(student, teacher, batch, objective, 2.0)
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    ((0.3 * ce + 0.7 * 4.0 * kd) / tokens).backward()
    grads = [p.grad.detach().clone() for p in student.parameters() if p.grad is not None]
    return ce.item() / tokens, kd.item() / tokens, grads


def test_a_bf16_autocast_step_is_close_to_the_float32_step():
    examples = make_examples(8)
    teacher_model = build_tiny_llama(VOCAB, num_layers=2, seed=1)
    teacher = LiveTeacher(teacher_model)
    student = build_tiny_llama(VOCAB, num_layers=2, seed=2)
    batch = collate_with_ids(examples, 0)
    ce32, kd32, grads32 = _step(student, teacher, batch, "float32")
    probe = AutocastProbe(teacher_model)
    try:
        ce16, kd16, grads16 = _step(student, teacher, batch, "bf16")
        assert probe.seen == {(True, torch.bfloat16)}  # the live teacher's forward too
    finally:
        probe.remove()
    # Stated tolerance: 1 % of the per-token CE (about 4.6 nats here) and of the KD, and 5 % of
    # the gradient's norm for the whole gradient (bf16 matmuls, float32 losses and weights).
    assert ce16 == pytest.approx(ce32, rel=0.01)
    assert kd16 == pytest.approx(kd32, rel=0.01)
    assert (ce16, kd16) != (ce32, kd32)  # the bf16 forward ran
    flat32 = torch.cat([g.flatten() for g in grads32])
    flat16 = torch.cat([g.flatten() for g in grads16])
    assert (flat16 - flat32).norm() <= 0.05 * flat32.norm()
    assert torch.nn.functional.cosine_similarity(flat16, flat32, dim=0) > 0.998


def test_accumulate_gradients_without_mixed_precision_is_the_plain_float32_step(
    fresh_accelerate_state,
):
    examples = make_examples(8)
    teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    batch = collate_with_ids(examples, 0)
    plain = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    ce, kd, grads = _step(plain, teacher, batch, "float32")
    accelerated = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    ce_sum, kd_sum, _ = accumulate_gradients(
        accelerator, accelerated, teacher, [batch], get_objective("forward_kl"), 0.3, 2.0
    )
    assert (ce_sum / tokens, kd_sum / tokens) == (ce, kd)
    mine = [p.grad for p in accelerated.parameters() if p.grad is not None]
    for a, b in zip(mine, grads, strict=True):
        assert torch.equal(a, b)


def test_the_trainer_builds_its_accelerator_in_the_configured_precision_and_autocasts_the_teacher(
    tmp_path, fresh_accelerate_state
):
    examples = make_examples(8)
    teacher_model = build_tiny_llama(VOCAB, num_layers=2, seed=1)
    teacher = LiveTeacher(teacher_model)
    probe = AutocastProbe(teacher_model)
    during = []

    def validator(model):
        during.append(AcceleratorState().mixed_precision)
        return {}

    try:
        # float32 first, then bf16 in the same process: the trainer restarts accelerate's
        # precision instead of failing on it.
        for precision, expected in (("no", {False}), ("bf16", {True})):
            probe.seen.clear()
            student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
            config = TrainConfig(epochs=1, batch_size=4, mixed_precision=precision)
            train(
                student,
                teacher,
                examples[:6],
                config,
                tmp_path / precision,
                validation=examples[6:],
                validators=[validator],
            )
            # Training steps and the validation pass alike (bf16: autocast on everywhere).
            assert {enabled for enabled, _ in probe.seen} == expected
            # Afterwards accelerate's state is as it was (empty) and the student's forward is
            # its own again, without the run's autocast.
            assert not AcceleratorState._shared_state
            student_probe = AutocastProbe(student)
            with torch.no_grad():
                student(input_ids=torch.tensor([[3, 4, 5]]))
            student_probe.remove()
            assert {enabled for enabled, _ in student_probe.seen} == {False}
    finally:
        probe.remove()
    assert during == ["no", "bf16"]
    rows = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").open()]
    assert np.isfinite(rows[-1]["val_ce"]) and np.isfinite(rows[-1]["val_kd"])


def test_a_run_that_fails_leaves_the_callers_student_without_the_runs_autocast(
    tmp_path, fresh_accelerate_state
):
    """The unwrap of the student's forward must not depend on the run finishing: a run killed
    mid-epoch (here by its teacher) hands the model back as plain as a run that ends."""
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    teacher = KilledTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1), die_at=2)
    config = TrainConfig(epochs=1, batch_size=4, mixed_precision="bf16")
    with pytest.raises(KeyboardInterrupt):
        train(student, teacher, make_examples(8), config, tmp_path)
    # Probed inside the forward: the model's own pre-hook runs before a wrapped forward starts.
    inner_probe = AutocastProbe(student.model)
    with torch.no_grad():
        student(input_ids=torch.tensor([[3, 4, 5]]))
    inner_probe.remove()
    assert {enabled for enabled, _ in inner_probe.seen} == {False}


def test_mixed_precision_defaults_to_auto_and_refuses_unknown_values(
    tmp_path, fresh_accelerate_state
):
    assert TrainConfig().mixed_precision == "auto"
    with pytest.raises(ValueError, match="mixed_precision='fp8' is not one of auto, no, bf16"):
        TrainConfig(mixed_precision="fp8")
    from spectrumkd.distillation.trainer import build_accelerator

    accelerator = build_accelerator(TrainConfig(), tmp_path)
    assert accelerator.mixed_precision == ("bf16" if has_fast_bf16("cpu") else "no")


def test_the_cli_offers_the_precisions_of_the_library():
    from spectrumkd import cli

    assert cli.PRECISIONS == PRECISIONS
    score = cli.build_parser().parse_args(
        ["score", "--out", "x", "--data", "d", "--precision", "float32"]
    )
    assert score.precision == "float32"
    assert cli.build_parser().parse_args(["score", "--out", "x", "--data", "d"]).precision == "auto"


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_a_teacher_held_in_bf16_gives_autocasts_step_bit_for_bit(chunk_size):
    """The trainer holds a live teacher's Linear weights in bf16 for a bf16 run
    (``frozen_teacher_weights``): the step's losses and gradients must be autocast's own, for
    the full logits and the chunked engine (which takes the teacher's head weight)."""
    from spectrumkd.models.precision import weights_held_in

    examples = make_examples(8)
    teacher_model = build_tiny_llama(VOCAB, num_layers=2, seed=1)
    teacher = LiveTeacher(teacher_model)
    batch = collate_with_ids(examples, 0)
    objective = get_objective("forward_kl")
    results = []
    for held in (False, True):
        student = build_tiny_llama(VOCAB, num_layers=2, seed=2)
        with (
            weights_held_in(torch.bfloat16 if held else None, teacher_model),
            torch.autocast("cpu", dtype=torch.bfloat16),
        ):
            if held:
                assert teacher_model.lm_head.weight.dtype == torch.bfloat16
            ce, kd = step_losses(student, teacher, batch, objective, 2.0, chunk_size=chunk_size)
        (0.3 * ce + 0.7 * kd).backward()
        results.append((ce.item(), kd.item(), [p.grad.clone() for p in student.parameters()]))
    (ce_a, kd_a, grads_a), (ce_b, kd_b, grads_b) = results
    assert (ce_a, kd_a) == (ce_b, kd_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    assert all(p.dtype == torch.float32 for p in teacher_model.parameters())  # put back


def test_a_bf16_run_holds_its_live_teacher_in_bf16_and_gives_it_back(
    tmp_path, fresh_accelerate_state
):
    examples = make_examples(8)
    teacher_model = build_tiny_llama(VOCAB, num_layers=2, seed=1)
    before = {name: p for name, p in teacher_model.named_parameters()}
    seen = []
    hook = teacher_model.lm_head.register_forward_pre_hook(
        lambda module, args: seen.append(module.weight.dtype)
    )
    try:
        for precision in ("no", "bf16"):
            seen.clear()
            train(
                build_tiny_llama(VOCAB, num_layers=1, seed=2),
                LiveTeacher(teacher_model),
                examples[:6],
                TrainConfig(epochs=1, batch_size=4, mixed_precision=precision),
                tmp_path / precision,
                validation=examples[6:],
            )
            expected = torch.float32 if precision == "no" else torch.bfloat16
            assert seen and set(seen) == {expected}  # steps and validation alike
    finally:
        hook.remove()
    assert {name: p for name, p in teacher_model.named_parameters()} == before  # same objects
    assert all(p.dtype == torch.float32 for p in teacher_model.parameters())
