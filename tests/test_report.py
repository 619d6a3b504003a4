"""``spectrumkd report``: tolerant readers on partial and truncated run folders, and the page of
a small real run (scored, curated and trained here) opened in headless Chromium, where every
figure must load and the console must stay free of errors."""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_llama, random_token_examples

from spectrumkd.cli.report import register
from spectrumkd.curation import SpectrumKDConfig
from spectrumkd.io import write_json, write_jsonl
from spectrumkd.report import read_run, write_report
from spectrumkd.report.comparison_tables import comparison_tables
from spectrumkd.report.readers import read_jsonl_tolerant

VOCAB = 96
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "report"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1200,900",
)


# ---- a small real run: scored, curated and trained with the toolkit's own functions ---------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """The layout ``spectrumkd distill`` writes (scores/, schedule.json, spectrum.jsonl,
    metrics.jsonl, checkpoint/, best/, final/), from the toolkit's own functions called from
    Python, so there is no run_config.yaml."""
    from accelerate import Accelerator

    from spectrumkd.distillation.signals import LiveTeacher
    from spectrumkd.distillation.trainer import TrainConfig, train
    from spectrumkd.jobs import curate
    from spectrumkd.scoring import score_examples

    out = tmp_path_factory.mktemp("real-run")
    # Small enough for seconds on a CPU: 50 scored and trained, 10 held out for validation.
    examples = random_token_examples(60, VOCAB, seed=3, max_len=32)
    train_examples, validation = examples[:50], examples[50:]
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    table = score_examples(student, train_examples, pad_token_id=0, out_dir=out / "scores")
    plan = curate(
        list(table.ids),
        table.loss_mean,
        SpectrumKDConfig(lambda_a=0.1, lambda_b=0.1, epochs=3, warmup_epochs=1),
        out,
    )
    train(
        student,
        LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1)),
        train_examples,
        TrainConfig(batch_size=8, learning_rate=3e-3, log_every=1),
        out,
        plan=plan,
        validation=validation,
        accelerator=Accelerator(cpu=True),
    )
    return out


def add_evaluation(run: Path) -> None:
    """Evaluation files laid out as ``spectrumkd.evaluation.instruction.runner`` writes them (its module
    docstring; ``test_the_evaluation_stage_output_is_read_as_written`` checks against the real
    thing): per instruction set seed runs and quality rows, a maths set with its own summary
    (pass@1 in percent), ``summary.json`` with ``suites``, and a comparison with p-values."""
    rng = np.random.default_rng(0)
    suites = {}
    for name, label in (("dolly", "DollyEval"), ("selfinst", "SelfInst")):
        for seed in (10, 20, 30):
            write_jsonl(
                run / "eval" / name / f"seed{seed}.jsonl",
                [
                    {"id": f"{i}", "prediction": "p", "references": ["r"], "rougeL": float(x)}
                    for i, x in enumerate(rng.uniform(10, 40, size=12))
                ],
            )
        write_jsonl(
            run / "eval" / name / "quality.jsonl",
            [
                {"id": "0", "ce": 2.0, "kl_forward": 0.4, "kl_reverse": 0.5, "tokens": 10},
                {"id": "1", "ce": 3.0, "kl_forward": None, "kl_reverse": None, "tokens": 30},
            ],
        )
        suites[name] = {"kind": "instruction", "label": label, "examples": 12}
    gsm8k = {"set": "gsm8k", "n": 50, "pass_at_1": 12.0, "correct": 6, "seconds": 3.0}
    write_jsonl(run / "eval" / "gsm8k" / "greedy.jsonl", [{"id": "0", "correct": True}])
    write_json(run / "eval" / "gsm8k" / "summary.json", gsm8k)
    suites["gsm8k"] = {"kind": "registered", "metric": "pass@1", "score": 12.0, **gsm8k}
    write_json(run / "eval" / "summary.json", {"model": "student", "suites": suites})
    write_json(
        run / "eval" / "compare.json",
        {
            "base": "baseline",
            "new": "spectrumkd",
            "sets": [
                {"set": "dolly", "base": 22.1, "new": 23.4, "gain_percent": 5.9, "p_value": 0.01},
                {
                    "set": "selfinst",
                    "base": 12.0,
                    "new": 11.8,
                    "gain_percent": -1.7,
                    "p_value": 0.6,
                },
            ],
        },
    )


# ---- readers on partial folders ---------------------------------------------------------


def test_a_missing_run_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_run(tmp_path / "nope")


def test_an_empty_folder_gives_a_page_that_names_everything_missing(tmp_path):
    page = write_report(tmp_path)
    text = page.read_text()
    assert page == tmp_path / "report" / "index.html"
    for missing in ("not scored yet", "no schedule.json", "no metrics.jsonl", "not evaluated"):
        assert missing in text
    assert not list(page.parent.glob("*.png"))


def test_a_half_written_last_line_is_tolerated_and_reported(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    read = read_jsonl_tolerant(path)
    assert [r["a"] for r in read.rows] == [1, 2] and read.truncated and read.bad_lines == 0
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')  # a bad line in the middle is corruption
    read = read_jsonl_tolerant(path)
    assert [r["a"] for r in read.rows] == [1, 3] and not read.truncated and read.bad_lines == 1
    assert read_jsonl_tolerant(tmp_path / "absent.jsonl") is None


def test_a_spectrum_only_folder_shows_distribution_and_zones(real_run, tmp_path):
    # What `spectrumkd score` leaves: the difficulty table and a spectrum with zones.
    shutil.copytree(real_run / "scores", tmp_path / "scores")
    shutil.copy(real_run / "spectrum.jsonl", tmp_path / "scores" / "spectrum.jsonl")
    run = read_run(tmp_path)
    assert run.difficulties is not None and run.difficulties.size == 50
    assert run.spectrum.zones == {
        "early": (1, 5),
        "continuous": (6, 40),
        "late": (41, 45),
        "excluded": (46, 50),
    }
    assert run.schedule is None and not run.steps
    page = write_report(tmp_path)
    names = sorted(p.name for p in page.parent.glob("*.png"))
    assert names == ["difficulty.png", "spectrum.png"]
    assert "no schedule.json" in page.read_text()


def test_a_difficulty_table_alone_is_still_a_spectrum_without_zones(tmp_path):
    rng = np.random.default_rng(1)
    rows = [{"id": f"{i}", "difficulty": float(x)} for i, x in enumerate(rng.lognormal(1, 0.3, 40))]
    write_jsonl(tmp_path / "difficulties.jsonl", rows)
    run = read_run(tmp_path)
    assert run.spectrum is not None and run.spectrum.zones == {}
    assert np.all(np.diff(run.spectrum.difficulties) >= 0)
    assert "no zones" in write_report(tmp_path).read_text()


def test_a_training_run_still_going_is_drawn_with_what_exists(real_run, tmp_path):
    for name in ("schedule.json", "spectrum.jsonl"):
        shutil.copy(real_run / name, tmp_path / name)
    lines = (real_run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in lines if '"ce"' in line][:5]
    for row in steps:
        row.pop("alpha", None)  # as an older trainer logged them: the total needs the config
    # Five steps, no epoch finished, the sixth row half written; no checkpoint yet.
    text = "".join(json.dumps(row) + "\n" for row in steps) + lines[5][:20]
    (tmp_path / "metrics.jsonl").write_text(text)
    run = read_run(tmp_path)
    assert len(run.steps) == 5 and not run.epochs and run.alpha is None
    assert any("incomplete" in n for n in run.notes["Training"])
    page = write_report(tmp_path).read_text()
    assert "alpha unknown" in page and "no final/ yet" in page
    # With each step's alpha logged (as the trainer does now), the total is drawn regardless.
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({**row, "alpha": 0.3}) + "\n" for row in steps)
    )
    page = write_report(tmp_path).read_text()
    assert "alpha unknown" not in page and "logged alpha" in page
    assert (tmp_path / "report" / "training.png").stat().st_size > 1000


def test_broken_json_files_are_notes_not_errors(tmp_path):
    (tmp_path / "schedule.json").write_text('{"epochs": [{"epoch": 1, ')
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "trainer_state.json").write_text("")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "step": 1, "ce": 3.0, "kd": 0.5}\n')
    (tmp_path / "run_config.yaml").write_text("train: [unclosed\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text("{")
    run = read_run(tmp_path)
    assert any("not valid JSON" in n for n in run.notes["Schedule"])
    assert any("trainer_state.json" in n for n in run.notes["Training"])
    assert any("run_config.yaml" in n for n in run.notes["Training"])
    assert write_report(tmp_path).is_file()


def test_any_file_cut_anywhere_never_fails_the_report(real_run, tmp_path):
    """A kill (or a copy in progress) can leave any file short: every JSON/JSONL/YAML file of a
    real run, cut at its start, middle and end, is read without an exception."""
    run_dir = tmp_path / "run"
    shutil.copytree(real_run, run_dir, ignore=shutil.ignore_patterns("report", "best", "final"))
    add_evaluation(run_dir)
    files = [p for p in run_dir.rglob("*") if p.suffix in (".json", ".jsonl", ".yaml")]
    assert len(files) > 10
    for path in files:
        whole = path.read_bytes()
        for cut in (0, len(whole) // 2, max(len(whole) - 3, 0)):
            path.write_bytes(whole[:cut])
            read_run(run_dir)
        path.write_bytes(whole[: len(whole) // 2])  # leave it cut for the page below
    assert write_report(run_dir).is_file()


def test_steps_logged_again_after_a_resume_keep_the_later_rows(tmp_path):
    rows = [
        {"epoch": 1, "step": 1, "ce": 3.0, "kd": 1.0, "temperature": 1.0},
        {"epoch": 1, "step": 2, "ce": 2.9, "kd": 0.9, "temperature": 1.0},  # killed after this
        {"epoch": 1, "step": 1, "ce": 3.1, "kd": 1.1, "temperature": 1.0},  # the rerun
        {"epoch": 1, "step": 2, "ce": 2.8, "kd": 0.8, "temperature": 1.0},
        {"epoch": 1, "step": 2, "val_ce": 2.7, "val_kd": 0.7, "val_tokens": 9},
    ]
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    run = read_run(tmp_path)
    assert [(r["step"], r["ce"]) for r in run.steps] == [(1, 3.1), (2, 2.8)]
    assert [r["val_ce"] for r in run.epochs] == [2.7]


def _tau_rows(with_train_tau: bool) -> list[dict]:
    """Two epochs as the trainer logs them: epoch 2 trains at tau 2, where val_kd stays at
    tau 1 and the training-temperature value (when logged) has its own key."""
    rows = [
        {"epoch": 1, "step": 1, "ce": 3.0, "kd": 1.2, "temperature": 1.0, "alpha": 0.3},
        {"epoch": 1, "step": 1, "val_ce": 2.9, "val_kd": 1.10, "val_tokens": 40},
        {"epoch": 2, "step": 2, "ce": 2.8, "kd": 0.5, "temperature": 2.0, "alpha": 0.3},
        {"epoch": 2, "step": 2, "val_ce": 2.8, "val_kd": 1.05, "val_tokens": 40},
    ]
    if with_train_tau:
        rows[3]["val_kd_train_tau"] = 0.45
    return rows


def test_validation_kd_is_labelled_at_tau_1_and_the_training_tau_value_apart(tmp_path):
    from spectrumkd.report import figures

    write_jsonl(tmp_path / "metrics.jsonl", _tau_rows(with_train_tau=True))
    write_json(
        tmp_path / "checkpoint" / "trainer_state.json",
        {
            "epoch": 2,
            "step": 2,
            "strategy": "baseline",
            "config": {"epochs": 2, "objective": "forward_kl", "alpha": 0.3},
            "best": {"epoch": 2, "metric": "val_kd", "value": 1.05},
        },
    )
    run = read_run(tmp_path)
    page = write_report(tmp_path).read_text()
    assert "val KL(teacher||student) at tau 1 (val_kd)" in page
    assert "val KL(teacher||student) at training tau (val_kd_train_tau)" in page
    assert "lowest validation KL(teacher||student) at tau 1 (val_kd)" in page
    assert "0.45" in page

    def legend(epochs: list[dict]) -> list[str]:
        figure = figures.training_figure(
            run.steps, epochs, alpha=0.3, best=run.trainer_state["best"], kd_name="KL(t||s)"
        )
        return [text.get_text() for text in figure.axes[1].get_legend().get_texts()]

    labels = legend(run.epochs)
    assert "val KL(t||s) at tau 1" in labels
    assert "val KL(t||s) at the epoch's training tau" in labels
    assert "kept: epoch 2 (lowest val KL(t||s) at tau 1)" in labels
    # Without the key (tau 1 epochs, or an older trainer) there is no second KD series.
    old = [r for r in _tau_rows(with_train_tau=False) if "val_kd" in r]
    assert not any("training tau" in label for label in legend(old))


def _finished_run(folder: Path, strategy: str, epochs_done: int, configured: int) -> None:
    """A run folder as the trainer leaves it after ``epochs_done`` epochs; ``configured`` is
    TrainConfig.epochs (the baseline's epochs, also in a curated run's config)."""
    rows = []
    for epoch in range(1, epochs_done + 1):
        rows.append({"epoch": epoch, "step": epoch, "ce": 3.0, "kd": 1.0, "temperature": 1.0})
        rows.append({"epoch": epoch, "step": epoch, "val_ce": 2.9, "val_kd": 1.0})
    write_jsonl(folder / "metrics.jsonl", rows)
    write_json(
        folder / "checkpoint" / "trainer_state.json",
        {
            "epoch": epochs_done,
            "step": epochs_done,
            "strategy": strategy,
            "config": {"epochs": configured, "alpha": 0.3, "objective": "forward_kl"},
        },
    )


def test_the_status_counts_the_runs_own_epochs(tmp_path):
    # The demo's +SpectrumKD run: a 4-epoch plan at step parity with a 3-epoch baseline.
    curated = tmp_path / "spectrumkd"
    _finished_run(curated, "spectrumkd", epochs_done=4, configured=3)
    run = read_run(curated)
    assert run.planned_epochs is None  # the config's 3 is the baseline's, not this run's
    page = write_report(curated).read_text()
    assert "epoch 4 of 3" not in page and "epoch 4 finished" in page
    (note,) = run.notes["Schedule"]
    assert "spectrumkd plan" in note and "baseline run" not in note
    # With the plan it trained on in its folder (written by the real curation code), the
    # status counts that plan's epochs and the page draws it.
    from spectrumkd.jobs import curate

    rng = np.random.default_rng(0)
    ids = [f"{i:03d}" for i in range(40)]
    plan = curate(
        ids, rng.lognormal(0.5, 0.4, 40), SpectrumKDConfig(epochs=4, warmup_epochs=1), curated
    )
    assert plan.num_epochs == 4
    run = read_run(curated)
    assert run.planned_epochs == 4 and "Schedule" not in run.notes
    page = write_report(curated).read_text()
    assert "epoch 4 of 4 finished" in page and "complete" in page
    assert (curated / "report" / "schedule.png").is_file()
    # A baseline run counts its configured epochs; its missing schedule is no surprise.
    baseline = tmp_path / "baseline"
    _finished_run(baseline, "baseline", epochs_done=2, configured=3)
    run = read_run(baseline)
    assert run.planned_epochs == 3 and "baseline run" in run.notes["Schedule"][0]
    assert "epoch 2 of 3 finished" in write_report(baseline).read_text()


def _validated_run(folder: Path, strategy: str, val: list[tuple[float, float]], best: int) -> None:
    """A finished run: one step row and one validation row (val_ce, val_kd at tau 1) per
    epoch, two optimiser steps per epoch, the kept epoch in the trainer's state."""
    rows = []
    for epoch, (ce, kd) in enumerate(val, start=1):
        step = 2 * epoch
        rows.append({"epoch": epoch, "step": step, "ce": 3.0, "kd": 1.0, "temperature": 1.0})
        rows.append({"epoch": epoch, "step": step, "val_ce": ce, "val_kd": kd, "val_tokens": 50})
    write_jsonl(folder / "metrics.jsonl", rows)
    write_json(
        folder / "checkpoint" / "trainer_state.json",
        {
            "epoch": len(val),
            "step": 2 * len(val),
            "strategy": strategy,
            "config": {"epochs": 2, "alpha": 0.3, "objective": "forward_kl"},
            "best": {"epoch": best, "metric": "val_kd", "value": val[best - 1][1]},
        },
    )


