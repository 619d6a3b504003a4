"""The demo's own logic with tiny models: what its results table says, and (below) the
distillation stage's run folders, reports and comparison page."""

from __future__ import annotations

import pytest
from rich.console import Console

from spectrumkd.demo import DistillResult, results_table


def _text(table) -> str:
    console = Console(record=True, width=400, color_system=None)
    console.print(table)
    return console.export_text()


def test_the_results_table_says_what_each_column_measures():
    results = [
        DistillResult("baseline", 3, 36, 288, 3, 3.1, 1.16, 60.0, "b", train_temperature=1.0),
        DistillResult("spectrumkd", 4, 36, 288, 4, 3.2, 1.21, 61.0, "s", train_temperature=2.0),
    ]
    text = _text(results_table(results))
    # The KL column names its direction and its temperature, so a run that trained at tau 2
    # is not read as halving the KL; the kept epoch says which, why and at which tau it trained.
    assert "val KL(teacher||student) at tau 1" in text
    assert "val CE" in text and "nats per response token" in text
    assert "4 of 4 (tau 2)" in text and "3 of 3 (tau 1)" in text
    assert "lowest validation KL(teacher||student) at tau 1" in text
    assert "select_metric=val_kd" in text
    spectrumkd_row = next(line for line in text.splitlines() if "spectrumkd" in line)
    assert "3.2000" in spectrumkd_row and "1.2100" in spectrumkd_row


def test_the_distillation_stage_saves_each_plan_and_ends_with_a_comparison(
    tmp_path, tiny_tokenizer, tiny_model_dir
):
    """The demo's stage 6 and its reports with tiny models: the +SpectrumKD run folder holds
    the plan it trained on, its page counts that plan's epochs, and one page compares the
    two runs."""
    import json

    from conftest import build_tiny_llama

    from spectrumkd.data import load_examples, tokenize_examples
    from spectrumkd.demo import distill_stage, write_reports
    from spectrumkd.jobs import score_dataset
    from spectrumkd.models import load_model
    from spectrumkd.report import read_run
    from spectrumkd.report.comparison import comparison_rows

    dataset = tokenize_examples(
        load_examples("embedded:dolly", limit=150), tiny_tokenizer, max_length=256
    )
    score = score_dataset(
        load_model(tiny_model_dir),
        dataset,
        tmp_path / "scores",
        pad_token_id=tiny_tokenizer.pad_token_id,
        progress=False,
    )
    baseline, curated = distill_stage(
        tmp_path,
        dataset.examples,
        score,
        tiny_model_dir,
        tiny_tokenizer,
        rows=16,
        baseline_epochs=2,
        validation_rows=8,
        progress=False,
        teacher=build_tiny_llama(len(tiny_tokenizer), num_layers=2, seed=1),
    )
    curated_dir, baseline_dir = (
        tmp_path / "distill" / "spectrumkd",
        tmp_path / "distill" / "baseline",
    )
    schedule = json.loads((curated_dir / "schedule.json").read_text())
    trained = {r["epoch"] for r in map(json.loads, (curated_dir / "metrics.jsonl").open())}
    assert len(schedule["epochs"]) == curated.epochs == max(trained) > baseline.epochs == 2
    window_ids = {i for epoch in schedule["epochs"] for i in epoch["ids"]}
    assert window_ids <= {e.id for e in dataset.examples}
    assert not (baseline_dir / "schedule.json").exists()
    # the run's spectrum keeps the cross-entropy it was ranked by, column by column
    loss_of = dict(zip(score.table.ids, score.table.loss_mean, strict=True))
    spectrum = [json.loads(line) for line in (curated_dir / "spectrum.jsonl").open()]
    assert spectrum and all(
        row["loss_mean"] == pytest.approx(loss_of[row["id"]]) for row in spectrum
    )
    for folder in (baseline_dir, curated_dir):  # each kept student loads with its tokenizer
        assert (folder / "best" / "tokenizer.json").is_file()
        assert (folder / "final" / "tokenizer.json").is_file()

    pages = write_reports(tmp_path, [baseline, curated])
    assert set(pages) == {"curation", "baseline", "spectrumkd", "comparison"}
    page = pages["spectrumkd"].read_text()
    assert f"epoch {curated.epochs} of {curated.epochs} finished" in page
    assert "not curated" not in page and "schedule.png" in page
    assert "epoch 2 of 2 finished" in pages["baseline"].read_text()

    comparison = pages["comparison"]
    assert comparison.parent == tmp_path / "distill" / "comparison"
    assert (comparison.parent / "validation-comparison.png").stat().st_size > 1000
    text = comparison.read_text()
    assert "baseline vs spectrumkd" in text and "Metrics side by side" in text
    rows = {
        r["metric"]: r
        for r in comparison_rows(
            [("baseline", read_run(baseline_dir)), ("spectrumkd", read_run(curated_dir))]
        )
    }
    kept = rows["val KL(teacher||student) at tau 1 at the kept epoch"]
    assert (kept["baseline"], kept["spectrumkd"]) == (
        pytest.approx(baseline.val_kd, abs=1e-4),
        pytest.approx(curated.val_kd, abs=1e-4),
    )
    steps = rows["optimiser steps"]
    assert (steps["baseline"], steps["spectrumkd"]) == (baseline.steps, curated.steps)


