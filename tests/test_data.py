"""Data stage: templates reproduce the MiniLLM files, loaders agree across formats, tokenisation
masks exactly the prompt and drops (never truncates) what does not fit."""

from __future__ import annotations

import copy
import json

import datasets
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import processors

from spectrumkd.data import (
    IGNORE_INDEX,
    DataCollator,
    Example,
    FieldMap,
    TokenizedExample,
    collate,
    embedded_dolly_path,
    load_examples,
    render_chat,
    render_code,
    render_instruction,
    render_math,
    tokenize_examples,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _dolly_rows(limit: int | None = None) -> list[dict]:
    with embedded_dolly_path().open() as handle:
        rows = [json.loads(line) for line in handle]
    return rows[:limit] if limit is not None else rows


@pytest.fixture
def chat_tokenizer(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# --- templates ---------------------------------------------------------------------------------


def test_instruction_template_reproduces_every_embedded_row():
    rows = _dolly_rows()
    assert len(rows) == 1000
    assert any(row["input"] for row in rows) and any(not row["input"] for row in rows)
    for index, row in enumerate(rows):
        assert render_instruction(row["instruction"], row["input"]) == row["prompt"], index


def test_instruction_template_reproduces_shared_dolly_files(shared_data):
    folder = shared_data / "minillm_eval" / "dolly"
    for name in ("dev.jsonl", "valid.jsonl"):
        with (folder / name).open() as handle:
            rows = [json.loads(line) for line in handle]
        assert rows
        mismatched = [
            i
            for i, r in enumerate(rows)
            if render_instruction(r["instruction"], r["input"]) != r["prompt"]
        ]
        assert mismatched == [], f"{name}: rows {mismatched[:5]}"


def test_math_and_code_templates_match_paper_figures():
    assert render_math("1+1?") == (
        "### Problem:\n1+1?\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.\n\n### Solution:\n"
    )
    shots = render_math("Q2", few_shot=[("Q1", "A1 \\boxed{1}")])
    assert shots == render_math("Q1") + "A1 \\boxed{1}\n\n" + render_math("Q2")
    # Braces in the problem must come through untouched (no str.format).
    assert "{x}" in render_math("f({x})") and "{x}" in render_code("def f({x})")
    assert render_code("Add two numbers.") == (
        "Please provide a self-contained Python script that solves the following problem in a "
        "markdown code block:\n\n### Problem:\nAdd two numbers.\n\n### Response:\nBelow is a Python "
        "script with a self-contained function that solves the problem and passes corresponding tests:\n"
    )


def test_render_chat_requires_a_chat_template(tiny_tokenizer, chat_tokenizer):
    assert tiny_tokenizer.chat_template is None
    with pytest.raises(ValueError, match="has no chat template; use template='instruction'"):
        render_chat(tiny_tokenizer, [{"role": "user", "content": "hi"}])
    assert (
        render_chat(chat_tokenizer, [{"role": "user", "content": "hi"}])
        == "<|user|>\nhi\n<|assistant|>\n"
    )


# --- loading -----------------------------------------------------------------------------------


def test_embedded_dolly_loads_with_rendered_prompts_and_ordered_ids():
    rows = _dolly_rows()
    examples = load_examples("embedded:dolly")
    assert [e.prompt for e in examples] == [r["prompt"] for r in rows]
    assert [e.response for e in examples] == [r["output"] for r in rows]
    ids = [e.id for e in examples]
    assert ids[:2] == ["000000", "000001"] and ids == sorted(ids) and len(set(ids)) == 1000
    assert examples[0].meta == {}  # the pre-rendered prompt column is not carried along
    assert [e.id for e in load_examples("embedded:dolly", limit=5)] == ids[:5]


def test_same_rows_in_every_format_give_identical_examples(tmp_path):
    rows = [{**row, "category": f"cat{i % 3}"} for i, row in enumerate(_dolly_rows(20))]
    rows[3]["input"] = None  # a null input counts as no input
    dataset = datasets.Dataset.from_list(rows)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    dataset.to_parquet(str(tmp_path / "d.parquet"))
    dataset.to_csv(str(tmp_path / "d.csv"), index=False)
    dataset.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": dataset.select(range(2)), "validation": dataset}).save_to_disk(
        str(tmp_path / "saved_dict")
    )

    reference = load_examples(tmp_path / "d.jsonl")
    assert len(reference) == 20
    assert reference[3].prompt == render_instruction(rows[3]["instruction"])
    assert reference[0].meta == {"category": "cat0"}
    for source in ("d.json", "d.parquet", "d.csv", "saved"):
        assert load_examples(tmp_path / source) == reference, source
    assert load_examples(str(tmp_path / "saved_dict"), split="validation") == reference
    with pytest.raises(
        ValueError, match="split 'test' not in .*available splits: train, validation"
    ):
        load_examples(tmp_path / "saved_dict", split="test")


def test_csv_keeps_text_that_looks_like_numbers_or_na(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,response\n"What is 6*7?",42\nSay NA,NA\n')
    examples = load_examples(path, template="none")
    assert [(e.prompt, e.response) for e in examples] == [("What is 6*7?", "42"), ("Say NA", "NA")]


def test_preset_autodetection(tmp_path, chat_tokenizer):
    def write(name: str, rows: list[dict]):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    dolly15k = write(
        "dolly15k.jsonl",
        [
            {
                "instruction": "Summarise.",
                "context": "Long text.",
                "response": "Short.",
                "category": "summarization",
            },
            {
                "instruction": "Name a fruit.",
                "context": "",
                "response": "Apple.",
                "category": "open_qa",
            },
        ],
    )
    examples = load_examples(dolly15k)
    assert examples[0].prompt == render_instruction("Summarise.", "Long text.")
    assert examples[1].prompt == render_instruction("Name a fruit.")
    assert [e.response for e in examples] == ["Short.", "Apple."]
    assert examples[0].meta == {"category": "summarization"}
    assert load_examples(dolly15k, fields="dolly") == examples

    metamath = write(
        "metamath.jsonl",
        [{"query": "What is 2+3?", "response": "2+3=5. The answer is: 5", "type": "GSM_Rephrased"}],
    )
    (math_example,) = load_examples(metamath, template="math")
    assert math_example.prompt == render_math("What is 2+3?")
    assert math_example.response == "2+3=5. The answer is: 5"
    assert load_examples(metamath, fields="query_response", template="math") == [math_example]

    alpaca = write("alpaca.jsonl", [{"instruction": "Add", "input": "2 and 3", "output": "5"}])
    assert load_examples(alpaca) == load_examples(alpaca, fields="alpaca")
    assert load_examples(alpaca, template="math")[0].prompt == render_math("Add\n\n2 and 3")
    assert load_examples(alpaca, template="code")[0].prompt == render_code("Add\n\n2 and 3")
    assert load_examples(alpaca, template="none")[0].prompt == "Add\n\n2 and 3"
    assert (
        load_examples(alpaca, template="chat", tokenizer=chat_tokenizer)[0].prompt
        == "<|user|>\nAdd\n\n2 and 3\n<|assistant|>\n"
    )

    for response_column in ("response", "completion", "output"):
        pr = write(f"pr_{response_column}.jsonl", [{"prompt": "Hello", response_column: "World"}])
        (example,) = load_examples(pr)
        assert (example.prompt, example.response) == (render_instruction("Hello"), "World")
        assert load_examples(pr, template="none")[0].prompt == "Hello"
        assert load_examples(pr, fields="prompt_response", template="math")[
            0
        ].prompt == render_math("Hello")

    chat = write(
        "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                ]
            }
        ],
    )
    (example,) = load_examples(chat, tokenizer=chat_tokenizer)
    assert example.response == "4"
    assert example.prompt == (
        "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!\n<|user|>\n2+2?\n<|assistant|>\n"
    )
    with pytest.raises(ValueError, match="pass tokenizer="):
        load_examples(chat)

    custom = write("custom.jsonl", [{"q": "Why?", "ctx": None, "a": "Because.", "n": 7}])
    (example,) = load_examples(custom, fields=FieldMap(instruction="q", input="ctx", response="a"))
    assert (example.prompt, example.response, example.meta) == (
        render_instruction("Why?"),
        "Because.",
        {"n": 7},
    )