def test_two_runs_compare_on_one_page(tmp_path):
    from spectrumkd.jobs import curate
    from spectrumkd.report.comparison import comparison_rows, write_comparison_report

    base, new = tmp_path / "baseline", tmp_path / "spectrumkd"
    _validated_run(base, "baseline", [(3.0, 1.2), (2.9, 1.1)], best=2)
    _validated_run(new, "spectrumkd", [(3.0, 1.2), (2.8, 1.0), (2.85, 1.05)], best=2)
    ids = [f"{i:03d}" for i in range(40)]
    values = np.random.default_rng(0).lognormal(0.5, 0.4, 40)
    curate(ids, values, SpectrumKDConfig(epochs=3, warmup_epochs=1), new)
    runs = [("baseline", read_run(base)), ("spectrumkd", read_run(new))]
    rows = {r["metric"]: r for r in comparison_rows(runs)}
    kept = rows["val KL(teacher||student) at tau 1 at the kept epoch"]
    assert (kept["baseline"], kept["spectrumkd"], kept["better"]) == (1.1, 1.0, "spectrumkd")
    assert kept["diff"] == pytest.approx(-0.1) and kept["gain %"] == pytest.approx(-100 / 11)
    last = rows["val CE at the last epoch"]
    assert (last["baseline"], last["spectrumkd"], last["better"]) == (2.9, 2.85, "spectrumkd")
    assert rows["epochs finished"]["spectrumkd"] == "3 of 3"
    assert rows["epochs finished"]["baseline"] == "2 of 2"
    assert rows["kept epoch (why)"]["spectrumkd"] == "2 (lowest val KL(teacher||student) at tau 1)"

    # Both evaluated: the per-example comparison of spectrumkd compare joins the page.
    add_evaluation(base)
    add_evaluation(new)
    for run in (base, new):
        write_report(run)
    page = write_comparison_report({"baseline": base, "spectrumkd": new}, tmp_path / "cmp")
    text = page.read_text()
    assert "Validation curves" in text and "Metrics side by side" in text
    assert (page.parent / "validation-comparison.png").stat().st_size > 1000
    assert (page.parent / "evaluation-comparison.png").stat().st_size > 1000
    assert "Wilcoxon" in text and "pass@1" in text
    assert 'href="../baseline/report/index.html"' in text
    # The evaluation leaves (not evaluated any more): its figure goes, and the page says why.
    shutil.rmtree(new / "eval")
    text = write_comparison_report(
        {"baseline": base, "spectrumkd": new}, tmp_path / "cmp"
    ).read_text()
    assert "not evaluated: spectrumkd" in text
    assert not (page.parent / "evaluation-comparison.png").exists()
    # Validation numbers of different held-out rows do not compare: the page says so.
    _validated_run(new, "spectrumkd", [(3.0, 1.2)], best=1)
    rewritten = (new / "metrics.jsonl").read_text().replace('"val_tokens": 50', '"val_tokens": 70')
    (new / "metrics.jsonl").write_text(rewritten)
    text = write_comparison_report([("baseline", base), ("spectrumkd", new)], tmp_path / "cmp")
    assert "validated on different rows" in text.read_text()
    with pytest.raises(ValueError, match="at least two runs"):
        write_comparison_report({"baseline": base}, tmp_path / "one")


