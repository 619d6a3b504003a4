"""The paper_cpu profile's forward-KL matrix (issue 17) end to end on tiny random models: the
learning-rate stage first (cells refuse to run before its choice), the baseline trial at the
chosen rate reused by its cell, selection by sampled validation ROUGE-L with the CE-selected
checkpoint evaluated beside it, answers committed per seed, and the summary from the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_tiny_llama

from experiments.config import load_experiment
from experiments.run import main
from experiments.summary import summarize
from experiments.summary_page import summary_markdown
from spectrumkd.distillation import trainer
from spectrumkd.jobs import training as training_job

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "config.yaml"


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture()
def paper_world(tmp_path, tiny_tokenizer):
    teacher = tmp_path / "teacher"
    build_tiny_llama(len(tiny_tokenizer), num_layers=4, seed=1).save_pretrained(teacher)
    tiny_tokenizer.save_pretrained(teacher)
    test_rows = [
        {"instruction": f"Name colour {i}.", "input": "", "output": f"Colour {i} is red."}
        for i in range(6)
    ]
    train_rows = [
        {"instruction": f"Count to {i}.", "context": "", "response": " ".join(map(str, range(i)))}
        for i in range(1, 21)
    ]
    heal_rows = [{"question": f"What is {i} + {i}?", "answer": f"{2 * i}"} for i in range(8)]
    overrides = {
        "results_dir": str(tmp_path / "results"),
        "runs_dir": str(tmp_path / "runs"),
        "teacher": str(teacher),
        "student.shrink.num_layers": 2,
        "student.shrink.calibration_rows": 8,
        "heal.data.source": _jsonl(tmp_path / "heal.jsonl", heal_rows),
        "heal.data.limit": None,
        "heal.data.max_length": 128,
        "heal.train.batch_size": 4,
        "heal.train.save_every_steps": 0,
        "data.source": _jsonl(tmp_path / "train.jsonl", train_rows),
        "data.max_length": 128,
        "data.validation_ratio": 0.25,
        "teacher_cache_k": 16,
        "baseline_epochs": 3,
        "objectives": {"fkl": {"objective": "forward_kl"}},
        "seeds": [1, 2],
        "lr_selection.grid": [1e-2, 1e-3],
        "train.batch_size": 4,
        "train.val_max_new_tokens": 3,
        "train.save_every_steps": 0,
        "train.log_every": 1,
        "test.source": _jsonl(tmp_path / "test.jsonl", test_rows),
        "test.quality_max_length": 128,
        "test.batch_size": 4,
        "test.max_new_tokens": 3,
    }
    args = ["--config", str(CONFIG), "--profile", "paper_cpu", "--quiet"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return tmp_path, args


def test_the_shipped_profile_is_the_papers_regime():
    exp = load_experiment(CONFIG, "paper_cpu")
    assert exp.baseline_epochs >= 8 and exp.spectrumkd["warmup_fraction"] == 0.2
    assert exp.lr_selection is not None and exp.lr_selection.grid == (5e-4, 1e-4, 5e-5)
    assert exp.data["limit"] is None and exp.data["validation_ratio"] == 0.1
    assert exp.train["select_metric"] == "val_rouge" and exp.train["val_rouge"] == "sampled"
    assert exp.train["lr_schedule"] == "constant" and "learning_rate" not in exp.train
    test = exp.test
    assert test.rouge_rows is None and test.limit is None and len(test.sample_seeds) >= 3
    assert test.max_new_tokens >= 256 and test.primary == ("rougeL_sampled",)
    assert test.evaluate_ce_selected and test.greedy
    with pytest.raises(ValueError, match="train.learning_rate is chosen by lr_selection"):
        load_experiment(CONFIG, "paper_cpu", ["train.learning_rate=1e-4"])


def test_paper_matrix_runs_end_to_end_in_pieces(paper_world, monkeypatch, capsys):
    tmp, args = paper_world
    results = tmp / "results"

    # A cell before the learning-rate choice is refused in one line, before anything runs.
    capsys.readouterr()
    assert main([*args, "run", "--cell", "fkl-spectrumkd-seed1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "lr.json does not exist yet" in error
    assert not results.exists()

    # The stage: setup, one trial per rate, the choice.
    assert main([*args, "run", "--cell", "lr"]) == 0
    choice = json.loads((results / "lr.json").read_text())
    trials = {t: json.loads((results / f"lr-{t}.json").read_text()) for t in ("0.01", "0.001")}
    assert choice["metric"] == "val_rouge"
    best = {t: trial["training"]["best"]["value"] for t, trial in trials.items()}
    assert choice["learning_rate"] == float(max(best, key=lambda t: (best[t], -float(t))))
    for trial in trials.values():
        curve = trial["training"]["validation"]
        assert len(curve) == 3 and all("val_rouge" in row for row in curve)
        assert trial["training"]["best"]["metric"] == "val_rouge"
        assert (
            trial["training"]["best_ce_epoch"]
            == min(curve, key=lambda r: (r["val_ce"], r["epoch"]))["epoch"]
        )
    chosen_folder = tmp / "runs" / f"lr-{choice['learning_rate']:g}"
    assert (chosen_folder / "best_ce" / "config.json").is_file()
    assert (chosen_folder / "checkpoint").is_dir()  # kept for the baseline cell
    for tag in trials:
        if float(tag) != choice["learning_rate"]:
            assert not (tmp / "runs" / f"lr-{tag}" / "checkpoint").exists()  # pruned
    assert not (chosen_folder / "epochs").exists()

    # The baseline of seed 1 is the chosen trial's training: no step is trained again.
    epochs_trained = []
    real_epoch = trainer.train_epoch
    monkeypatch.setattr(
        trainer, "train_epoch", lambda *a: epochs_trained.append(a[2]) or real_epoch(*a)
    )
    assert main([*args, "run", "--cell", "fkl-baseline-seed1"]) == 0
    monkeypatch.undo()
    assert epochs_trained == []
    baseline = json.loads((results / "fkl-baseline-seed1.json").read_text())
    assert baseline["run_config"]["train"]["learning_rate"] == choice["learning_rate"]
    assert (
        baseline["training"]["steps"] == trials[f"{choice['learning_rate']:g}"]["training"]["steps"]
    )
    assert baseline["settings"]["chosen_learning_rate"] == choice["learning_rate"]
    assert baseline["training"]["trained_as"] == chosen_folder.name
    assert not (chosen_folder / "checkpoint").exists()  # pruned once the cell is finished

    # The rest of the matrix, with a validation ROUGE-L that prefers the first epoch (the real
    # one ran in the trials), so that the CE-selected checkpoint is another epoch.
    def first_epoch_validators(train, inputs):
        calls = []

        def validate(model):
            calls.append(1)
            return {"val_rouge": 1.0 if len(calls) == 1 else 0.0}

        return [validate]

    monkeypatch.setattr(training_job, "epoch_validators", first_epoch_validators)
    assert main([*args, "run"]) == 0
    monkeypatch.undo()
    assert json.loads((results / "fkl-baseline-seed1.json").read_text()) == baseline
    names = sorted(p.stem for p in results.glob("*.json"))
    assert names == sorted(
        ["setup", "lr", "lr-0.01", "lr-0.001"]
        + [f"fkl-{arm}-seed{s}" for arm in ("baseline", "spectrumkd") for s in (1, 2)]
    )
    separate = 0
    for seed in (1, 2):
        for arm in ("baseline", "spectrumkd"):
            cell = json.loads((results / f"fkl-{arm}-seed{seed}.json").read_text())
            assert cell["training"]["best"]["metric"] == "val_rouge"
            assert cell["counts"]["rougeL_sampled_examples"] == 6  # every test row
            files = sorted(Path(p).name for p in cell["answers"])
            assert files == ["greedy.jsonl", "seed10.jsonl", "seed20.jsonl", "seed30.jsonl"]
            # The committed answers give back the per-example score.
            rows = [
                [json.loads(line) for line in (results / cell["cell"] / "selected" / f).open()]
                for f in files[1:]
            ]
            for i, row in enumerate(rows[0]):
                mean = sum(r[i]["rougeL"] for r in rows) / 3
                assert cell["per_example"]["rougeL_sampled"][row["id"]] == pytest.approx(mean)
            ce = cell["ce_selected"]
            assert (
                ce["epoch"]
                == min(cell["training"]["validation"], key=lambda r: (r["val_ce"], r["epoch"]))[
                    "epoch"
                ]
            )
            separate += not ce["same_as_selected"]
            if ce["same_as_selected"]:
                assert ce["epoch"] == cell["training"]["best"]["epoch"]
            else:
                assert set(ce["per_example"]["rougeL_sampled"]) == set(
                    cell["per_example"]["rougeL_sampled"]
                )
                assert (results / cell["cell"] / "ce_selected" / "seed10.jsonl").is_file()

    assert separate >= 1

    # The estimate prices the same steps the cells took.
    capsys.readouterr()
    assert main([*args, "estimate"]) == 0
    text = capsys.readouterr().out
    steps = {
        arm: json.loads((results / f"fkl-{arm}-seed2.json").read_text())["training"]["steps"]
        for arm in ("baseline", "spectrumkd")
    }
    assert f"baseline {steps['baseline']} (3 epochs)" in text
    assert f"+SpectrumKD {steps['spectrumkd']} (" in text
    assert "| lr-0.01 (baseline, seed 1) |" in text and "Budget 15 h" in text

    # The summary, from the committed files.
    assert main([*args, "summarize"]) == 0
    summary = summarize(results)
    assert summary["primary"] == ["rougeL_sampled"]
    assert summary["learning_rate"]["chosen"] == choice["learning_rate"]
    entry = summary["objectives"][0]
    assert entry["seeds"] == [1, 2]
    assert "ce_selected" in entry and entry["paper"][0]["baseline"] == 23.49
    sampled = next(r for r in entry["rows"] if r["metric"] == "rougeL_sampled")
    assert 0 <= sampled["seed_wins"] <= 2
    text = summary_markdown(summary)
    assert "## Learning rate" in text and "lowest-validation-CE checkpoint" in text
    assert "Validation ROUGE-L of sampled answers by epoch" in text
    assert "ROUGE-L, sampled (tau 1)" in text.split("## The claim")[1]
    assert (results / "summary.md").read_text() == text


def test_epoch_keeper_keeps_the_current_and_the_ce_best_epoch(tmp_path):
    from experiments.training import BEST_CE, EPOCHS, epoch_keeper, finish_ce_best

    class Model:
        def save_pretrained(self, folder, **kwargs):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "config.json").write_text("{}")

    metrics = tmp_path / "metrics.jsonl"
    keep = epoch_keeper(tmp_path)
    for epoch, val_ce in enumerate([3.0, 2.0, 2.5, 2.0], start=1):
        assert keep(Model()) == {}  # the trainer logs the epoch after its validators
        kept = sorted(int(p.name) for p in (tmp_path / EPOCHS).iterdir())
        logged = {1: 3.0, 2: 2.0, 3: 2.5}
        best = min((e for e in logged if e < epoch), key=lambda e: logged[e], default=None)
        assert kept == sorted({epoch, *([best] if best else [])})
        with metrics.open("a") as out:
            out.write(json.dumps({"epoch": epoch, "step": epoch * 10, "loss": 1.0}) + "\n")
            out.write(json.dumps({"epoch": epoch, "step": epoch * 10, "val_ce": val_ce}) + "\n")
    assert finish_ce_best(tmp_path) == 2  # the earliest of the ties, as the trainer's choice
    assert (tmp_path / BEST_CE / "config.json").is_file()
    assert not (tmp_path / EPOCHS).exists()
    assert finish_ce_best(tmp_path) == 2 and (tmp_path / BEST_CE).is_dir()  # idempotent
