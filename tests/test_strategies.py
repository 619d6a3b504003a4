"""The staged curricula (spec ``siblings.md`` sections 1, 2, 3, 5): POCL, SRD, Baby Step and
One-Pass, checked against brute-force references (a sort by (difficulty, input index), stage
sizes from the spec's formulas, visits counted epoch by epoch) and with ``hypothesis``."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from spectrumkd.curation import (
    POCL,
    SRD,
    STRATEGIES,
    BabyStep,
    ClassicCurriculumConfig,
    OnePass,
    POCLConfig,
    SpectrumKDConfig,
    SRDConfig,
    Stage,
    build_strategy,
    covered_ranks,
    easy_to_hard,
    epochs_per_stage_for_budget,
    equal_buckets,
    linear_ramp,
    replan_from_stage,
    settings_for_visit_budget,
    strategy_names,
    strategy_settings,
)

STAGED = ("pocl", "srd", "baby_step", "one_pass")

# Difficulties from a small grid, so ties are common and the stable order is really exercised.
tied_difficulties = st.lists(st.integers(0, 6).map(float), min_size=1, max_size=150)
any_difficulties = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=150
)


def ids_for(n: int) -> list[str]:
    return [f"ex{i:04d}" for i in range(n)]


def reference_order(difficulties: list[float]) -> list[str]:
    """Brute force: sort the indices by (difficulty, input position)."""
    ids = ids_for(len(difficulties))
    return [ids[i] for i in sorted(range(len(ids)), key=lambda i: (difficulties[i], i))]


def stage_ids(plan, stage: int) -> list[list[str]]:
    return [list(e.ids) for e in plan.stage_epochs(stage)]


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------- the order and its buckets


@settings(max_examples=300, deadline=None)
@given(tied_difficulties)
def test_easy_to_hard_is_a_stable_sort(difficulties):
    assert easy_to_hard(ids_for(len(difficulties)), difficulties) == reference_order(difficulties)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 500), st.integers(1, 40))
def test_equal_buckets_floor_sizes_remainder_last(n, k):
    assume(k <= n)
    sizes = equal_buckets(n, k)
    assert len(sizes) == k and sum(sizes) == n
    assert sizes[:-1] == [n // k] * (k - 1)
    assert sizes[-1] == n - (k - 1) * (n // k)


@pytest.mark.parametrize(
    ("n", "k", "named"),
    [(5, 0, "buckets 0"), (5, 6, "6 buckets of 5"), (0, 1, "0 examples"), (5, 2.0, "2.0")],
)
def test_equal_buckets_refuses_impossible_cuts(n, k, named):
    with pytest.raises(ValueError) as excinfo:
        equal_buckets(n, k)
    assert named in one_line_error(excinfo)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_difficulty_is_refused_naming_the_first_bad_id(bad):
    difficulties = [0.1, bad, 0.3, bad]
    with pytest.raises(ValueError) as excinfo:
        POCL().plan(ids_for(4), difficulties)
    message = one_line_error(excinfo)
    assert "'ex0001'" in message and "2 NaN or infinite" in message


@pytest.mark.parametrize(
    ("ids", "difficulties", "named"),
    [
        (["a", "b"], [0.1], "2 ids but 1 difficulties"),
        ([], [], "at least one example"),
        (["a", "b", "a"], [0.1, 0.2, 0.3], "'a' appears more than once"),
    ],
)
def test_bad_tables_are_refused_in_one_line(ids, difficulties, named):
    for name in STAGED:
        with pytest.raises(ValueError) as excinfo:
            build_strategy(name, {"num_stages": 1} if name in ("pocl", "srd") else {}).plan(
                ids, difficulties
            )
        assert named in one_line_error(excinfo)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(STAGED),
    st.lists(st.integers(0, 50).map(float), min_size=4, max_size=80),
    st.sampled_from([math.exp, lambda x: 3 * x - 7, lambda x: x**3, math.atan]),
)
def test_a_strictly_increasing_transform_of_difficulty_changes_no_id_of_the_plan(
    name, difficulties, transform
):
    ids = ids_for(len(difficulties))
    strategy = build_strategy(name, {"epochs_per_stage": 1})
    plan = strategy.plan(ids, difficulties)
    transformed = strategy.plan(ids, [transform(d) for d in difficulties])
    assert [list(e.ids) for e in transformed.epochs] == [list(e.ids) for e in plan.epochs]


def test_spec_fusion_example_gives_the_order_0_3_2_1():
    """Spec section 1: ROUGE (.9, .1, .5, .5), CE (1, 3, 2, .5) -> pi = [0, 3, 2, 1]. The fused
    score is computed here directly; the strategy ranks by its negation (lower = easier)."""
    rouge, ce = [0.9, 0.1, 0.5, 0.5], [1.0, 3.0, 2.0, 0.5]
    rouge_rank = {i: r for r, i in enumerate(sorted(range(4), key=lambda i: (-rouge[i], i)), 1)}
    ce_rank = {i: r for r, i in enumerate(sorted(range(4), key=lambda i: (ce[i], i)), 1)}
    fused = [1 / (60 + rouge_rank[i]) + 1 / (60 + ce_rank[i]) for i in range(4)]
    plan = POCL(POCLConfig(num_stages=4, epochs_per_stage=1)).plan(
        ["0", "1", "2", "3"], [-s for s in fused]
    )
    assert plan.metadata["order"] == ["0", "3", "2", "1"]
    assert [list(e.ids) for e in plan.epochs] == [["0"], ["0", "3"], ["0", "3", "2"], list("0321")]


# ---------------------------------------------------------------- POCL


@settings(max_examples=200, deadline=None)
@given(tied_difficulties, st.integers(1, 8), st.integers(1, 4))
def test_pocl_stages_are_nested_prefixes_of_exact_sizes(difficulties, k, p):
    n = len(difficulties)
    assume(k <= n)
    plan = POCL(POCLConfig(num_stages=k, epochs_per_stage=p)).plan(ids_for(n), difficulties)
    order = reference_order(difficulties)
    expected_sizes = [(j + 1) * (n // k) for j in range(k - 1)] + [n]
    assert plan.num_stages == k and plan.num_epochs == k * p
    for stage, size in enumerate(expected_sizes, start=1):
        assert stage_ids(plan, stage) == [order[:size]] * p
    assert [e.restart for e in plan.epochs] == [
        epoch > 1 and (epoch - 1) % p == 0 for epoch in range(1, k * p + 1)
    ]
    assert [e.stage for e in plan.epochs] == [1 + (epoch - 1) // p for epoch in range(1, k * p + 1)]


def test_pocl_defaults_temperatures_kd_weights_and_visits_1_2_3_4():
    n = 40
    plan = POCL().plan(ids_for(n), [float((7 * i) % 13) for i in range(n)])
    per_stage = [plan.stage_epochs(s) for s in range(1, 5)]
    assert [e.temperature for s in per_stage for e in s] == pytest.approx(
        [t for t in (1.0, 4 / 3, 5 / 3, 2.0) for _ in range(8)]
    )
    assert [e.kd_weight for s in per_stage for e in s] == pytest.approx(
        [w for w in (0.7, 0.8, 0.9, 1.0) for _ in range(8)]
    )
    visits = [sum(len(e.ids) for e in s) for s in per_stage]
    assert visits == [8 * 10, 8 * 20, 8 * 30, 8 * 40]  # 1 : 2 : 3 : 4
    assert plan.total_visits == sum(visits) == 20 * n  # the 20 full-data epochs of a baseline


def test_pocl_plan_rows_carry_stage_and_restart_and_serialise():
    plan = POCL(POCLConfig(epochs_per_stage=2)).plan(ids_for(8), list(range(8)))
    rows = json.loads(json.dumps(plan.to_dict()))
    assert rows["strategy"] == "pocl" and rows["settings"] == dataclasses.asdict(
        POCLConfig(epochs_per_stage=2)
    )
    # A row without "stage" is stage 1 (plan.py keeps unstaged plans' rows as they were).
    assert [(r.get("stage", 1), r.get("restart", False)) for r in rows["epochs"]] == [
        (1, False), (1, False), (2, True), (2, False), (3, True), (3, False), (4, True), (4, False)
    ]  # fmt: skip
    assert [(r["first_rank"], r["last_rank"]) for r in rows["epochs"][::2]] == [
        (1, 2), (1, 4), (1, 6), (1, 8)
    ]  # fmt: skip


# ---------------------------------------------------------------- SRD


@settings(max_examples=200, deadline=None)
@given(
    tied_difficulties,
    st.sampled_from([0.25, 0.5, 0.6, 0.75, 0.9, 1.0]),
    st.integers(1, 5),
    st.integers(1, 3),
)
def test_srd_never_trains_past_floor_rho_n(difficulties, rho, stages, p):
    n = len(difficulties)
    kept = math.floor(rho * n)
    assume(kept >= stages)
    plan = SRD(SRDConfig(selection_ratio=rho, num_stages=stages, epochs_per_stage=p)).plan(
        ids_for(n), difficulties
    )
    order = reference_order(difficulties)
    assert set().union(*(set(e.ids) for e in plan.epochs)) == set(order[:kept])
    expected = [(j + 1) * (kept // stages) for j in range(stages - 1)] + [kept]
    for stage, size in enumerate(expected, start=1):
        assert stage_ids(plan, stage) == [order[:size]] * p
    assert plan.metadata["num_discarded"] == n - kept and plan.metadata["num_kept"] == kept


@pytest.mark.parametrize("n", [12, 24, 36, 120])
def test_srd_defaults_sizes_temperatures_and_six_tenths_of_twenty_epochs(n):
    plan = SRD().plan(ids_for(n), [float(i % 5) for i in range(n)])
    sizes = [len(plan.stage_epochs(s)[0].ids) for s in (1, 2, 3)]
    assert sizes == [n // 4, n // 2, 3 * n // 4]  # rho N / 3, 2 rho N / 3, rho N
    assert [plan.stage_epochs(s)[0].temperature for s in (1, 2, 3)] == pytest.approx([1, 1.5, 2])
    assert [plan.stage_epochs(s)[0].kd_weight for s in (1, 2, 3)] == pytest.approx([0.8, 0.9, 1])
    counted = 0
    for epoch in plan.epochs:
        counted += sum(1 for _ in epoch.ids)
    assert counted == plan.total_visits == 12 * n
    assert counted / (20 * n) == pytest.approx(0.6)


def test_srd_openllama_profile_from_the_docstring():
    config = SRDConfig(epochs_per_stage=4, tau_end=5 / 3, kd_weight_start=0.7, kd_weight_end=0.9)
    assert config.temperatures() == pytest.approx([1.0, 4 / 3, 5 / 3])
    assert config.kd_weights() == pytest.approx([0.7, 0.8, 0.9])


def test_srd_keeps_the_examples_the_ratio_names_despite_float_rounding():
    assert 0.29 * 100 < 29  # the float product is just under 29
    assert SRDConfig(selection_ratio=0.29).kept(100) == 29


def test_srd_refuses_a_ratio_that_keeps_fewer_examples_than_stages():
    with pytest.raises(ValueError) as excinfo:
        SRD().plan(ids_for(3), [0.0, 1.0, 2.0])
    assert "keeps 2 of 3 examples, fewer than the 3 stages" in one_line_error(excinfo)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=8, max_size=80),
    st.integers(2, 3),
)
def test_srd_reranking_keeps_trained_stages_and_cuts_the_rest_from_the_new_order(pairs, boundary):
    before, after = [float(a) for a, _ in pairs], [float(b) for _, b in pairs]
    n, ids = len(pairs), ids_for(len(pairs))
    srd = SRD(SRDConfig(epochs_per_stage=2))
    plan, rescored = srd.plan(ids, before), srd.plan(ids, after)
    spliced = replan_from_stage(plan, rescored, boundary)
    kept, old_order, new_order = (
        math.floor(0.75 * n),
        reference_order(before),
        reference_order(after),
    )
    sizes = [kept // 3, 2 * (kept // 3), kept]
    for stage, size in enumerate(sizes, start=1):
        order = old_order if stage < boundary else new_order
        assert stage_ids(spliced, stage) == [order[:size]] * 2
    assert [(e.epoch, e.stage, e.restart) for e in spliced.epochs] == [
        (e.epoch, e.stage, e.restart) for e in plan.epochs
    ]
    trained = set().union(*(set(e.ids) for e in spliced.epochs))
    assert spliced.metadata["num_trained"] == len(trained) and spliced.metadata["reranked_at"] == [
        boundary
    ]
    assert spliced.total_visits == plan.total_visits == spliced.metadata["total_visits"]
    unchanged = replan_from_stage(plan, srd.plan(ids, before), boundary)
    assert [list(e.ids) for e in unchanged.epochs] == [list(e.ids) for e in plan.epochs]


@pytest.mark.parametrize(
    ("other", "boundary", "named"),
    [
        (SRD(SRDConfig(epochs_per_stage=3)), 2, "other settings"),
        (SRD(SRDConfig(epochs_per_stage=2)), 1, "from_stage=1 must be a stage boundary 2..3"),
        (SRD(SRDConfig(epochs_per_stage=2)), 4, "from_stage=4"),
        (POCL(POCLConfig(epochs_per_stage=2)), 2, "cannot splice a pocl plan"),
    ],
)
def test_reranking_refuses_plans_that_do_not_fit(other, boundary, named):
    ids, difficulties = ids_for(12), [float(i) for i in range(12)]
    plan = SRD(SRDConfig(epochs_per_stage=2)).plan(ids, difficulties)
    with pytest.raises(ValueError) as excinfo:
        replan_from_stage(plan, other.plan(ids, difficulties), boundary)
    assert named in one_line_error(excinfo)


def test_reranking_refuses_a_plan_of_other_examples():
    srd = SRD(SRDConfig(epochs_per_stage=2))
    plan = srd.plan(ids_for(12), [float(i) for i in range(12)])
    with pytest.raises(ValueError) as excinfo:
        replan_from_stage(plan, srd.plan(ids_for(16), [float(i) for i in range(16)]), 2)
    assert "not of the same examples" in one_line_error(excinfo)


# ---------------------------------------------------------------- Baby Step and One-Pass


@settings(max_examples=200, deadline=None)
@given(any_difficulties, st.integers(1, 8), st.integers(1, 3))
def test_baby_step_nested_and_one_pass_disjoint_covering(difficulties, k, p):
    n = len(difficulties)
    assume(k <= n)
    config = ClassicCurriculumConfig(num_buckets=k, epochs_per_stage=p)
    order = reference_order(difficulties)
    bounds = [(j * (n // k), (j + 1) * (n // k)) for j in range(k - 1)] + [((k - 1) * (n // k), n)]
    baby, one_pass = (
        BabyStep(config).plan(ids_for(n), difficulties),
        OnePass(config).plan(ids_for(n), difficulties),
    )
    for stage, (start, stop) in enumerate(bounds, start=1):
        assert stage_ids(baby, stage) == [order[:stop]] * p
        assert stage_ids(one_pass, stage) == [order[start:stop]] * p
    buckets = [set(one_pass.stage_epochs(s)[0].ids) for s in range(1, k + 1)]
    assert sum(map(len, buckets)) == n and set().union(*buckets) == set(order)  # disjoint, cover
    for plan in (baby, one_pass):
        assert [e.restart for e in plan.epochs] == [
            e.epoch > 1 and (e.epoch - 1) % p == 0 for e in plan.epochs
        ]
        assert {e.temperature for e in plan.epochs} == {1.0}
        assert {e.kd_weight for e in plan.epochs} == {None}


@settings(max_examples=200, deadline=None)
@given(any_difficulties, st.integers(1, 8))
def test_one_pass_mean_bucket_difficulty_never_falls(difficulties, k):
    n = len(difficulties)
    assume(k <= n)
    plan = OnePass(ClassicCurriculumConfig(num_buckets=k, epochs_per_stage=1)).plan(
        ids_for(n), difficulties
    )
    of = dict(zip(ids_for(n), difficulties, strict=True))
    means = [sum(of[i] for i in e.ids) / len(e.ids) for e in plan.epochs]
    assert all(a <= b + 1e-9 * max(1.0, abs(b)) for a, b in zip(means, means[1:], strict=False))
    assert [s["mean_difficulty"] for s in plan.metadata["stages"]] == pytest.approx(means)


@settings(max_examples=100, deadline=None)
@given(any_difficulties, st.integers(1, 8))
def test_baby_step_stage_means_never_fall_and_match_the_recorded_ones(difficulties, k):
    n = len(difficulties)
    assume(k <= n)
    plan = BabyStep(ClassicCurriculumConfig(num_buckets=k, epochs_per_stage=1)).plan(
        ids_for(n), difficulties
    )
    of = dict(zip(ids_for(n), difficulties, strict=True))
    means = [math.fsum(of[i] for i in e.ids) / len(e.ids) for e in plan.epochs]
    assert all(a <= b + 1e-9 * max(1.0, abs(b)) for a, b in zip(means, means[1:], strict=False))
    assert [s["mean_difficulty"] for s in plan.metadata["stages"]] == pytest.approx(means)


@pytest.mark.parametrize(("n", "k", "p"), [(40, 4, 8), (12, 3, 2), (30, 5, 1), (7, 7, 3)])
def test_classic_total_visits_pn_k_plus_1_over_2_vs_pn(n, k, p):
    config = ClassicCurriculumConfig(num_buckets=k, epochs_per_stage=p)
    difficulties = [float(i) for i in range(n)]
    assert BabyStep(config).plan(ids_for(n), difficulties).total_visits == p * n * (k + 1) // 2
    assert OnePass(config).plan(ids_for(n), difficulties).total_visits == p * n


# ---------------------------------------------------------------- settings and the registry

BAD_SETTINGS = [
    ("pocl", "num_stages", 0),
    ("pocl", "num_stages", 2.5),
    ("pocl", "epochs_per_stage", -1),
    ("pocl", "epochs_per_stage", True),
    ("pocl", "tau_start", 0.0),
    ("pocl", "tau_end", math.inf),
    ("pocl", "kd_weight_start", 1.5),
    ("pocl", "kd_weight_end", math.nan),
    ("pocl", "kd_weight_end", None),
    ("srd", "selection_ratio", 0.0),
    ("srd", "selection_ratio", 1.2),
    ("srd", "selection_ratio", "most"),
    ("srd", "num_stages", 0),
    ("srd", "epochs_per_stage", 0),
    ("srd", "tau_start", -1.0),
    ("srd", "kd_weight_start", -0.1),
    ("baby_step", "num_buckets", 0),
    ("baby_step", "epochs_per_stage", 0),
    ("one_pass", "temperature", 0.0),
    ("one_pass", "kd_weight", 2.0),
    ("one_pass", "kd_weight", "half"),
]


@pytest.mark.parametrize(("name", "field", "value"), BAD_SETTINGS)
def test_every_bad_setting_is_refused_in_one_line_naming_it(name, field, value):
    with pytest.raises(ValueError) as excinfo:
        strategy_settings(name, {field: value})
    assert one_line_error(excinfo).startswith(f"{field}={value!r} must be")


def test_registry_lists_the_strategies_and_refuses_unknown_names_and_keys():
    assert set(STAGED) | {"spectrumkd"} <= set(strategy_names())
    assert all(STRATEGIES[n].summary and "\n" not in STRATEGIES[n].summary for n in STAGED)
    assert STRATEGIES["pocl"].default_metric == STRATEGIES["srd"].default_metric == "reflection_rrf"
    assert (
        STRATEGIES["baby_step"].default_metric == STRATEGIES["one_pass"].default_metric == "length"
    )
    with pytest.raises(ValueError) as excinfo:
        build_strategy("pocll", {})
    assert "unknown curation strategy 'pocll'" in one_line_error(excinfo)
    with pytest.raises(ValueError) as excinfo:
        build_strategy("srd", {"ratio": 0.5})
    assert "unknown srd setting(s) ratio" in one_line_error(excinfo)
    assert "selection_ratio" in str(excinfo.value)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(STAGED),
    st.integers(1, 4),
    st.integers(1, 3),
    st.lists(st.integers(0, 9).map(float), min_size=12, max_size=40),
)
def test_plan_settings_round_trip_to_the_same_plan(name, stages, p, difficulties):
    field = "num_buckets" if name in ("baby_step", "one_pass") else "num_stages"
    strategy = build_strategy(name, {field: stages, "epochs_per_stage": p})
    ids = ids_for(len(difficulties))
    plan = strategy.plan(ids, difficulties)
    assert plan.strategy == name == strategy.name
    recorded = json.loads(json.dumps(plan.metadata["settings"]))
    assert recorded[field] == stages and recorded["epochs_per_stage"] == p
    assert build_strategy(name, recorded).plan(ids, difficulties).to_dict() == plan.to_dict()


def test_spectrumkd_plan_records_its_settings_too():
    plan = build_strategy("spectrumkd", {"epochs": 6, "warmup_epochs": 1}).plan(
        ids_for(50), [float(i % 7) for i in range(50)]
    )
    assert plan.metadata["settings"] == dataclasses.asdict(
        SpectrumKDConfig(epochs=6, warmup_epochs=1)
    )
    assert plan.total_visits == sum(len(e.ids) for e in plan.epochs)


# ---------------------------------------------------------------- the same budget for all


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(STAGED), st.integers(8, 200), st.integers(1, 30), st.integers(1, 6))
def test_visit_budget_comes_within_half_a_stage_cycle_of_the_baseline(name, n, baseline, k):
    field = "num_buckets" if name in ("baby_step", "one_pass") else "num_stages"
    settings_ = settings_for_visit_budget(name, {field: k}, n, baseline)
    strategy = build_strategy(name, settings_)
    cycle = sum(strategy.stage_sizes(n))  # visits of one epoch in every stage
    plan = strategy.plan(ids_for(n), [float(i % 11) for i in range(n)])
    assert plan.total_visits == settings_.epochs_per_stage * cycle
    if settings_.epochs_per_stage > 1:
        assert abs(plan.total_visits - baseline * n) <= cycle / 2


@pytest.mark.parametrize(
    ("name", "per_stage"), [("pocl", 8), ("baby_step", 8), ("one_pass", 20), ("srd", 13)]
)
def test_visit_budget_of_twenty_epochs_on_forty_examples(name, per_stage):
    settings_ = settings_for_visit_budget(name, {}, 40, 20)
    assert settings_.epochs_per_stage == per_stage
    assert epochs_per_stage_for_budget([10, 20, 30, 40], 20, 40) == 8


def test_visit_budget_for_spectrumkd_is_its_step_parity():
    config = settings_for_visit_budget("spectrumkd", {}, 100, 20, warmup_fraction=0.2)
    assert (config.epochs, config.warmup_epochs) == (25, 5)  # 20 epochs at 80 % -> 25


# ---------------------------------------------------------------- small helpers


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 10),
    st.floats(0.1, 5),
    st.floats(0.1, 5),
)
def test_linear_ramp_is_the_direct_formula(count, start, end):
    ramp = linear_ramp(count, start, end)
    assert ramp[0] == start and len(ramp) == count
    if count > 1:
        assert ramp[-1] == pytest.approx(end)
        assert ramp == pytest.approx(
            [start + (end - start) * j / (count - 1) for j in range(count)]
        )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), max_size=6))
def test_covered_ranks_counts_the_union(ranges):
    stages = [Stage(min(a, b), max(a, b), 1.0, None) for a, b in ranges]
    brute = {r for s in stages for r in range(s.start, s.stop)}
    assert covered_ranks(stages) == len(brute)


def test_curation_imports_no_torch():
    code = "import sys, spectrumkd.curation; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_every_row_of_a_staged_schedule_names_its_stage_and_a_plain_plan_keeps_its_rows():
    ids = [f"ex{i}" for i in range(12)]
    staged = build_strategy("pocl", {"epochs_per_stage": 1}).plan(ids, list(range(12)))
    rows = staged.to_dict()["epochs"]
    assert [(row["stage"], row["restart"]) for row in rows] == [
        (1, False),
        (2, True),
        (3, True),
        (4, True),
    ]
    plain = build_strategy("spectrumkd", {"epochs": 3, "warmup_epochs": 1}).plan(
        ids, list(range(12))
    )
    assert all("stage" not in row for row in plain.to_dict()["epochs"])


def test_the_printed_plan_says_what_srd_saves_in_full_data_epochs():
    from spectrumkd.console import visits_line

    ids = [f"ex{i}" for i in range(100)]
    plan = build_strategy("srd", {}).plan(ids, list(range(100)))
    visits = 8 * (25 + 50 + 75)  # 8 epochs on each cumulative third of the easiest 75
    assert visits_line(plan) == (
        f"{visits:,} example visits = {visits / 100:.2f} full-data epochs of 100 "
        "(25 hardest never trained on)"
    )
    assert visits / 100 == 0.6 * 20  # the spec's saving against a 20-epoch baseline