def test_loading_errors_are_specific(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing/data.jsonl"):
        load_examples("missing/data.jsonl")
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        load_examples(tmp_path / "nothing.parquet")

    bad_suffix = tmp_path / "data.txt"
    bad_suffix.write_text("hello\n")
    with pytest.raises(
        ValueError, match=r"unsupported file type '\.txt'.*\.jsonl, \.json, \.parquet, \.csv"
    ):
        load_examples(bad_suffix)

    rows = [
        {"id": f"q{i}", "instruction": f"Task {i}", "input": "", "output": f"Answer {i}"}
        for i in range(20)
    ]
    rows[17]["output"] = "  "
    empty = tmp_path / "empty.jsonl"
    empty.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        ValueError,
        match=r"empty\.jsonl: row 17: column 'output' is empty; drop the row or map another column "
        "with fields=",
    ):
        load_examples(empty)
    assert len(load_examples(empty, limit=17)) == 17

    rows[17]["output"] = "fine"
    rows[12]["id"] = "q4"
    dup = tmp_path / "dup.jsonl"
    dup.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="duplicate id 'q4'"):
        load_examples(dup, id_field="id")
    with pytest.raises(ValueError, match=r"dup\.jsonl: no column 'uid' \(named by id_field=\)"):
        load_examples(dup, id_field="uid")
    assert [e.id for e in load_examples(dup, id_field="id", limit=3)] == ["q0", "q1", "q2"]

    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"question": "a", "answer": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"cannot tell which columns.*\['question', 'answer'\]"):
        load_examples(unknown)
    with pytest.raises(
        ValueError, match="preset 'alpaca' of fields= needs an 'instruction' column"
    ):
        load_examples(unknown, fields="alpaca")
    with pytest.raises(ValueError, match=r"column\(s\) \['missing'\] not found"):
        load_examples(
            unknown, fields=FieldMap(instruction="question", input="missing", response="answer")
        )
    with pytest.raises(ValueError, match="unknown template 'alpaca'"):
        load_examples(unknown, template="alpaca")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/some-data' on the Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        ValueError, match="'someone/some-data' is neither a local file or folder nor a reachable"
    ) as info:
        load_examples("someone/some-data")
    assert "\n" not in str(info.value)


