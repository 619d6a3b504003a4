"""The jobs called from Python on tiny models, each checked against an independent computation:
the score job against the scorer, curate against the strategy, step parity against a count of
optimiser steps, shrink-with-reuse against what is on disk, distill against the same training
assembled by hand, heal and evaluate against what they write."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama
from transformers import AutoModelForCausalLM

from spectrumkd import jobs
from spectrumkd.curation import SpectrumKD, SpectrumKDConfig, step_parity, step_parity_epochs
from spectrumkd.data import DataConfig, split_validation
from spectrumkd.distillation import RunConfig
from spectrumkd.io import read_jsonl
from spectrumkd.models import (
    calibration_batches,
    finished_report,
    load_model,
    resolve_device,
    resolve_dtype,
    shrunk_student,
)
from spectrumkd.scoring import ScoringSettings, score_examples

FLOAT32 = ScoringSettings(precision="float32")


@pytest.fixture()
def rows_file(tmp_path):
    rows = [
        {"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(i + 1)))}
        for i in range(12)
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def tiny_pair(tmp_path, tiny_tokenizer):
    """A two-block teacher and a one-block student, saved with the shared tokenizer."""
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    for path, layers, seed in ((teacher, 2, 1), (student, 1, 2)):
        build_tiny_llama(len(tiny_tokenizer), num_layers=layers, seed=seed).save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
    return teacher, student


# ------------------------------------------------------------------------------------ score


def test_the_score_job_writes_the_scorers_table(
    tmp_path, rows_file, tiny_model_dir, tiny_tokenizer
):
    data = DataConfig(source=str(rows_file), max_length=128)
    result = jobs.score(
        str(tiny_model_dir),
        data,
        tmp_path / "scores",
        settings=FLOAT32,
        dtype="float32",
        device="cpu",
        progress=False,
    )
    # Independent: the scorer on the same rows, with the model loaded by hand, no files.
    expected = score_examples(
        load_model(tiny_model_dir),
        data.load(tiny_tokenizer).examples,
        pad_token_id=tiny_tokenizer.pad_token_id,
        settings=FLOAT32,
        progress=False,
    )
    assert list(result.table.ids) == list(expected.ids)
    np.testing.assert_allclose(result.table.loss_mean, expected.loss_mean, rtol=1e-5)
    assert result.precision == "float32" and result.tokens > 0
    summary = json.loads((tmp_path / "scores" / "score_summary.json").read_text())
    assert summary["examples_scored"] == 12 and summary["model"] == str(tiny_model_dir)
    spectrum = list(read_jsonl(tmp_path / "scores" / "spectrum.jsonl"))
    assert sorted(r["id"] for r in spectrum) == sorted(expected.ids)


# ----------------------------------------------------------------------------------- curate


def test_the_curate_job_writes_the_strategys_plan(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"r{i}" for i in range(50)]
    losses = rng.lognormal(size=50)
    config = SpectrumKDConfig(epochs=6, warmup_epochs=1)
    plan = jobs.curate(ids, losses, config, tmp_path)
    expected = SpectrumKD(config).plan(ids, losses)
    assert [e.ids for e in plan.epochs] == [e.ids for e in expected.epochs]
    written = json.loads((tmp_path / "schedule.json").read_text())
    assert [e["ids"] for e in written["epochs"]] == [list(e.ids) for e in expected.epochs]


# ----------------------------------------------------------------------------- step parity


def optimiser_steps(plan, batch_size: int) -> int:
    """Counted from the plan itself: each epoch's rows in batches of ``batch_size``."""
    return sum(math.ceil(len(epoch.ids) / batch_size) for epoch in plan.epochs)


