"""DA-KD (siblings spec section 6): the cosine keep-ratio, the epoch selection, the BDL loss, and
the per-epoch rescoring through the trainer's dynamic-plan hook (with resume)."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ddk import RecordingTeacher, metric_rows
from test_trainer import VOCAB, KilledTeacher, make_examples

from spectrumkd.curation import build_strategy, strategy_spec
from spectrumkd.curation.dakd import (
    DAKD,
    DAKDConfig,
    difficulty_ratios,
    epoch_sizes,
    keep_ratio,
    select_epoch,
)
from spectrumkd.distillation import reference
from spectrumkd.distillation.objectives import get_objective, scaled_log_probs
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.distillation.trainer import train
from spectrumkd.scoring import example_token_losses


def test_keep_ratio_is_the_cosine_from_all_to_half_way():
    assert keep_ratio(0, 10) == 1.0
    assert keep_ratio(5, 10) == pytest.approx(0.5)
    assert keep_ratio(9, 10) == pytest.approx(math.cos(0.9 * math.pi) / 2 + 0.5)
    ratios = [keep_ratio(e, 10) for e in range(10)]
    assert ratios == sorted(ratios, reverse=True)
    assert epoch_sizes(100, 4) == [100, 85, 50, 15]


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 60),
    fraction=st.floats(0.01, 1.0),
    low_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 5),
)
def test_an_epoch_takes_its_size_from_the_high_set_and_a_low_share_from_the_rest(
    n, fraction, low_share, seed
):
    ids = [f"r{i}" for i in range(n)]
    scores = np.random.default_rng(seed).permutation(n).astype(float)
    size = max(1, round(fraction * n))
    chosen = select_epoch(ids, scores, size, low_share, np.random.default_rng(seed))
    assert len(chosen) == size == len(set(chosen))
    high = {ids[i] for i in np.argsort(-scores)[:size]}
    low = [i for i in chosen if i not in high]
    assert len(low) == min(round(low_share * size), n - size)


def test_difficulty_ratios_are_student_over_teacher_token_means():
    student = [(6.0, 3), (1.0, 1)]
    teacher = [(3.0, 3), (4.0, 2)]
    np.testing.assert_allclose(difficulty_ratios(student, teacher), [2.0, 0.5])


def test_bdl_is_zero_at_equal_distributions_and_identically_zero_at_one_half():
    generator = torch.Generator().manual_seed(0)
    p = scaled_log_probs(torch.randn(5, 11, generator=generator), 1.0)
    q = scaled_log_probs(torch.randn(5, 11, generator=generator), 1.0)
    bdl = get_objective("bdl")
    torch.testing.assert_close(bdl(p, p), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        get_objective("bdl", lam=0.5)(q, p), torch.zeros(5), atol=1e-6, rtol=0
    )
    assert torch.all(bdl(q, p) > 0)
    torch.testing.assert_close(bdl(q, p), reference.bdl(q.exp(), p.exp()), rtol=1e-5, atol=1e-6)


def test_dakd_plans_only_from_the_models():
    spec = strategy_spec("dakd")
    assert spec.planned_by_distill and not spec.mixes_domains
    with pytest.raises(ValueError, match="scores the student during training"):
        build_strategy("dakd").plan(["a"], [1.0])


# --- through the trainer --------------------------------------------------------------------

EXAMPLES = make_examples(20)
CONFIG = TrainConfig(
    batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, seed=3, log_every=1, mixed_precision="no"
)


@functools.cache
def teacher_model() -> torch.nn.Module:
    return build_tiny_llama(VOCAB, num_layers=2, seed=1)


def dakd_plan(epochs: int = 4, low_share: float = 0.25):
    losses = example_token_losses(teacher_model(), EXAMPLES, precision="float32")
    return DAKD(DAKDConfig(epochs=epochs, low_share=low_share)).plan_for_examples(EXAMPLES, losses)


class FixedProbe:
    def __init__(self, losses):
        self.losses = losses

    def token_losses(self, examples):
        return self.losses


def test_an_update_keeps_the_rows_the_student_finds_hardest_against_the_teacher():
    plan = dakd_plan(low_share=0.0)
    teacher = example_token_losses(teacher_model(), EXAMPLES, precision="float32")
    student = [(float(i + 1) * count, count) for i, (_, count) in enumerate(teacher)]
    updated, row = plan.updater.update(2, plan, FixedProbe(student))
    scores = difficulty_ratios(student, teacher)
    size = len(plan.epoch(2).ids)
    hardest = {EXAMPLES[i].id for i in np.argsort(-scores)[:size]}
    assert set(updated.epoch(2).ids) == hardest
    assert row["plan_update"] == "dakd" and row["rows"] == size


def test_dakd_trains_each_epoch_on_its_rescored_rows(tmp_path):
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    plan = dakd_plan()
    teacher = RecordingTeacher(teacher_model())
    state = train(student, teacher, EXAMPLES, CONFIG, tmp_path, plan=plan)
    updates = [row for row in metric_rows(tmp_path) if "plan_update" in row]
    assert [row["epoch"] for row in updates] == [2, 3, 4]
    sizes = plan.metadata["sizes"]
    assert sizes == epoch_sizes(20, 4) and [row["rows"] for row in updates] == sizes[1:]
    assert len(teacher.seen) == sum(sizes)
    assert sorted(teacher.seen[: sizes[0]]) == sorted(e.id for e in EXAMPLES)
    assert state["plan_updater"]["current"]["epoch"] == 4
    last = sorted(state["plan_updater"]["current"]["ids"])
    assert sorted(teacher.seen[-sizes[-1] :]) == last


@pytest.mark.parametrize("die_at", [7, 10])
def test_a_killed_dakd_run_resumes_to_the_uninterrupted_weights(tmp_path, die_at):
    config = TrainConfig(**{**CONFIG.__dict__, "save_every_steps": 4})
    whole_student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    whole_teacher = RecordingTeacher(teacher_model())
    whole = train(
        whole_student, whole_teacher, EXAMPLES, config, tmp_path / "whole", plan=dakd_plan()
    )
    killed = tmp_path / "killed"
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    with pytest.raises(KeyboardInterrupt):
        train(
            student,
            KilledTeacher(teacher_model(), die_at),
            EXAMPLES,
            config,
            killed,
            plan=dakd_plan(),
        )
    resumed_student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    resumed = train(
        resumed_student, LiveTeacher(teacher_model()), EXAMPLES, config, killed, plan=dakd_plan()
    )
    assert resumed["plan_updater"]["current"] == whole["plan_updater"]["current"]
    for mine, theirs in zip(resumed_student.parameters(), whole_student.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)
    rows = [row for row in metric_rows(killed) if "plan_update" in row]
    assert [row["epoch"] for row in rows] == [2, 3, 4]
    assert (
        json.loads((killed / "checkpoint" / "trainer_state.json").read_text())["step"]
        == whole["step"]
    )