# --- tokenisation ------------------------------------------------------------------------------


def test_labels_mask_exactly_the_prompt(tiny_tokenizer):
    examples = load_examples("embedded:dolly", limit=40)
    data = tokenize_examples(examples, tiny_tokenizer, max_length=4096)
    assert len(data) == 40 and data.dropped == [] and data.summary() == "40 kept, 0 dropped"
    for example, tokenized in zip(examples, data.examples, strict=True):
        prompt_ids = tiny_tokenizer(example.prompt).input_ids
        n = len(prompt_ids)
        assert tokenized.id == example.id
        assert tokenized.input_ids[:n] == prompt_ids
        assert tokenized.labels[:n] == [IGNORE_INDEX] * n
        assert IGNORE_INDEX not in tokenized.labels[n:]
        assert tokenized.labels[n:] == tokenized.input_ids[n:]
        assert tokenized.num_response_tokens == len(tokenized.input_ids) - n
        assert tokenized.input_ids[-1] == tiny_tokenizer.eos_token_id
        assert tiny_tokenizer.decode(tokenized.input_ids[n:-1]) == example.response
        assert tiny_tokenizer.decode(tokenized.input_ids[n:]) == example.response + "</s>"

    no_eos = tokenize_examples(examples[:3], tiny_tokenizer, max_length=4096, add_eos=False)
    assert [len(t.input_ids) for t in no_eos.examples] == [
        len(t.input_ids) - 1 for t in data.examples[:3]
    ]