@pytest.mark.filterwarnings("ignore:epochs=1 <= warmup_epochs")  # one epoch cannot slide
@pytest.mark.parametrize("n", [40, 97, 250])
@pytest.mark.parametrize("ratios", [(0.1, 0.1), (0.2, 0.0), (0.05, 0.3)])
@pytest.mark.parametrize("baseline_epochs", [1, 3, 20])
def test_step_parity_gives_the_baselines_optimiser_steps(n, ratios, baseline_epochs):
    lambda_a, lambda_b = ratios
    base = SpectrumKDConfig(lambda_a=lambda_a, lambda_b=lambda_b)
    parity = step_parity(base, baseline_epochs, n, warmup_fraction=0.2)
    ids = [f"r{i:03d}" for i in range(n)]
    plan = SpectrumKD(parity.config).plan(ids, np.linspace(0.1, 3.0, n))
    # Brute force, one row per step: the epoch count whose steps come nearest the baseline's
    # (ties to the larger count, as round-half-up does).
    baseline_steps = baseline_epochs * n
    steps_of = {e: e * parity.window for e in range(1, 4 * baseline_steps + 2)}
    nearest = min(steps_of, key=lambda e: (abs(steps_of[e] - baseline_steps), -e))
    assert parity.epochs == nearest == len(plan.epochs)
    assert optimiser_steps(plan, 1) == parity.epochs * parity.window
    assert abs(optimiser_steps(plan, 1) - baseline_steps) <= parity.window / 2
    assert parity.warmup_epochs == parity.epochs // 5  # the paper's fifth
    assert parity.to_dict() == {
        "n_examples": n,
        "window": parity.window,
        "baseline_epochs": baseline_epochs,
        "epochs": parity.epochs,
        "warmup_epochs": parity.warmup_epochs,
    }


def test_step_parity_keeps_a_given_warm_up_and_the_other_settings():
    base = SpectrumKDConfig(warmup_epochs=3, tau_end=3.0, step_mode="linear")
    parity = step_parity(base, 20, 1000)
    assert parity.epochs == step_parity_epochs(20, 1000, 800) == 25  # paper C.3: 80 % -> 25
    assert parity.config == SpectrumKDConfig(
        epochs=25, warmup_epochs=3, tau_end=3.0, step_mode="linear"
    )


def test_the_curate_command_uses_the_same_step_parity(tmp_path):
    from spectrumkd.cli import main

    rows = [{"id": f"r{i}", "difficulty": float(i % 7) + 0.5} for i in range(60)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["curate", "--difficulties", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "c")]
    assert main([*argv, "--baseline-epochs", "4", "--warmup", "2", "--quiet"]) == 0
    schedule = json.loads((tmp_path / "c" / "schedule.json").read_text())
    parity = step_parity(SpectrumKDConfig(warmup_epochs=2), 4, 60)
    assert len(schedule["epochs"]) == parity.epochs
    assert (
        schedule["config"] == parity.config.to_dict() and schedule["config"]["warmup_epochs"] == 2
    )


# --------------------------------------------------------------------------- shrink + reuse


def test_shrink_reuses_a_matching_student_and_redoes_a_mismatching_one(
    tmp_path, tiny_tokenizer, rows_file
):
    teacher = build_tiny_llama(len(tiny_tokenizer), num_layers=4, seed=3)
    dataset = DataConfig(source=str(rows_file), max_length=128).load(tiny_tokenizer)
    batches = calibration_batches(dataset, tiny_tokenizer.pad_token_id, rows=8)
    folder = tmp_path / "student"

    first = shrunk_student(folder, teacher, tiny_tokenizer, batches, num_layers=2)
    assert not first.reused and first.model is not None
    assert len(first.report.keep_layers) == 2
    assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 2

    def never() -> None:
        raise AssertionError("a matching student must be reused without loading anything")

    again = shrunk_student(folder, never, tiny_tokenizer, never, num_layers=2)
    assert again.reused and again.model is None and again.report == first.report

    bigger = shrunk_student(folder, teacher, tiny_tokenizer, lambda: batches, num_layers=3)
    assert not bigger.reused and len(bigger.report.keep_layers) == 3
    assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 3

    other_method = finished_report(folder, num_layers=3, method="removal_loss")
    assert other_method is None  # a student chosen by another method does not match
    assert finished_report(folder, keep_layers=bigger.report.keep_layers) == bigger.report

    (folder / "shrink_report.json").write_text("{not json")  # an unfinished save
    rebuilt = shrunk_student(folder, teacher, tiny_tokenizer, batches, num_layers=3)
    assert not rebuilt.reused
    assert json.loads((folder / "shrink_report.json").read_text())["keep_layers"] == list(
        rebuilt.report.keep_layers
    )
    assert not shrunk_student(
        folder, teacher, tiny_tokenizer, batches, num_layers=3, reuse=False
    ).reused