def test_the_cli_compares_several_run_folders(tmp_path, capsys):
    base, new = tmp_path / "runs" / "baseline", tmp_path / "runs" / "spectrumkd"
    _validated_run(base, "baseline", [(3.0, 1.2), (2.9, 1.1)], best=2)
    _validated_run(new, "spectrumkd", [(3.0, 1.2), (2.8, 1.0)], best=2)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(base), str(new)])
    args.run(args)
    page = tmp_path / "runs" / "comparison" / "index.html"
    assert "wrote" in capsys.readouterr().out  # rich wraps the long path: not compared
    assert "baseline vs spectrumkd" in page.read_text()
    args = parser.parse_args(["report", str(base), str(tmp_path / "typo")])
    with pytest.raises(FileNotFoundError, match="typo"):
        args.run(args)


def test_evaluation_folders_are_read_per_set(tmp_path):
    add_evaluation(tmp_path)
    run = read_run(tmp_path)
    sets = {s.name: s for s in run.eval_sets}
    assert set(sets) == {"dolly", "selfinst", "gsm8k"}
    assert sets["dolly"].label == "DollyEval" and len(sets["dolly"].per_run) == 3
    assert sets["dolly"].metrics["rougeL"] == pytest.approx(
        np.mean(list(sets["dolly"].per_run.values()))
    )
    assert sets["dolly"].metrics["ce"] == pytest.approx((2.0 * 10 + 3.0 * 30) / 40)  # per token
    assert sets["dolly"].metrics["kl_forward"] == 0.4  # rows without a teacher's KL left out
    assert sets["gsm8k"].metrics["pass_at_1"] == 12.0 and "seconds" not in sets["gsm8k"].metrics
    assert [name for name, _ in run.comparisons] == ["eval/compare.json"]


