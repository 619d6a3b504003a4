"""Domains of the data (issue 16): a column naming each example's domain (``domain_field``),
several sources each one domain (``mix``), the stratified validation split and the domains a
distillation loads."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrumkd.cli import main
from spectrumkd.data import DataConfig, FieldMap, OptionError, split_validation
from spectrumkd.distillation import RunConfig


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _category_rows(count: int = 12) -> list[dict]:
    categories = ["open_qa", "brainstorming", "classification"]
    return [
        {
            "instruction": f"question {i}",
            "context": "",
            "response": f"answer {i}",
            "category": categories[i % 3],
        }
        for i in range(count)
    ]


# --- domain_field --------------------------------------------------------------------------


def test_domain_field_reads_each_rows_category(tmp_path):
    rows = _category_rows()
    path = _write_jsonl(tmp_path / "dolly.jsonl", rows)
    config = DataConfig(source=str(path), domain_field="category")
    examples = config.load_texts()
    assert config.domains(examples) == {f"{i:06d}": row["category"] for i, row in enumerate(rows)}
    assert DataConfig(source=str(path)).domains(examples) == {}  # no field: no domains


def test_domain_field_missing_or_empty_is_one_line_naming_row_and_option(tmp_path):
    path = _write_jsonl(tmp_path / "dolly.jsonl", _category_rows(4))
    with pytest.raises(OptionError) as missing:
        DataConfig(source=str(path), domain_field="topic").load_texts()
    assert "row 0" in str(missing.value) and "'topic'" in str(missing.value)
    assert "--domain-field" in missing.value.spelled("--domain-field")
    assert len(str(missing.value).splitlines()) == 1

    rows = _category_rows(4)
    rows[2]["category"] = "  "
    path = _write_jsonl(tmp_path / "blank.jsonl", rows)
    with pytest.raises(OptionError, match=r"row 2 .*empty domain") as empty:
        DataConfig(source=str(path), domain_field="category").load_texts()
    assert "domain_field=" in str(empty.value)

    rows[2]["category"] = None
    path = _write_jsonl(tmp_path / "null.jsonl", rows)
    with pytest.raises(OptionError, match=r"row 2 .*empty domain"):
        DataConfig(source=str(path), domain_field="category").load_texts()


def test_domain_field_errors_name_the_cli_flag(tmp_path, capsys, tiny_model_dir):
    path = _write_jsonl(tmp_path / "dolly.jsonl", _category_rows(4))
    code = main(
        ["score", "--model", str(tiny_model_dir), "--data", str(path), "--out",
         str(tmp_path / "out"), "--domain-field", "topic"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("spectrumkd score: error:")]
    assert "--domain-field" in line and "row 0" in line and "'topic'" in line


def test_empty_domain_field_name_is_refused():
    with pytest.raises(ValueError, match="data.domain_field"):
        DataConfig(domain_field=" ")


# --- mix -----------------------------------------------------------------------------------


def _three_sources(tmp_path: Path) -> list[dict]:
    _write_jsonl(tmp_path / "chat.jsonl", _category_rows(6))
    _write_jsonl(
        tmp_path / "maths.jsonl",
        [{"question": f"{i} + {i}?", "answer": f"#### {2 * i}"} for i in range(8)],
    )
    _write_jsonl(
        tmp_path / "code.jsonl",
        [{"text": f"task {i}", "code": f"def f():\n    return {i}", "task_id": 100 + i}
         for i in range(10)],
    )  # fmt: skip
    return [
        {"domain": "instruction", "source": str(tmp_path / "chat.jsonl")},
        {
            "domain": "maths",
            "source": str(tmp_path / "maths.jsonl"),
            "fields": {"instruction": "question", "response": "answer"},
            "template": "math",
            "limit": 5,
        },
        {
            "domain": "code",
            "source": str(tmp_path / "code.jsonl"),
            "fields": {"instruction": "text", "response": "code"},
            "template": "code",
            "id_field": "task_id",
            "split": "train[4:]",
        },
    ]


def test_mix_loads_each_source_as_its_domain(tmp_path):
    config = DataConfig(mix=_three_sources(tmp_path), validation_ratio=0.3)
    examples = config.load_texts()
    ids = [e.id for e in examples]
    assert ids == (
        [f"instruction/{i:06d}" for i in range(6)]
        + [f"maths/{i:06d}" for i in range(5)]
        + [f"code/{100 + i}" for i in range(4, 10)]
    )
    domains = config.domains(examples)
    assert domains == {id_: id_.split("/")[0] for id_ in ids}
    assert all(e.meta["domain"] == domains[e.id] for e in examples)
    by_id = {e.id: e for e in examples}
    assert by_id["maths/000003"].response == "#### 6"
    assert (
        "3 + 3?" in by_id["maths/000003"].prompt
        and "Instruction" not in by_id["maths/000003"].prompt
    )
    assert by_id["code/104"].response == "def f():\n    return 4"
    assert "task 4" in by_id["code/104"].prompt
    assert "### Instruction:\nquestion 2" in by_id["instruction/000002"].prompt
    # Each domain holds out its own share.
    train, held = config.split_validation(examples, domains)
    counts = Counter(domains[e.id] for e in held)
    assert counts == {"instruction": 2, "maths": 2, "code": 2}
    assert {e.id for e in train}.isdisjoint(e.id for e in held)


def test_mix_survives_the_run_configs_yaml_round_trip(tmp_path):
    values = {
        "teacher": "t",
        "student": "s",
        "output_dir": str(tmp_path / "run"),
        "data": {"mix": _three_sources(tmp_path), "validation_ratio": 0.25},
    }
    run = RunConfig.from_dict(values)
    text = yaml.safe_dump(run.to_dict(), sort_keys=False)
    again = RunConfig.from_dict(yaml.safe_load(text))
    assert again.data == run.data
    assert again.data.mix[1].fields == FieldMap(
        instruction="question", input=None, response="answer"
    )
    assert again.data.domain_column == "domain"


def test_top_level_fields_may_be_a_mapping(tmp_path):
    path = _write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a"}])
    config = DataConfig(source=str(path), fields={"instruction": "question", "response": "answer"})
    assert config.load_texts()[0].response == "a"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: {**d, "source": "other.jsonl"}, "data.source='other.jsonl' and data.mix"),
        (lambda d: {**d, "mix": []}, "data.mix must list one or more sources"),
        (
            lambda d: {**d, "mix": [d["mix"][0], {**d["mix"][1], "domain": "instruction"}]},
            "names the domain 'instruction' twice",
        ),
        (lambda d: {**d, "mix": [{"source": "x.jsonl"}]}, r"data.mix\[0\] needs domain"),
        (lambda d: {**d, "mix": [{**d["mix"][0], "weight": 2}]}, "unknown setting.*weight"),
        (lambda d: {**d, "mix": [{**d["mix"][0], "domain": "a/b"}]}, "holds '/'"),
        (lambda d: {**d, "mix": [{**d["mix"][0], "limit": 0}]}, "limit=0 must be >= 1"),
        (lambda d: {**d, "mix": ["x.jsonl"]}, r"data.mix\[0\] must be a mapping"),
        (lambda d: {**d, "domain_field": "category"}, "drop data.domain_field"),
        (
            lambda d: {**d, "mix": [{**d["mix"][1], "fields": {"question": "q"}}]},
            "unknown role",
        ),
    ],
)
def test_bad_mixes_are_one_line_errors(tmp_path, change, message):
    data = change({"mix": _three_sources(tmp_path)})
    with pytest.raises(ValueError, match=message) as error:
        DataConfig(**data)
    assert len(str(error.value).splitlines()) == 1


def test_a_mix_entrys_data_errors_name_the_entry(tmp_path):
    sources = _three_sources(tmp_path)
    sources[1] = {**sources[1], "fields": None}  # GSM8K's columns match no preset
    with pytest.raises(OptionError) as error:
        DataConfig(mix=sources).load_texts()
    assert error.value.option == "mix[1].fields"
    assert error.value.spelled("data.mix[1].fields").startswith("domain 'maths':")
    sources = _three_sources(tmp_path)
    sources[2] = {**sources[2], "split": "test"}
    with pytest.raises(ValueError, match=r"domain 'code'.*split 'test'.*train\[600:\]"):
        DataConfig(mix=sources).load_texts()


def test_file_split_slices_and_bad_slices(tmp_path):
    path = _write_jsonl(tmp_path / "rows.jsonl", _category_rows(10))
    config = DataConfig(source=str(path), split="train[7:]")
    assert [e.response for e in config.load_texts()] == ["answer 7", "answer 8", "answer 9"]
    assert len(DataConfig(source=str(path), split="train[:50%]").load_texts()) == 5
    with pytest.raises(ValueError, match="selects no rows"):
        DataConfig(source=str(path), split="train[20:]").load_texts()
    with pytest.raises(ValueError, match="not 'train' or a slice"):
        DataConfig(source=str(path), split="train[x]").load_texts()


def test_real_mix_dolly_gsm8k_and_mbpp_training_tasks(shared_data):
    mix = [
        {"domain": "instruction", "source": "embedded:dolly"},
        {
            "domain": "maths",
            "source": str(shared_data / "gsm8k" / "train.jsonl"),
            "fields": {"instruction": "question", "response": "answer"},
            "template": "math",
        },
        {
            "domain": "code",
            "source": str(shared_data / "mbpp" / "mbpp.jsonl"),
            "fields": {"instruction": "text", "response": "code"},
            "template": "code",
            "split": "train[600:]",
            "id_field": "task_id",
        },
    ]
    config = DataConfig(mix=mix, limit=20, validation_ratio=0.1)
    examples = config.load_texts()
    domains = config.domains(examples)
    assert Counter(domains.values()) == {"instruction": 20, "maths": 20, "code": 20}
    code_ids = [int(e.id.split("/")[1]) for e in examples if domains[e.id] == "code"]
    assert code_ids == list(range(601, 621))  # MBPP's training tasks begin at 601
    with (shared_data / "mbpp" / "mbpp.jsonl").open() as handle:
        mbpp = [json.loads(line) for line in handle]
    assert [row["task_id"] for row in mbpp[600:]] == list(range(601, 975))
    first_code = next(e for e in examples if e.id == "code/601")
    assert first_code.response == mbpp[600]["code"]
    with (shared_data / "gsm8k" / "train.jsonl").open() as handle:
        first_maths = json.loads(next(handle))
    assert next(e for e in examples if e.id == "maths/000000").response == first_maths["answer"]
    _, held = config.split_validation(examples, domains)
    assert Counter(domains[e.id] for e in held) == {"instruction": 2, "maths": 2, "code": 2}


# --- the stratified split ------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 40), min_size=1, max_size=5),
    ratio=st.floats(0.01, 0.45),
    seed=st.integers(0, 2**31),
    shuffle_seed=st.integers(0, 1000),
)
def test_stratified_split_invariants(sizes, ratio, seed, shuffle_seed):
    domains = [f"d{k}" for k, size in enumerate(sizes) for _ in range(size)]
    np.random.default_rng(shuffle_seed).shuffle(domains)
    rows = list(range(len(domains)))
    train, held = split_validation(rows, ratio, seed, domains=domains)
    assert sorted(train + held) == rows and not set(train) & set(held)
    assert train == sorted(train) and held == sorted(held)  # the rows' own order
    for k, size in enumerate(sizes):
        in_domain = {i for i in rows if domains[i] == f"d{k}"}
        assert len(in_domain & set(held)) == max(1, round(ratio * size))
        assert in_domain & set(train)  # every domain keeps training rows
    assert split_validation(rows, ratio, seed, domains=domains) == (train, held)


def test_a_domains_held_rows_do_not_depend_on_the_others():
    alone = ["a"] * 30
    mixed = ["a"] * 30 + ["b"] * 17
    _, held_alone = split_validation(list(range(30)), 0.2, 3, domains=alone)
    _, held_mixed = split_validation(list(range(47)), 0.2, 3, domains=mixed)
    assert [i for i in held_mixed if i < 30] == held_alone
    _, other_seed = split_validation(list(range(30)), 0.2, 4, domains=alone)
    assert other_seed != held_alone


def test_without_domains_the_split_is_unchanged(tmp_path):
    rows = list(range(50))
    order = np.random.default_rng(7).permutation(50)
    expected_held = sorted(order[:10].tolist())
    assert split_validation(rows, 0.2, 7)[1] == expected_held
    config = DataConfig(validation_ratio=0.2, validation_seed=7)

    class Row:
        def __init__(self, id_):
            self.id = id_

    objs = [Row(str(i)) for i in rows]
    assert [int(r.id) for r in config.split_validation(objs, {})[1]] == expected_held


def test_a_domain_too_small_to_hold_out_is_refused():
    with pytest.raises(ValueError, match="domain 'b' has 1 row"):
        split_validation(list(range(11)), 0.1, 0, domains=["a"] * 10 + ["b"])
    with pytest.raises(ValueError, match="3 domains given for 2 examples"):
        split_validation([0, 1], 0.5, 0, domains=["a", "b", "c"])


# --- what distill loads --------------------------------------------------------------------


def test_distill_inputs_carry_the_domains_and_a_stratified_split(tmp_path, tiny_model_dir):
    from spectrumkd import jobs

    path = _write_jsonl(tmp_path / "dolly.jsonl", _category_rows(30))
    run = RunConfig.from_dict(
        {
            "teacher": str(tiny_model_dir),
            "student": str(tiny_model_dir),
            "output_dir": str(tmp_path / "run"),
            "device": "cpu",
            "data": {"source": str(path), "domain_field": "category", "validation_ratio": 0.2},
        }
    )
    inputs = jobs.load_distill_inputs(run)
    ids = [e.id for e in inputs.train_examples + inputs.validation]
    assert sorted(inputs.domains) == sorted(ids)
    assert inputs.domains == {f"{i:06d}": _category_rows(30)[i]["category"] for i in range(30)}
    assert Counter(inputs.domains[e.id] for e in inputs.validation) == {
        "open_qa": 2,
        "brainstorming": 2,
        "classification": 2,
    }
    plain = RunConfig.from_dict(
        {**run.to_dict(), "data": {"source": str(path), "validation_ratio": 0.2}}
    )
    plain_inputs = jobs.load_distill_inputs(plain)
    assert plain_inputs.domains == {}
    _, held = split_validation(list(range(30)), 0.2, 0)
    assert [e.id for e in plain_inputs.validation] == [f"{i:06d}" for i in held]