def test_the_demo_runs_any_strategy_against_the_baseline_and_its_page_draws_the_stages(
    tmp_path, tiny_tokenizer, tiny_model_dir
):
    """``spectrumkd demo --strategy srd`` with tiny models: the curated run trains on the SRD
    plan of its rows, ranked by the metric asked for, with the baseline's example visits as
    near as the stage arithmetic allows; its page draws the stages and names the settings."""
    import json
    import math

    import numpy as np
    from conftest import build_tiny_llama

    from spectrumkd.batching import IGNORE_INDEX
    from spectrumkd.curation import build_strategy
    from spectrumkd.curation.srd import SRDConfig
    from spectrumkd.data import load_examples, tokenize_examples
    from spectrumkd.demo import distill_stage, write_reports
    from spectrumkd.jobs import score_dataset
    from spectrumkd.models import load_model

    dataset = tokenize_examples(
        load_examples("embedded:dolly", limit=150), tiny_tokenizer, max_length=256
    )
    assert len(dataset.examples) >= 32  # 8 validation and 24 training rows
    score = score_dataset(
        load_model(tiny_model_dir),
        dataset,
        tmp_path / "scores",
        pad_token_id=tiny_tokenizer.pad_token_id,
        progress=False,
    )
    baseline, curated = distill_stage(
        tmp_path,
        dataset.examples,
        score,
        tiny_model_dir,
        tiny_tokenizer,
        rows=24,
        baseline_epochs=2,
        validation_rows=8,
        progress=False,
        teacher=build_tiny_llama(len(tiny_tokenizer), num_layers=2, seed=1),
        strategy="srd",
        metric="length",
    )
    # Independent: the demo's seeded rows, their response lengths counted from the labels.
    order = np.random.default_rng(0).permutation(len(dataset.examples))
    training = [dataset.examples[i] for i in order[8:32]]
    lengths = [sum(1 for t in e.labels if t != IGNORE_INDEX) for e in training]
    # 24 rows, 18 kept in stages of 6/12/18 (36 visits a pass): 2 x 24 / 36 -> 1 epoch each.
    expected = build_strategy("srd", SRDConfig(epochs_per_stage=1)).plan(
        [e.id for e in training], lengths
    )
    folder = tmp_path / "distill" / "srd"
    schedule = json.loads((folder / "schedule.json").read_text())
    assert schedule == json.loads(json.dumps(expected.to_dict()))
    assert curated.run == "srd" and curated.epochs == 3 and curated.example_passes == 36
    assert curated.steps == sum(math.ceil(size / 8) for size in (6, 12, 18)) == 6
    assert baseline.steps == 2 * math.ceil(24 / 8) == 6
    metric = json.loads((tmp_path / "distill" / "scores-length" / "metric.json").read_text())
    assert metric["metric"] == "length"

    pages = write_reports(tmp_path, [baseline, curated])
    page = pages["srd"].read_text()
    assert (pages["srd"].parent / "schedule.png").stat().st_size > 1000
    assert "srd (selection_ratio=0.75" in page and "3 epochs in 3 stage(s)" in page
    assert "stage 2: epochs 2-2, ranks 1-12, tau 1.5, KD weight 0.9" in page
    assert "restart at epoch(s) 2, 3" in page