def test_bos_comes_from_the_tokenizer_and_is_never_doubled(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    plain, templated = tokenize_examples(
        [Example("a", "Hi", "There"), Example("b", "<s>Hi", "There")], tokenizer
    ).examples
    # A tokenizer that adds BOS gets it on plain prompts; a prompt whose chat template already
    # wrote the BOS text gets exactly one, and both end up with identical ids.
    assert plain.input_ids[0] == bos and plain.input_ids.count(bos) == 1
    assert templated.input_ids == plain.input_ids
    assert plain.labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]


def test_overlong_examples_are_dropped_not_truncated(tiny_tokenizer):
    examples = load_examples("embedded:dolly", limit=60)
    full = {
        t.id: t for t in tokenize_examples(examples, tiny_tokenizer, max_length=100_000).examples
    }
    lengths = {i: len(t.input_ids) for i, t in full.items()}
    limit = sorted(lengths.values())[30]
    data = tokenize_examples(examples, tiny_tokenizer, max_length=limit)
    expected_dropped = sorted(i for i, n in lengths.items() if n > limit)
    assert [i for i, _ in data.dropped] == expected_dropped and expected_dropped
    assert {reason for _, reason in data.dropped} == {f"longer than {limit} tokens"}
    assert (
        data.summary()
        == f"{len(data)} kept, {len(expected_dropped)} dropped (longer than {limit} tokens)"
    )
    for kept in data.examples:
        assert kept == full[kept.id]  # untouched, not truncated

    prompt_limit = sorted(len(t.input_ids) - t.num_response_tokens for t in full.values())[30]
    by_prompt = tokenize_examples(
        examples, tiny_tokenizer, max_length=100_000, max_prompt_length=prompt_limit
    )
    assert by_prompt.dropped and all(
        r == f"prompt longer than {prompt_limit} tokens" for _, r in by_prompt.dropped
    )

    mixed = tokenize_examples(
        [Example("e", "Say nothing.", ""), *examples[:3]],
        tiny_tokenizer,
        max_length=limit,
        add_eos=False,
    )
    assert ("e", "no response tokens") in mixed.dropped
    assert "no response tokens" in mixed.summary()


def test_tokenizer_without_eos_is_refused(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="has no eos token"):
        tokenize_examples([Example("a", "p", "r")], tokenizer)
    assert len(tokenize_examples([Example("a", "p", "r")], tokenizer, add_eos=False)) == 1