def test_the_evaluation_stage_output_is_read_as_written(tiny_tokenizer, shared_data, tmp_path):
    """Against the real evaluation runner: the means the report shows are the ones it wrote."""
    runner = pytest.importorskip("spectrumkd.evaluation.instruction.runner")
    summary = runner.evaluate_instruction_following(
        build_tiny_llama(len(tiny_tokenizer)),
        tiny_tokenizer,
        tmp_path / "eval",
        suites=["dolly"],
        data_root=shared_data,
        decoding=runner.Decoding(seeds=(10, 20), max_new_tokens=4, batch_size=4),
        limit=3,
        teacher=build_tiny_llama(len(tiny_tokenizer), num_layers=2, seed=1),
        progress=False,
    )
    (dolly,) = read_run(tmp_path).eval_sets
    written = summary["suites"]["dolly"]
    assert dolly.label == written["label"]
    assert dolly.metrics["rougeL"] == pytest.approx(written["rougeL"])
    assert dolly.metrics["rougeL_std"] == pytest.approx(written["rougeL_std"])
    for key in ("ce", "kl_forward", "kl_reverse"):
        assert dolly.metrics[key] == pytest.approx(written["quality"][key])
    assert dolly.per_run == pytest.approx({k: v["rougeL"] for k, v in written["runs"].items()})


