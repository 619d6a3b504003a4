"""DDK (siblings spec section 4) and fixed domain mixing: the weight update's invariants, the
sampler's frequencies (chi-square), and the trainer's dynamic-plan hook (updates exactly every
K steps, trained ids = the updated plan's, resume = an uninterrupted run)."""

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
from scipy import stats
from test_trainer import VOCAB, KilledTeacher, make_examples

from spectrumkd.curation import CurriculumPlan, build_strategy, strategy_spec
from spectrumkd.curation.ddk import DDK, DDKConfig, DomainMix, DomainMixConfig, ids_by_domain
from spectrumkd.curation.mixture import (
    DomainSampler,
    domain_ratios,
    initial_weights,
    perplexity,
    update_weights,
)
from spectrumkd.curation.strategies import settings_for_visit_budget
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.distillation.trainer import train
from spectrumkd.scoring import example_token_losses

ratio_lists = st.lists(st.floats(0.5, 20.0), min_size=2, max_size=6)


# --- the weight update ------------------------------------------------------------------------


def test_initial_weights_are_the_softmax_of_the_perplexity_ratios():
    student, teacher = [8.0, 3.0, 20.0], [4.0, 3.0, 5.0]
    ratios = domain_ratios(student, teacher)
    np.testing.assert_allclose(ratios, [2.0, 1.0, 4.0])
    expected = np.exp([2.0, 1.0, 4.0]) / np.exp([2.0, 1.0, 4.0]).sum()
    np.testing.assert_allclose(initial_weights(ratios), expected)


def test_one_update_by_the_formula():
    weights, ratios, a = np.array([0.5, 0.3, 0.2]), np.array([1.5, 1.0, 3.0]), 0.5
    psi = weights * np.exp(ratios)
    expected = a * psi / psi.sum() + (1 - a) / 3
    np.testing.assert_allclose(update_weights(weights, ratios, a), expected)


@settings(max_examples=60, deadline=None)
@given(ratios=ratio_lists, smoothing=st.floats(0.0, 1.0), steps=st.integers(1, 8))
def test_weights_sum_to_one_and_never_fall_under_the_floor(ratios, smoothing, steps):
    rng = np.random.default_rng(len(ratios))
    weights = initial_weights(ratios)
    floor = (1 - smoothing) / len(ratios)
    for _ in range(steps):
        moving = np.asarray(ratios) * rng.uniform(0.5, 1.5, size=len(ratios))
        weights = update_weights(weights, moving, smoothing)
        assert weights.sum() == pytest.approx(1.0)
        assert np.all(weights >= floor - 1e-12)


@settings(max_examples=40, deadline=None)
@given(ratio=st.floats(0.5, 20.0), domains=st.integers(2, 6), smoothing=st.floats(0.0, 0.99))
def test_equal_ratios_converge_geometrically_to_uniform(ratio, domains, smoothing):
    weights = np.random.default_rng(domains).dirichlet(np.ones(domains))
    for _ in range(6):
        following = update_weights(weights, [ratio] * domains, smoothing)
        np.testing.assert_allclose(
            following - 1 / domains, smoothing * (weights - 1 / domains), atol=1e-12
        )
        weights = following


def test_smoothing_zero_is_uniform_after_an_update():
    weights = update_weights([0.7, 0.2, 0.1], [5.0, 1.0, 2.0], 0.0)
    np.testing.assert_allclose(weights, [1 / 3] * 3)


def test_huge_ratios_do_not_overflow():
    weights = update_weights([0.5, 0.5], [900.0, 1.0], 0.5)
    np.testing.assert_allclose(weights, [0.75, 0.25])


def test_perplexity_is_exp_of_the_token_weighted_mean():
    assert perplexity([(6.0, 3), (2.0, 1)]) == pytest.approx(math.exp(2.0))
    with pytest.raises(ValueError, match="at least one response token"):
        perplexity([(0.0, 0)])


@pytest.mark.parametrize(
    "student, teacher, match",
    [([1.0, 2.0], [1.0], "one student and one teacher"), ([1.0, float("nan")], [1, 1], "finite")],
)
def test_bad_perplexities_are_refused_in_one_line(student, teacher, match):
    with pytest.raises(ValueError, match=match):
        domain_ratios(student, teacher)


# --- the sampler ------------------------------------------------------------------------------


def test_sampled_domain_frequencies_match_the_weights_by_chi_square():
    grouped = {"a": [f"a{i}" for i in range(7)], "b": [f"b{i}" for i in range(50)], "c": ["c0"]}
    sampler = DomainSampler(grouped, seed=3)
    weights = np.array([0.5, 0.3, 0.2])
    drawn = sampler.draw(weights, 6000)
    counts = [sum(id_.startswith(d) for id_ in drawn) for d in sampler.domains]
    assert stats.chisquare(counts, weights * len(drawn)).pvalue > 0.001


