"""`spectrumkd distill` from a YAML run config, end to end on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import save_tiny_pair
from transformers import AutoModelForCausalLM

from spectrumkd.cli import main
from spectrumkd.distillation import RunConfig, apply_override


@pytest.fixture()
def tiny_pair(tmp_path, tiny_tokenizer):
    teacher, student = save_tiny_pair(tmp_path, tiny_tokenizer)
    rows = [
        {
            "instruction": f"Count to {i}.",
            "input": "",
            "output": " ".join(str(j) for j in range(i + 1)),
        }
        for i in range(12)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return teacher, student


def test_distill_with_spectrumkd_curation_writes_a_loadable_student(tmp_path, tiny_pair):
    teacher, student = tiny_pair
    config = {
        "teacher": str(teacher),
        "student": str(student),
        "output_dir": str(tmp_path / "run"),
        "data": {
            "source": str(tmp_path / "train.jsonl"),
            "max_length": 128,
            "validation_ratio": 0.25,
        },
        "curation": {"lambda_a": 0.1, "lambda_b": 0.1, "epochs": 3, "warmup_epochs": 1},
        "train": {"batch_size": 4, "learning_rate": 1e-3, "log_every": 1},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert (
        main(
            [
                "distill",
                "--config",
                str(tmp_path / "run.yaml"),
                "--set",
                "train.alpha=0.5",
                "--quiet",
            ]
        )
        == 0
    )
    run = tmp_path / "run"
    schedule = json.loads((run / "schedule.json").read_text())
    assert len(schedule["epochs"]) == 3 and (run / "scores" / "difficulties.jsonl").exists()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "temperature" in m]
    assert steps[0]["temperature"] == 1.0 and steps[-1]["temperature"] == 2.0
    assert yaml.safe_load((run / "run_config.yaml").read_text())["train"]["alpha"] == 0.5
    assert AutoModelForCausalLM.from_pretrained(run / "final").config.num_hidden_layers == 1
    assert (run / "best" / "config.json").exists()  # chosen on the 3 held-out rows
    scored = {
        json.loads(line)["id"]
        for line in (run / "scores" / "difficulties.jsonl").read_text().splitlines()
    }
    assert len(scored) == 9  # 12 rows, 3 held out: never scored, curated or trained on
    assert [m["epoch"] for m in metrics if "val_kd" in m] == [1, 2, 3]


def test_run_config_errors_name_the_problem(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("teacher: a\nstudent: b\noutput_dir: c\ntrain: {lr: 1}\n")
    assert main(["distill", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown train setting(s) lr" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs 'student'"):
        RunConfig.from_dict({"teacher": "a", "output_dir": "c"})
    with pytest.raises(ValueError, match="section.field=value"):
        apply_override({}, "train.epochs")
    values = {}
    apply_override(values, "train.learning_rate=1e-4")
    assert values == {"train": {"learning_rate": 1e-4}}


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        run = RunConfig.from_yaml(path)
        assert run.train.learning_rate in (5e-4, 1e-4, 5e-5)  # the paper's grid
        if run.curation is not None:  # the documented baseline command is valid too
            baseline = RunConfig.from_yaml(path, ["curation=null", "train.epochs=4"])
            assert baseline.curation is None and baseline.train.epochs == 4
    gkd = RunConfig.from_yaml(Path(__file__).parents[1] / "configs" / "cpu_default_gkd.yaml")
    assert gkd.train.on_policy_fraction == 0.5 and gkd.train.alpha == 0.0


def test_heal_is_plain_kd_and_keeps_the_best_epoch(tmp_path, tiny_pair, capsys):
    teacher, student = tiny_pair
    out = tmp_path / "healed"
    code = main(
        [
            "heal",
            "--teacher",
            str(teacher),
            "--student",
            str(student),
            "--data",
            str(tmp_path / "train.jsonl"),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--validation-ratio",
            "0.25",
            "--set",
            "train.batch_size=4",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "run_config.yaml").read_text())
    assert config["curation"] is None and config["train"]["batch_size"] == 4
    assert not (out / "schedule.json").exists()  # no curriculum: every row every epoch
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["strategy"] == "baseline" and state["step"] == 2 * 3  # 9 rows / 4 per batch
    assert f"student in {out / 'best'}" in capsys.readouterr().out
    healed = AutoModelForCausalLM.from_pretrained(out / "best")
    original = AutoModelForCausalLM.from_pretrained(student)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(healed.state_dict().values(), original.state_dict().values(), strict=True)
    )


def test_validation_rouge_selects_the_best_epoch(tmp_path, tiny_pair, tiny_tokenizer):
    from rouge_score import rouge_scorer

    from spectrumkd.data import split_validation
    from spectrumkd.data.config import DataConfig

    teacher, student = tiny_pair
    data = {"source": str(tmp_path / "train.jsonl"), "max_length": 128, "validation_ratio": 0.25}
    config = {
        "teacher": str(teacher),
        "student": str(student),
        "output_dir": str(tmp_path / "run"),
        "data": data,
        "train": {
            "epochs": 2,
            "batch_size": 4,
            "learning_rate": 3e-3,
            "val_rouge": "greedy",
            "val_max_new_tokens": 8,
            "select_metric": "val_rouge",
        },
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["distill", "--config", str(tmp_path / "run.yaml"), "--quiet"]) == 0
    run = tmp_path / "run"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in epochs if "val_rouge" in row]
    assert [row["epoch"] for row in epochs] == [1, 2]
    best = max(epochs, key=lambda row: row["val_rouge"])
    state = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
    assert state["best"]["epoch"] == best["epoch"] and state["best"]["metric"] == "val_rouge"
    # Independent: greedy answers of the saved best student, one prompt at a time, scored with
    # rouge_score directly, give the recorded number.
    texts = {e.id: e for e in DataConfig(**data).load_texts(tiny_tokenizer)}
    _, held = split_validation(DataConfig(**data).load(tiny_tokenizer).examples, 0.25, 0)
    model = AutoModelForCausalLM.from_pretrained(run / "best").eval()
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = []
    for example in held:
        start = next(i for i, label in enumerate(example.labels) if label != -100)
        prompt = torch.tensor([example.input_ids[:start]])
        with torch.no_grad():
            out = model.generate(
                prompt, max_new_tokens=8, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id
            )
        answer = tiny_tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)
        reference = texts[example.id].response
        scores.append(100 * scorer.score(reference, answer)["rougeL"].fmeasure)
    assert best["val_rouge"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)


def test_distill_from_the_teacher_cache_matches_the_live_teacher(tmp_path, tiny_pair):
    from safetensors.torch import load_file

    teacher, student = tiny_pair
    vocab = AutoModelForCausalLM.from_pretrained(teacher).config.vocab_size

    def run(name: str, *overrides: str) -> None:
        config = {
            "teacher": str(teacher),
            "student": str(student),
            "output_dir": str(tmp_path / name),
            "teacher_cache_root": str(tmp_path / "cache"),
            "data": {"source": str(tmp_path / "train.jsonl"), "validation_ratio": 0.25},
            # Full logits on both sides (a cached teacher always has them): the chunked engine
            # a live teacher gets by default sums the same terms in another order.
            "train": {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "loss_impl": "full"},
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        sets = [arg for override in overrides for arg in ("--set", override)]
        assert main(["distill", "--config", str(tmp_path / f"{name}.yaml"), *sets, "--quiet"]) == 0

    run("live")
    # k = the whole vocabulary: the cache holds every logit, so training must match exactly.
    run("cached", f"teacher_cache_k={vocab}")
    run("cached-seed", f"teacher_cache_k={vocab}", "train.seed=7")
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one cache serves both runs
    live = load_file(tmp_path / "live" / "final" / "model.safetensors")
    cached = load_file(tmp_path / "cached" / "final" / "model.safetensors")
    for name, tensor in live.items():
        torch.testing.assert_close(cached[name], tensor, rtol=1e-5, atol=1e-6)


def test_a_refused_resume_leaves_the_folders_config_as_it_was(tmp_path, tiny_pair, capsys):
    """Over a folder holding another run's checkpoint, distill is refused by the trainer; the
    folder's run_config.yaml still describes the checkpoint it holds."""
    teacher, student = tiny_pair
    config = {
        "teacher": str(teacher),
        "student": str(student),
        "output_dir": str(tmp_path / "run"),
        "data": {"source": str(tmp_path / "train.jsonl"), "validation_ratio": 0.25},
        "train": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["distill", "--config", str(tmp_path / "run.yaml"), "--quiet"]) == 0
    written = (tmp_path / "run" / "run_config.yaml").read_text()
    assert yaml.safe_load(written)["train"]["learning_rate"] == 1e-3
    changed = ["--set", "train.learning_rate=0.01"]
    assert main(["distill", "--config", str(tmp_path / "run.yaml"), *changed, "--quiet"]) == 2
    assert "different run (learning_rate changed)" in capsys.readouterr().err
    assert (tmp_path / "run" / "run_config.yaml").read_text() == written