def test_the_shrink_job_cuts_the_teacher_on_its_calibration_rows(
    tmp_path, tiny_tokenizer, rows_file
):
    teacher = tmp_path / "teacher4"
    build_tiny_llama(len(tiny_tokenizer), num_layers=4, seed=5).save_pretrained(teacher)
    tiny_tokenizer.save_pretrained(teacher)
    data = DataConfig(source=str(rows_file), max_length=128)
    report = jobs.shrink(str(teacher), tmp_path / "cut", data, num_layers=2, device="cpu")
    assert len(report.keep_layers) == 2 and report.num_layers_teacher == 4
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "cut")
    assert student.config.num_hidden_layers == 2
    assert finished_report(tmp_path / "cut", num_layers=2) == report
    # Independent: the same cut from the teacher and batches assembled by hand.
    batches = calibration_batches(data.load(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    by_hand = shrunk_student(
        tmp_path / "by-hand", load_model(teacher), tiny_tokenizer, batches, num_layers=2
    )
    assert by_hand.report.keep_layers == report.keep_layers
    assert by_hand.report.scores == pytest.approx(report.scores)


# ---------------------------------------------------------------------- distill and heal


def test_distill_trains_as_its_named_steps_do(tmp_path, tiny_pair, rows_file):
    teacher, student = tiny_pair
    values = {
        "teacher": str(teacher),
        "student": str(student),
        "data": {"source": str(rows_file), "max_length": 128, "validation_ratio": 0.25},
        "train": {"epochs": 2, "batch_size": 4, "log_every": 1},
        "device": "cpu",
    }
    run = RunConfig.from_dict({**values, "output_dir": str(tmp_path / "job")})
    state = jobs.distill(run, progress=False)
    assert (tmp_path / "job" / "run_config.yaml").is_file()

    # The same run assembled from the job's steps (the demo's way in) trains the same student.
    by_hand = RunConfig.from_dict({**values, "output_dir": str(tmp_path / "steps")})
    inputs = jobs.load_distill_inputs(by_hand)
    _, held = split_validation(
        DataConfig(**values["data"]).load(inputs.tokenizer).examples, 0.25, 0
    )
    assert [e.id for e in inputs.validation] == [e.id for e in held]
    assert jobs.curation_plan(by_hand, inputs) is None  # no curation: the baseline
    again = jobs.train_student(inputs, by_hand.train, tmp_path / "steps", progress=False)
    assert (again["epoch"], again["step"]) == (state["epoch"], state["step"]) == (2, 6)
    rows = [list(read_jsonl(tmp_path / name / "metrics.jsonl")) for name in ("job", "steps")]
    losses = [[r.get("kd", r.get("val_kd")) for r in run_rows] for run_rows in rows]
    assert None not in losses[0] and len(losses[0]) == 6 + 2  # each step, each epoch's end
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_heal_is_distill_without_curation_and_names_the_student_to_use(
    tmp_path, tiny_pair, rows_file
):
    teacher, student = tiny_pair
    run = jobs.heal_config(
        str(teacher),
        str(student),
        tmp_path / "healed",
        {"source": str(rows_file), "max_length": 128, "validation_ratio": 0.25},
        train={"epochs": 2},
        device="cpu",
        overrides=["train.batch_size=4"],
    )
    assert run.curation is None and run.train.batch_size == 4 and run.train.epochs == 2
    healed = jobs.heal(run, progress=False)
    assert healed.best is not None and healed.student_dir == tmp_path / "healed" / "best"
    assert healed.state["step"] == 2 * 3  # 9 training rows, 4 per batch, 2 epochs
    assert AutoModelForCausalLM.from_pretrained(healed.student_dir).config.num_hidden_layers == 1

    without_validation = jobs.heal_config(
        str(teacher), str(student), tmp_path / "plain", {"source": str(rows_file)}, device="cpu"
    )
    assert jobs.heal(without_validation, progress=False).student_dir == tmp_path / "plain" / "final"


# --------------------------------------------------------------------------------- evaluate


def test_the_evaluate_job_loads_the_model_and_writes_its_summary(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    from spectrumkd.evaluation import Decoding

    rows = [{"prompt": f"Say {i}.", "output": str(i)} for i in range(3)]
    (tmp_path / "dolly.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = jobs.evaluate(
        str(tiny_model_dir),
        tmp_path / "eval",
        teacher=str(tiny_model_dir),
        device="cpu",
        suites=["dolly"],
        sources={"dolly": str(tmp_path / "dolly.jsonl")},
        decoding=Decoding(greedy=True, max_new_tokens=2, precision="float32"),
        progress=False,
    )
    written = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["model"] == written["model"] == str(tiny_model_dir)
    assert written["teacher"] == str(tiny_model_dir)
    assert set(written["suites"]) == {"dolly"}


# ------------------------------------------------------------------------ devices and dtypes


def test_devices_and_dtypes_resolve_from_the_users_words():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


# ------------------------------------------------------------------- any curation strategy


def test_the_curate_job_writes_any_strategys_plan_in_one_format(tmp_path):
    from spectrumkd.curation import build_strategy

    ids = [f"r{i}" for i in range(40)]
    losses = np.random.default_rng(1).lognormal(size=40)
    plan = jobs.curate(ids, losses, {"selection_ratio": 0.5}, tmp_path, strategy="srd")
    expected = build_strategy("srd", {"selection_ratio": 0.5}).plan(ids, losses)
    written = json.loads((tmp_path / "schedule.json").read_text())
    assert written == json.loads(json.dumps(expected.to_dict()))
    assert plan.to_dict() == expected.to_dict()
    assert written["strategy"] == "srd" and written["settings"]["selection_ratio"] == 0.5
    # Nothing past the kept half of the easy-to-hard order is ever trained on.
    easiest = {ids[i] for i in np.argsort(losses, kind="stable")[:20]}
    assert {i for e in written["epochs"] for i in e["ids"]} == easiest
    assert [e.get("restart", False) for e in written["epochs"]].count(True) == 2  # stages 2 and 3
    # The settings dataclass names its strategy; a class two strategies share needs the name.
    from spectrumkd.curation.classic import ClassicCurriculumConfig

    with pytest.raises(ValueError, match="baby_step and one_pass: name the strategy"):
        jobs.curate(ids, losses, ClassicCurriculumConfig(), tmp_path / "x")
    with pytest.raises(ValueError, match="unknown curation strategy 'bogus'; choose one of"):
        jobs.curate(ids, losses, None, tmp_path / "x", strategy="bogus")
    with pytest.raises(ValueError, match="unknown pocl setting"):
        jobs.curate(ids, losses, {"lambda_a": 0.1}, tmp_path / "x", strategy="pocl")
    with pytest.raises(ValueError, match="automatic lambda_b is SpectrumKD's"):
        jobs.curate(ids, losses, None, tmp_path / "x", strategy="pocl", auto_lambda_b=True)


def test_a_run_config_with_strategy_pocl_trains_on_the_pocl_plan(tmp_path, tiny_pair, rows_file):
    from spectrumkd.curation import build_strategy

    teacher, student = tiny_pair
    rows = [{"id": f"{i:06d}", "difficulty": float((7 * i) % 12)} for i in range(12)]
    table = tmp_path / "difficulties.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = RunConfig.from_dict(
        {
            "teacher": str(teacher),
            "student": str(student),
            "output_dir": str(tmp_path / "pocl"),
            "data": {"source": str(rows_file), "max_length": 128, "validation_ratio": 0.25},
            "train": {"epochs": 1, "batch_size": 4, "log_every": 1},
            "curation": {
                "strategy": "pocl",
                "difficulties": str(table),
                "epochs_per_stage": 1,
            },
            "device": "cpu",
        }
    )
    assert run.curation.to_dict()["strategy"] == "pocl"
    state = jobs.distill(run, progress=False)
    inputs = jobs.load_distill_inputs(run)
    training = [e.id for e in inputs.train_examples]
    difficulty = {r["id"]: r["difficulty"] for r in rows}
    expected = build_strategy("pocl", {"epochs_per_stage": 1}).plan(
        training, [difficulty[i] for i in training]
    )
    written = json.loads((tmp_path / "pocl" / "schedule.json").read_text())
    assert written == json.loads(json.dumps(expected.to_dict()))
    assert [e["num_examples"] for e in written["epochs"]] == [2, 4, 6, 9]  # 9 training rows
    assert state["epoch"] == 4 and state["step"] == 1 + 1 + 2 + 3
    recorded = RunConfig.from_yaml(tmp_path / "pocl" / "run_config.yaml")
    assert recorded == run


def test_without_a_table_the_run_scores_the_student_by_the_strategys_metric(
    tmp_path, tiny_pair, rows_file
):
    """baby_step ranks by response length by default: the plan is the strategy's over the
    training rows' response-token counts, counted here from the labels."""
    from spectrumkd.batching import IGNORE_INDEX
    from spectrumkd.curation import build_strategy

    teacher, student = tiny_pair
    run = RunConfig.from_dict(
        {
            "teacher": str(teacher),
            "student": str(student),
            "output_dir": str(tmp_path / "bs"),
            "data": {"source": str(rows_file), "max_length": 128, "validation_ratio": 0.25},
            "train": {"epochs": 1, "batch_size": 4},
            "curation": {"strategy": "baby_step", "num_buckets": 3, "epochs_per_stage": 1},
            "device": "cpu",
        }
    )
    assert run.curation.scoring_metric == "length"
    inputs = jobs.load_distill_inputs(run)
    plan = jobs.curation_plan(run, inputs, progress=False)
    ids = [e.id for e in inputs.train_examples]
    lengths = [sum(1 for t in e.labels if t != IGNORE_INDEX) for e in inputs.train_examples]
    expected = build_strategy("baby_step", {"num_buckets": 3, "epochs_per_stage": 1})
    assert plan.to_dict() == expected.plan(ids, lengths).to_dict()
    table = list(read_jsonl(tmp_path / "bs" / "scores" / "difficulties.jsonl"))
    assert [r["difficulty"] for r in table] == lengths
    metric = json.loads((tmp_path / "bs" / "scores" / "metric.json").read_text())
    assert metric["metric"] == "length"


def test_the_score_job_takes_a_metric(tmp_path, rows_file, tiny_model_dir, tiny_tokenizer):
    from spectrumkd.batching import IGNORE_INDEX

    data = DataConfig(source=str(rows_file), max_length=128)
    result = jobs.score(
        str(tiny_model_dir), data, tmp_path / "len", metric="length", device="cpu", progress=False
    )
    examples = data.load(tiny_tokenizer).examples
    lengths = {e.id: sum(1 for t in e.labels if t != IGNORE_INDEX) for e in examples}
    assert result.table is None and result.metric == "length"
    assert sorted(result.spectrum.difficulties) == sorted(lengths.values())
    ranked = list(read_jsonl(tmp_path / "len" / "spectrum.jsonl"))
    assert [r["difficulty"] for r in ranked] == sorted(lengths.values())
    assert all(r["difficulty"] == lengths[r["id"]] for r in ranked)
    summary = json.loads((tmp_path / "len" / "score_summary.json").read_text())
    assert summary["metric"] == "length" and summary["examples_scored"] == 12
    with pytest.raises(ValueError, match="unknown difficulty metric 'bogus'"):
        jobs.score(str(tiny_model_dir), data, tmp_path / "x", metric="bogus", device="cpu")


def test_the_cross_entropy_is_not_scored_into_a_folder_of_another_metric(
    tmp_path, rows_file, tiny_model_dir
):
    # Scoring CE there would leave length's metric.json beside CE rows, and a later length run
    # would reuse them as lengths.
    data = DataConfig(source=str(rows_file), max_length=128)
    folder = tmp_path / "scores"
    jobs.score(str(tiny_model_dir), data, folder, metric="length", device="cpu", progress=False)
    before = (folder / "difficulties.jsonl").read_bytes()
    with pytest.raises(ValueError) as caught:
        jobs.score(str(tiny_model_dir), data, folder, device="cpu", progress=False)
    assert "holds difficulties of another metric (length in metric.json)" in str(caught.value)
    assert (folder / "difficulties.jsonl").read_bytes() == before
    again = jobs.score(
        str(tiny_model_dir), data, folder, metric="length", device="cpu", progress=False
    )
    lengths = sorted(float(r["difficulty"]) for r in read_jsonl(folder / "difficulties.jsonl"))
    assert sorted(again.spectrum.difficulties) == lengths


def test_the_run_configs_metric_options_reach_the_scorer(tmp_path, tiny_pair, rows_file):
    """length with include_prompt: the plan ranks by prompt + response tokens, counted here."""
    from spectrumkd.curation import build_strategy

    teacher, student = tiny_pair
    curation = {"strategy": "baby_step", "num_buckets": 3, "epochs_per_stage": 1}
    run = RunConfig.from_dict(
        {
            "teacher": str(teacher),
            "student": str(student),
            "output_dir": str(tmp_path / "bs"),
            "data": {"source": str(rows_file), "max_length": 128, "validation_ratio": 0.25},
            "train": {"epochs": 1, "batch_size": 4},
            "curation": {**curation, "metric_options": {"include_prompt": True}},
            "device": "cpu",
        }
    )
    inputs = jobs.load_distill_inputs(run)
    plan = jobs.curation_plan(run, inputs, progress=False)
    ids = [e.id for e in inputs.train_examples]
    lengths = [len(e.input_ids) for e in inputs.train_examples]
    table = list(read_jsonl(tmp_path / "bs" / "scores" / "difficulties.jsonl"))
    assert [r["difficulty"] for r in table] == lengths
    expected = build_strategy("baby_step", {"num_buckets": 3, "epochs_per_stage": 1})
    assert plan.to_dict() == expected.plan(ids, lengths).to_dict()
