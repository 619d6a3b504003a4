"""The scorer on the real SmolLM2 student (the embedded default teacher, shrunk)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from spectrumkd.data import load_examples, tokenize_examples
from spectrumkd.models import DEFAULT_TEACHER, load_model, load_tokenizer, shrink_model
from spectrumkd.scoring import ScoringSettings, score_examples

# The 20 layers block influence keeps on Dolly calibration rows (see `spectrumkd demo`).
KEEP = [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 18, 19, 20, 21, 22, 23, 24, 27, 28, 29]


@pytest.mark.slow
def test_scorer_matches_labels_loss_on_the_real_smollm2_student():
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    student = shrink_model(load_model(DEFAULT_TEACHER), KEEP)
    dataset = tokenize_examples(load_examples("embedded:dolly", limit=8), tokenizer, max_length=256)
    assert len(dataset) >= 5
    # float32: compared with the model's own float32 labels= loss to 1e-4 (bf16 autocast, the
    # default on a CPU with AMX, is measured against float32 in benchmarks/bench_precision.py)
    bucketed = score_examples(
        student,
        dataset.examples,
        pad_token_id=tokenizer.pad_token_id,
        settings=ScoringSettings(precision="float32"),
        progress=False,
    )
    single = score_examples(
        student,
        dataset.examples,
        pad_token_id=tokenizer.pad_token_id,
        settings=ScoringSettings(max_batch_size=1, precision="float32"),
        progress=False,
    )
    np.testing.assert_allclose(bucketed.loss_mean, single.loss_mean, rtol=0, atol=1e-4)
    for example, mean in zip(dataset.examples, bucketed.loss_mean, strict=True):
        with torch.inference_mode():
            loss = student(
                input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])
            ).loss
        assert mean == pytest.approx(loss.item(), abs=1e-4)
    assert (
        0.5 < float(np.median(bucketed.loss_mean)) < 15
    )  # a working model, not noise (ln 49152 = 10.8)


class ForwardCounter:
    """Counts the forward calls of every torch module while active (a global forward hook)."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> ForwardCounter:
        self.count = 0
        self._hook = torch.nn.modules.module.register_module_forward_hook(self._seen)
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()

    def _seen(self, module, args, output) -> None:
        self.count += 1


def without_time(run) -> dict:
    return {**asdict(run), "seconds": None}


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path):
    import json

    from spectrumkd.demo import run_demo

    options = {
        "rows": 60,
        "num_layers": 20,
        "quiet": True,
        "distill_rows": 16,
        "baseline_epochs": 2,
        "validation_rows": 8,
    }
    with ForwardCounter() as first_run:
        result = run_demo(tmp_path / "demo", **options)
    assert first_run.count > 0  # the counter sees the models run
    schedule = json.loads((tmp_path / "demo" / "schedule.json").read_text())
    zones = schedule["zones"]
    assert sum(z["size"] for z in zones.values()) == len(result.score.table) <= 60
    baseline, curated = result.distilled
    assert (baseline.run, baseline.epochs, baseline.example_passes) == ("baseline", 2, 32)
    # Step parity: SpectrumKD trains 12 of the 16 rows per epoch, for round(2 * 16 / 12) epochs.
    assert (curated.run, curated.epochs, curated.example_passes) == ("spectrumkd", 3, 36)
    for run in (baseline, curated):
        assert 0 < run.val_kd < run.val_ce and 1 <= run.best_epoch <= run.epochs
        assert (tmp_path / "demo" / "distill" / run.run / "final" / "model.safetensors").exists()
        assert (tmp_path / "demo" / "distill" / run.run / "report" / "index.html").exists()
    assert (tmp_path / "demo" / "report" / "index.html").exists()
    assert len(schedule["epochs"]) == 25 and schedule["epochs"][-1]["temperature"] == 2.0
    report = json.loads((tmp_path / "demo" / "student" / "shrink_report.json").read_text())
    assert len(report["keep_layers"]) == 20 and report["student_loss"] > report["teacher_loss"]
    first = (tmp_path / "demo" / "schedule.json").read_bytes()
    # The rerun reuses the student, the score shards and the finished runs, so no model runs a
    # forward pass: what it recomputed is counted, not timed (timings vary with the load).
    with ForwardCounter() as rerun:
        again = run_demo(tmp_path / "demo", **options)
    assert rerun.count == 0
    assert (tmp_path / "demo" / "schedule.json").read_bytes() == first
    np.testing.assert_array_equal(again.score.table.loss_mean, result.score.table.loss_mean)
    assert [without_time(r) for r in again.distilled] == [without_time(r) for r in result.distilled]