def test_within_a_domain_examples_are_read_without_replacement_and_cycle():
    grouped = {"a": [f"a{i}" for i in range(5)], "b": [f"b{i}" for i in range(3)]}
    sampler = DomainSampler(grouped, seed=0)
    drawn = [i for i in sampler.draw([0.5, 0.5], 400) if i.startswith("a")]
    for start in range(0, len(drawn) - 5, 5):  # each pass through "a" is a permutation of it
        assert sorted(drawn[start : start + 5]) == [f"a{i}" for i in range(5)]


def test_the_sampler_state_restores_the_same_stream():
    grouped = {"a": [f"a{i}" for i in range(5)], "b": [f"b{i}" for i in range(3)]}
    sampler = DomainSampler(grouped, seed=4)
    sampler.draw([0.3, 0.7], 11)
    saved = json.loads(json.dumps(sampler.state_dict()))  # as a checkpoint stores it
    expected = sampler.draw([0.6, 0.4], 25)
    restored = DomainSampler(grouped, seed=4)
    restored.load_state_dict(saved)
    assert restored.draw([0.6, 0.4], 25) == expected


# --- the strategies ---------------------------------------------------------------------------

DOMAINS = {f"ex{i:03d}": ("maths", "code", "prose")[i % 3] for i in range(24)}


def test_domain_mix_is_uniform_by_default_and_takes_fixed_weights():
    settings = DomainMixConfig(intervals=3, update_every_steps=2, examples_per_step=4)
    plan = DomainMix(settings).plan_for_domains(DOMAINS)
    assert plan.num_epochs == 3 and all(len(e.ids) == 8 for e in plan.epochs)
    assert plan.epochs[0].info["weights"] == pytest.approx(
        dict.fromkeys(("code", "maths", "prose"), 1 / 3)
    )
    assert plan.epochs[0].kd_weight == pytest.approx(0.2 / 1.2)
    weighted = DomainMix(
        DomainMixConfig(examples_per_step=4, weights={"maths": 3, "code": 1, "prose": 0})
    ).plan_for_domains(DOMAINS)
    ids = [i for e in weighted.epochs for i in e.ids]
    assert not any(DOMAINS[i] == "prose" for i in ids)
    with pytest.raises(ValueError, match="missing prose"):
        DomainMix(
            DomainMixConfig(examples_per_step=4, weights={"maths": 1, "code": 1})
        ).plan_for_domains(DOMAINS)


def test_mixtures_refuse_a_difficulty_plan_and_an_unset_step_size():
    assert strategy_spec("ddk").mixes_domains and not strategy_spec("pocl").mixes_domains
    with pytest.raises(ValueError, match="mixes domains"):
        build_strategy("ddk").plan(["a"], [1.0])
    with pytest.raises(ValueError, match="examples_per_step is unset"):
        DomainMix(DomainMixConfig()).plan_for_domains(DOMAINS)


def test_a_visit_budget_sets_the_number_of_intervals():
    settings = settings_for_visit_budget(
        "ddk", {"update_every_steps": 5, "examples_per_step": 4}, 40, 3
    )
    assert settings.intervals == 6  # 3 epochs x 40 rows = 120 visits = 6 intervals of 20


def test_ddk_refuses_a_domain_without_validation_rows():
    with pytest.raises(ValueError, match="none in prose"):
        DDK(DDKConfig(examples_per_step=4)).plan_for_domains(
            DOMAINS,
            teacher_perplexity=dict.fromkeys(("maths", "code", "prose"), 2.0),
            student_perplexity=dict.fromkeys(("maths", "code", "prose"), 4.0),
            validation={"maths": [1], "code": [1], "prose": []},
        )


# --- the trainer's dynamic-plan hook ------------------------------------------------------------

EXAMPLES = make_examples(24)
VALIDATION = {d: make_examples(4, seed=10 + i) for i, d in enumerate(("code", "maths", "prose"))}
CONFIG = TrainConfig(
    batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, seed=3, log_every=1, mixed_precision="no"
)
K = 2


@functools.cache
def teacher_model() -> torch.nn.Module:
    return build_tiny_llama(VOCAB, num_layers=2, seed=1)


def perplexities(model) -> dict[str, float]:
    return {
        d: perplexity(example_token_losses(model, rows, precision="float32"))
        for d, rows in VALIDATION.items()
    }


def ddk_plan(student, intervals: int = 4) -> CurriculumPlan:
    settings = DDKConfig(
        intervals=intervals, update_every_steps=K, examples_per_step=4, smoothing=0.5
    )
    return DDK(settings).plan_for_domains(
        DOMAINS,
        teacher_perplexity=perplexities(teacher_model()),
        student_perplexity=perplexities(student),
        validation=VALIDATION,
    )


class RecordingTeacher(LiveTeacher):
    def __init__(self, model) -> None:
        super().__init__(model)
        self.seen: list[str] = []

    def logits(self, batch):  # loss_impl full
        self.seen.extend(batch["ids"])
        return super().logits(batch)

    def hidden_states(self, batch):  # the chunked engine (loss_impl auto with a live teacher)
        self.seen.extend(batch["ids"])
        return super().hidden_states(batch)