@pytest.mark.parametrize(
    "value",
    [
        [{"set": "a", "gain": 1.0, "p_value": 0.01}],
        {"rows": [{"set": "a", "gain": 1.0, "p_value": 0.01}], "base": "x"},
        {"sets": {"a": {"gain": 1.0, "p_value": 0.01}}},
    ],
)
def test_comparison_tables_of_the_plausible_shapes(value):
    _, tables = comparison_tables(value)
    assert tables == [[{"set": "a", "gain": 1.0, "p_value": 0.01}]]


def test_a_rerun_removes_figures_that_no_longer_apply(real_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(real_run / "scores", run_dir / "scores")
    shutil.copy(real_run / "metrics.jsonl", run_dir / "metrics.jsonl")
    out = tmp_path / "out"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"not ours")
    write_report(run_dir, out)
    assert (out / "training.png").exists()
    (run_dir / "metrics.jsonl").unlink()
    write_report(run_dir, out)
    assert not (out / "training.png").exists() and (out / "holiday.png").exists()


def test_the_cli_subcommand(real_run, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(real_run), "--out", str(tmp_path / "r")])
    args.run(args)
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "r" / "index.html").is_file()


# ---- the page in a real browser ---------------------------------------------------------


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    return path


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    commands in on fd 3, replies and events out on fd 4, NUL-separated JSON), so no websocket
    library, port or network is needed. Console messages, exceptions, failed loads and every
    request come back as events; unlike scraping ``--enable-logging`` output, their format is
    the protocol's, not the log line's."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Above 10, so the dup2 onto 3 and 4 in the child cannot clobber one another.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)

        def wire() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # dbus chatter; errors that matter arrive as events
            pass_fds=(3, 4),
            preexec_fn=wire,  # fine here: the test process starts no threads of its own
        )
        for fd in (to_browser_r, from_browser_w, child_in, child_out):
            os.close(fd)
        self.write_fd, self.read_fd = to_browser_w, from_browser_r
        self.buffer = b""
        self.events: list[dict] = []
        self.next_id = 0

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.read_fd], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.process.poll()})")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        command = {"id": self.next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self.write_fd, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._message(deadline)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            message = self._message(deadline)
            self.events.append(message)
            if message.get("method") == method:
                return message

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):  # it may be gone already
            self.send("Browser.close", timeout=10)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.write_fd)
        os.close(self.read_fd)


