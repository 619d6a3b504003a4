"""`spectrumkd distill` with the strategies it plans from its models (DDK, fixed domain mixing,
DA-KD), end to end on tiny models, and their one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import save_tiny_pair

from spectrumkd.cli import main
from spectrumkd.distillation import RunConfig

CATEGORIES = ("open_qa", "brainstorming", "summarization")


@pytest.fixture()
def tiny_pair(tmp_path, tiny_tokenizer):
    teacher, student = save_tiny_pair(tmp_path, tiny_tokenizer)
    rows = [
        {
            "instruction": f"Count to {i}.",
            "input": "",
            "output": " ".join(str(j) for j in range(i % 7 + 1)),
            "category": CATEGORIES[i % 3],
        }
        for i in range(30)
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return teacher, student


def run_distill(tmp_path: Path, tiny_pair, name: str, curation: dict, **extra) -> Path:
    teacher, student = tiny_pair
    data = extra.pop(
        "data",
        {"source": str(tmp_path / "train.jsonl"), "domain_field": "category"},
    )
    config = {
        "teacher": str(teacher),
        "student": str(student),
        "output_dir": str(tmp_path / name),
        "data": {"max_length": 128, "validation_ratio": 0.2, **data},
        "curation": curation,
        "train": {"batch_size": 4, "learning_rate": 1e-3, "log_every": 1, **extra.pop("train", {})},
        **extra,
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    assert main(["distill", "--config", str(tmp_path / f"{name}.yaml"), "--quiet"]) == 0
    return tmp_path / name


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_distill_with_ddk_updates_its_weights_every_k_steps(tmp_path, tiny_pair):
    curation = {"strategy": "ddk", "update_every_steps": 2, "intervals": 3}
    run = run_distill(tmp_path, tiny_pair, "ddk", curation)
    schedule = json.loads((run / "schedule.json").read_text())
    mixture = schedule["mixture"]
    assert mixture["domains"] == sorted(CATEGORIES)
    # 30 rows, 20 % of each category held out: 2 per domain, measured by teacher and student.
    assert mixture["validation_rows"] == dict.fromkeys(CATEGORIES, 2)
    assert schedule["settings"]["examples_per_step"] == 4  # batch 4, one process
    assert all(e["num_examples"] == 8 for e in schedule["epochs"])
    updates = [row for row in rows(run) if "plan_update" in row]
    assert [row["step"] for row in updates] == [2, 4]
    assert all(sum(row["weights"].values()) == pytest.approx(1.0) for row in updates)
    trained = {i for e in schedule["epochs"] for i in e["ids"]}
    assert trained <= {f"{i:06d}" for i in range(30)} and len(trained) <= 24  # 6 held out
    assert (run / "final" / "config.json").exists()


def test_distill_with_a_fixed_mix_of_two_sources(tmp_path, tiny_pair):
    maths = [{"question": f"What is {i} + {i}?", "answer": f"{2 * i}"} for i in range(12)]
    (tmp_path / "maths.jsonl").write_text("".join(json.dumps(r) + "\n" for r in maths))
    data = {
        "mix": [
            {"domain": "prose", "source": str(tmp_path / "train.jsonl")},
            {
                "domain": "maths",
                "source": str(tmp_path / "maths.jsonl"),
                "fields": {"instruction": "question", "response": "answer"},
                "template": "math",
            },
        ]
    }
    curation = {
        "strategy": "domain_mix",
        "update_every_steps": 2,
        "intervals": 2,
        "weights": {"prose": 1, "maths": 3},
    }
    run = run_distill(tmp_path, tiny_pair, "mix", curation, data=data)
    schedule = json.loads((run / "schedule.json").read_text())
    assert schedule["mixture"]["weights"] == {"maths": 0.75, "prose": 0.25}
    ids = [i for e in schedule["epochs"] for i in e["ids"]]
    assert {i.split("/", 1)[0] for i in ids} <= {"maths", "prose"}
    assert not [row for row in rows(run) if "plan_update" in row]  # fixed weights: no updates


def test_distill_with_dakd_and_bdl_from_the_teacher_cache(tmp_path, tiny_pair, tiny_tokenizer):
    curation = {"strategy": "dakd", "epochs": 3}
    run = run_distill(
        tmp_path,
        tiny_pair,
        "dakd",
        curation,
        data={"source": str(tmp_path / "train.jsonl")},
        train={"objective": "bdl"},
        teacher_cache_k=len(tiny_tokenizer),
        teacher_cache_root=str(tmp_path / "cache"),
    )
    schedule = json.loads((run / "schedule.json").read_text())
    assert schedule["sizes"] == [24, 18, 6]  # 24 training rows, cos keep-ratio over 3 epochs
    updates = [row for row in rows(run) if "plan_update" in row]
    assert [(row["epoch"], row["rows"]) for row in updates] == [(2, 18), (3, 6)]


def test_the_measured_strategies_refuse_what_they_cannot_use(tmp_path, tiny_pair, capsys):
    with pytest.raises(ValueError, match="drop curation.difficulties"):
        RunConfig.from_dict(
            {
                "teacher": "t",
                "student": "s",
                "output_dir": "o",
                "curation": {"strategy": "ddk", "difficulties": "d.jsonl"},
            }
        )
    teacher, student = tiny_pair
    config = {
        "teacher": str(teacher),
        "student": str(student),
        "output_dir": str(tmp_path / "nodomains"),
        "data": {"source": str(tmp_path / "train.jsonl"), "validation_ratio": 0.2},
        "curation": {"strategy": "ddk", "update_every_steps": 2, "intervals": 2},
    }
    (tmp_path / "nodomains.yaml").write_text(yaml.safe_dump(config))
    assert main(["distill", "--config", str(tmp_path / "nodomains.yaml"), "--quiet"]) != 0
    assert "set data.domain_field" in capsys.readouterr().err