def metric_rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_ddk_updates_exactly_every_k_steps_and_trains_on_the_updated_draws(tmp_path):
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    config = CONFIG
    plan = ddk_plan(student)
    teacher = RecordingTeacher(teacher_model())
    state = train(student, teacher, EXAMPLES, config, tmp_path, plan=plan, pad_token_id=0)
    updates = [row for row in metric_rows(tmp_path) if "plan_update" in row]
    assert [row["step"] for row in updates] == [K, 2 * K, 3 * K]
    assert [row["epoch"] for row in updates] == [2, 3, 4]
    history = state["plan_updater"]["history"]
    # Each update follows the formula from the previous weights and the measured ratios.
    weights = np.array(list(plan.metadata["mixture"]["weights"].values()))
    for entry in history:
        ratios = np.array(list(entry["ratios"].values()))
        weights = update_weights(weights, ratios, 0.5)
        np.testing.assert_allclose(list(entry["weights"].values()), weights)
        assert min(entry["weights"].values()) >= 0.5 / 3 - 1e-12
    assert state["plan_update_seconds"] > 0
    assert len(teacher.seen) == 4 * K * 4  # 4 intervals of K steps of 4 rows
    # Each interval trains on the draws of its weights: replayed with a fresh sampler.
    replay = DomainSampler(ids_by_domain(DOMAINS), seed=0)
    drawn = [replay.draw(list(plan.metadata["mixture"]["weights"].values()), K * 4)]
    drawn += [replay.draw(list(entry["weights"].values()), K * 4) for entry in history]
    assert drawn[0] == list(plan.epochs[0].ids)
    for interval, ids in enumerate(drawn):
        assert sorted(teacher.seen[interval * K * 4 : (interval + 1) * K * 4]) == sorted(ids)
    # The update rows count each interval's draws by domain.
    for row, ids in zip(updates, drawn[1:], strict=True):
        assert row["drawn"] == {d: sum(DOMAINS[i] == d for i in ids) for d in row["drawn"]}


def test_the_first_update_measures_the_student_as_trained_so_far(tmp_path):
    # A constant LR: the two runs' schedules would otherwise differ in length.
    constant = TrainConfig(**{**CONFIG.__dict__, "lr_schedule": "constant"})
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    plan = ddk_plan(student, intervals=2)
    train(student, LiveTeacher(teacher_model()), EXAMPLES, constant, tmp_path, plan=plan)
    (update,) = [row for row in metric_rows(tmp_path) if "plan_update" in row]
    # The same student trained on interval 1 alone, measured directly.
    once = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    one_interval = ddk_plan(once, intervals=2)
    short = CurriculumPlan(one_interval.strategy, one_interval.epochs[:1], one_interval.metadata)
    train(once, LiveTeacher(teacher_model()), EXAMPLES, constant, tmp_path / "one", plan=short)
    for domain, value in perplexities(once).items():
        assert update["student_perplexity"][domain] == pytest.approx(value, rel=1e-5)


def history_values(state: dict) -> list[float]:
    """Every number of the updates' history but their timings, flat, in order."""
    values = []
    for entry in state["plan_updater"]["history"]:
        values.append(entry["epoch"])
        for key in ("student_perplexity", "ratios", "weights"):
            values.extend(entry[key].values())
    return values


@pytest.mark.parametrize("die_at", [4, 6])  # mid-interval 2 (after the step-3 save); interval 3
def test_a_killed_ddk_run_resumes_to_the_uninterrupted_weights_and_draws(tmp_path, die_at):
    config = TrainConfig(**{**CONFIG.__dict__, "save_every_steps": 3})
    whole_student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    whole_teacher = RecordingTeacher(teacher_model())
    plan = ddk_plan(whole_student)
    whole = train(whole_student, whole_teacher, EXAMPLES, config, tmp_path / "whole", plan=plan)

    killed = tmp_path / "killed"
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    with pytest.raises(KeyboardInterrupt):
        teacher = KilledTeacher(teacher_model(), die_at=die_at)
        train(student, teacher, EXAMPLES, config, killed, plan=ddk_plan(student))
    resumed_student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    resumed_teacher = RecordingTeacher(teacher_model())
    plan = ddk_plan(resumed_student)
    resumed = train(resumed_student, resumed_teacher, EXAMPLES, config, killed, plan=plan)

    assert history_values(resumed) == pytest.approx(history_values(whole), rel=1e-6)
    steps_done = {4: 3, 6: 4}[die_at]  # the last checkpoint before the kill
    assert resumed_teacher.seen == whole_teacher.seen[steps_done * 4 :]
    for mine, theirs in zip(resumed_student.parameters(), whole_student.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)
    updates = [row for row in metric_rows(killed) if "plan_update" in row]
    assert [row["step"] for row in updates] == [K, 2 * K, 3 * K]  # none lost, none twice


def test_a_trainers_dataset_view_refuses_a_dynamic_plan():
    from spectrumkd.integrations import CurriculumDataset

    plan = ddk_plan(build_tiny_llama(VOCAB, num_layers=1, seed=2), intervals=2)
    with pytest.raises(ValueError, match="updated from the student during training"):
        CurriculumDataset(EXAMPLES, [e.id for e in EXAMPLES], plan)