def open_page(page: Path, profile: Path, screenshot: Path | None = None) -> dict:
    """Load ``page`` in headless Chromium; return its images' states, the console errors, the
    requested URLs and (optionally) a full-page screenshot written to ``screenshot``."""
    browser = DevTools(chromium(), profile)
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            browser.send(f"{domain}.enable", session)
        browser.send("Page.navigate", session, url=page.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")  # fires after every <img> has loaded or failed
        images = browser.send(
            "Runtime.evaluate",
            session,
            expression="Array.from(document.images).map(i => ({src: i.getAttribute('src'),"
            " complete: i.complete, width: i.naturalWidth}))",
            returnByValue=True,
        )["result"]["value"]
        if screenshot is not None:
            size = browser.send("Page.getLayoutMetrics", session)["cssContentSize"]
            shot = browser.send(
                "Page.captureScreenshot",
                session,
                format="png",
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        errors = []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                errors.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(
                    f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}"
                )
        requests = [
            e["params"]["request"]["url"]
            for e in browser.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        return {"images": images, "errors": errors, "requests": requests}
    finally:
        browser.close()


def test_the_browser_check_catches_a_broken_image_and_a_console_error(tmp_path):
    """The harness itself: a page with a missing image and a console error must fail it."""
    page = tmp_path / "bad.html"
    page.write_text('<img src="missing.png"><script>console.error("boom")</script>')
    seen = open_page(page, tmp_path / "profile")
    assert seen["images"] == [{"src": "missing.png", "complete": True, "width": 0}]
    assert any("boom" in e for e in seen["errors"])
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in seen["errors"])


def test_the_report_of_a_real_run_opens_in_chromium_with_every_figure(real_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(real_run, run_dir, ignore=shutil.ignore_patterns("report"))
    add_evaluation(run_dir)
    page = write_report(run_dir)
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    assert pngs == [
        "comparison-1.png",
        "difficulty.png",
        "evaluation-pass_at_1.png",
        "evaluation-rougeL.png",
        "schedule.png",
        "spectrum.png",
        "training.png",
    ]
    assert html.count("<figcaption>") == len(pngs)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "screenshot.png"
    seen = open_page(page, tmp_path / "profile", screenshot)
    assert seen["errors"] == []
    assert sorted(i["src"] for i in seen["images"]) == pngs
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    # Self-contained: the page and its own PNGs are the only things the browser fetched.
    assert all(url.startswith(page.parent.resolve().as_uri()) for url in seen["requests"])
    assert screenshot.stat().st_size > 10_000
    for path in page.parent.iterdir():
        shutil.copy(path, ARTIFACTS / path.name)


def test_the_comparison_page_opens_in_chromium_with_every_figure(tmp_path):
    from spectrumkd.report.comparison import write_comparison_report

    chromium()  # skip before building anything where there is no browser
    base, new = tmp_path / "baseline", tmp_path / "spectrumkd"
    _validated_run(base, "baseline", [(3.0, 1.2), (2.9, 1.1)], best=2)
    _validated_run(new, "spectrumkd", [(3.0, 1.2), (2.8, 1.0)], best=2)
    for run in (base, new):
        add_evaluation(run)
    page = write_comparison_report({"baseline": base, "spectrumkd": new}, tmp_path / "cmp")
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    seen = open_page(page, tmp_path / "profile")
    assert seen["errors"] == []
    assert sorted(i["src"] for i in seen["images"]) == [
        "evaluation-comparison.png",
        "validation-comparison.png",
    ]
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    assert all(url.startswith(page.parent.resolve().as_uri()) for url in seen["requests"])


def test_judge_win_rates_and_per_metric_comparisons_reach_the_page(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    write_json(
        run_dir / "eval" / "judge" / "summary.json",
        {
            "dolly": {"win_rate": 37.5, "unparseable_share": 0.25, "n": 4},
            "judge": {"model": "judge-model", "temperature": 0.7},
        },
    )
    rows = [
        {
            "set": "dolly",
            "metric": metric,
            "base": 1.0,
            "new": 1.1,
            "gain_pct": gain,
            "p_value": p,
            "n_pairs": 10,
        }
        for metric, gain, p in (("rougeL", 10.0, 0.02), ("ce", -3.0, 0.5))
    ]
    write_json(run_dir / "eval" / "compare_base.json", {"rows": rows})
    run = read_run(run_dir)
    (dolly,) = run.eval_sets
    assert dolly.metrics == {"win_rate": 37.5, "unparseable_share": 0.25}
    page = write_report(run_dir).read_text()
    assert "37.5" in page and "comparison-1.png" in page
    # One bar per (set, metric), not one per set overwritten by the last metric.
    from spectrumkd.report import figures

    captured = {}
    original = figures.comparison_figure

    def spy(gains, pvalues, unit):
        captured.update(gains)
        return original(gains, pvalues, unit)

    monkeypatch.setattr(figures, "comparison_figure", spy)
    write_report(run_dir)
    assert captured == {"dolly rougeL": 10.0, "dolly ce": -3.0}


@pytest.mark.parametrize("strategy", ["one_pass", "srd"])
def test_a_staged_plan_is_drawn_as_bands_over_the_ranks_with_its_settings(tmp_path, strategy):
    """Any strategy's schedule.json on the same page: one band per epoch at the ranks it trains
    on, the stages and restarts named in the caption and the table, the settings in the facts."""
    from spectrumkd.jobs import curate

    ids = [f"r{i}" for i in range(40)]
    difficulties = np.random.default_rng(3).lognormal(size=40)
    plan = curate(ids, difficulties, {"epochs_per_stage": 2}, tmp_path, strategy=strategy)
    page = write_report(tmp_path).read_text()
    assert (tmp_path / "report" / "schedule.png").stat().st_size > 1000
    stages = plan.num_stages
    assert f"{plan.num_epochs} epochs in {stages} stage(s)" in page
    for number in range(1, stages + 1):
        first = plan.stage_epochs(number)[0]
        ranks = f"ranks {first.info['first_rank']}-{first.info['last_rank']}"
        assert f"stage {number}: epochs {first.epoch}-{first.epoch + 1}, {ranks}" in page
    restarts = [str(e.epoch) for e in plan.epochs if e.restart]
    assert f"restart at epoch(s) {', '.join(restarts)}" in page
    assert "epochs_per_stage=2" in page and "lack the ranks" not in page
    if strategy == "one_pass":  # disjoint buckets: stage 2 starts where stage 1 ended
        assert "ranks 11-20" in page