def test_distill_switches_strategy_with_one_set_and_refuses_an_unknown_one(
    tmp_path, tiny_pair, capsys
):
    """The SpectrumKD config above, with `--set curation.strategy=one_pass` and its settings:
    the run scores the student by One-Pass's default metric (response length) and trains on
    its disjoint buckets; an unknown strategy or metric is one line and leaves no folder."""
    teacher, student = tiny_pair
    config = {
        "teacher": str(teacher),
        "student": str(student),
        "output_dir": str(tmp_path / "run"),
        "data": {"source": str(tmp_path / "train.jsonl"), "max_length": 128},
        "curation": {"strategy": "spectrumkd"},
        "train": {"batch_size": 4, "log_every": 1},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    argv = ["distill", "--config", str(tmp_path / "run.yaml"), "--quiet"]
    for bad, message in (
        (["--set", "curation.strategy=bogus"], "unknown curation strategy 'bogus'; choose one of"),
        (["--set", "curation.metric=bogus"], "unknown difficulty metric 'bogus'"),
    ):
        assert main([*argv, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "run").exists()
    sets = ["--set", "curation.strategy=one_pass", "--set", "curation.epochs_per_stage=1"]
    assert main([*argv, *sets]) == 0
    schedule = json.loads((tmp_path / "run" / "schedule.json").read_text())
    assert schedule["strategy"] == "one_pass" and len(schedule["epochs"]) == 4
    buckets = [set(e["ids"]) for e in schedule["epochs"]]
    assert set.union(*buckets) == {f"{i:06d}" for i in range(12)}  # disjoint, covering all
    assert sum(len(b) for b in buckets) == 12
    scores = tmp_path / "run" / "scores"
    assert json.loads((scores / "metric.json").read_text())["metric"] == "length"
    lengths = {
        r["id"]: r["difficulty"] for r in map(json.loads, (scores / "difficulties.jsonl").open())
    }
    means = [sum(lengths[i] for i in b) / len(b) for b in buckets]
    assert means == sorted(means)  # easy (short) to hard (long)
    written = yaml.safe_load((tmp_path / "run" / "run_config.yaml").read_text())["curation"]
    assert written == {
        "strategy": "one_pass",
        "difficulties": None,
        "num_buckets": 4,
        "epochs_per_stage": 1,
        "temperature": 1.0,
        "kd_weight": None,
    }