def test_collate_right_pads_and_masks_padding():
    batch = [
        TokenizedExample("a", [5, 6, 7], [IGNORE_INDEX, 6, 7]),
        TokenizedExample("b", [8], [8]),
    ]
    out = collate(batch, pad_token_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert all(t.dtype == torch.long for t in out.values())
    assert collate(batch, pad_token_id=0, pad_to_multiple_of=8)["input_ids"].shape == (2, 8)

    collator = DataCollator(pad_token_id=0)
    as_dicts = [{"input_ids": e.input_ids, "labels": torch.tensor(e.labels)} for e in batch]
    for key, value in collator(as_dicts).items():
        assert torch.equal(value, out[key])
    with pytest.raises(TypeError, match="feature 0"):
        collator([{"input_ids": [1]}])


def test_torch_dataset_feeds_the_collator(tiny_tokenizer):
    data = tokenize_examples(
        load_examples("embedded:dolly", limit=6), tiny_tokenizer, max_length=4096
    )
    torch_data = data.as_torch_dataset()
    assert len(torch_data) == 6 and torch_data.ids == data.ids
    assert set(torch_data[0]) == {"input_ids", "labels"}
    loader = torch.utils.data.DataLoader(
        torch_data, batch_size=3, collate_fn=DataCollator(tiny_tokenizer.pad_token_id)
    )
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [3, 3]
    assert int(batches[0]["attention_mask"].sum()) == sum(
        len(t.input_ids) for t in data.examples[:3]
    )


_PROPERTY_EXAMPLES = [
    Example(id=f"{i:06d}", prompt=row["prompt"], response=row["output"])
    for i, row in enumerate(_dolly_rows(30))
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    max_length=st.integers(min_value=1, max_value=700),
    max_prompt_length=st.none() | st.integers(min_value=1, max_value=400),
)
def test_kept_examples_fit_and_nothing_is_lost(tiny_tokenizer, max_length, max_prompt_length):
    data = tokenize_examples(
        _PROPERTY_EXAMPLES,
        tiny_tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
    )
    assert len(data.examples) + len(data.dropped) == len(_PROPERTY_EXAMPLES)
    assert sorted(data.ids + [i for i, _ in data.dropped]) == [e.id for e in _PROPERTY_EXAMPLES]
    for kept in data.examples:
        assert len(kept.input_ids) <= max_length
        assert (
            max_prompt_length is None
            or len(kept.input_ids) - kept.num_response_tokens <= max_prompt_length
        )


# --- malformed files ---------------------------------------------------------------------------

GOOD_ROW = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
BAD_FILES = {
    "empty.jsonl": (b"", r"empty\.jsonl is empty"),
    "blank.jsonl": (b"\n  \n\n", r"blank\.jsonl is empty"),
    "empty.json": (b"", r"empty\.json is empty"),
    "nothing.json": (b"[]\n", r"nothing\.json holds no rows"),
    "empty.csv": (b"", r"empty\.csv is empty"),
    "blank.csv": (b"\n\n", r"blank\.csv is empty"),
    "header.csv": (b"instruction,output\n", r"header\.csv holds no rows"),
    "empty.parquet": (b"", r"empty\.parquet is empty"),
    "garbage.parquet": (b"not parquet at all", r"garbage\.parquet is not a Parquet file"),
    "bad.jsonl": (
        json.dumps(GOOD_ROW).encode() + b'\n{"instruction": "x", "output": oops}\n',
        r"bad\.jsonl:2:\d+: not valid JSON",
    ),
    "bad.json": (
        b"[\n" + json.dumps(GOOD_ROW).encode() + b',\n {"instruction": "x", "output": oops}\n]',
        r"bad\.json:3:\d+: not valid JSON",
    ),
    "latin1.jsonl": (
        json.dumps(GOOD_ROW).encode() + b'\n{"instruction": "caf\xe9", "output": "x"}\n',
        r"latin1\.jsonl:2: not valid UTF-8",
    ),
    "latin1.json": (
        b'[{"instruction": "caf\xe9", "output": "x"}]',
        r"latin1\.json:1: not valid UTF-8",
    ),
    "latin1.csv": (b"instruction,output\nok,fine\ncaf\xe9,x\n", r"latin1\.csv:3: not valid UTF-8"),
    "columns.jsonl": (
        b'{"question": "a", "answer": "b"}\n',
        r"columns\.jsonl: cannot tell which columns .*\['question', 'answer'\]",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_malformed_file_is_one_line_naming_it(tmp_path, capfd, name):
    content, message = BAD_FILES[name]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        load_examples(tmp_path / name)
    assert "\n" not in str(error.value)
    assert "Failed to" not in capfd.readouterr().err  # datasets' own log line is not repeated


def test_a_folder_names_its_malformed_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty holds no data files"):
        load_examples(tmp_path / "empty")
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    (folder / "b.jsonl").write_bytes(b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(ValueError, match=r"parts/b\.jsonl:1: not valid UTF-8"):
        load_examples(folder)
    (folder / "a.jsonl").unlink()
    (folder / "b.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match=r"parts/b\.jsonl is empty"):
        load_examples(folder)


def test_column_errors_name_the_option_for_each_interface(tmp_path):
    from spectrumkd.data.loading import OptionError

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "a", "answer": "b"}) + "\n")
    with pytest.raises(OptionError) as error:
        load_examples(path)
    assert "Pass fields= one of dolly" in str(error.value)  # the Python argument
    assert error.value.option == "fields"
    assert "Pass --fields one of dolly" in error.value.spelled("--fields")  # a CLI flag
    with pytest.raises(OptionError, match=r"no column 'uid' \(named by id_field=\)") as error:
        load_examples(path, fields=FieldMap("question", None, "answer"), id_field="uid")
