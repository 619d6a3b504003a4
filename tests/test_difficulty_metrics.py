"""The difficulty metrics of `spectrumkd.scoring.metrics`, each against an independent
computation: reciprocal rank fusion against the spec's worked example and its invariants,
length and unigram entropy against direct counts, predictive entropy against the entropy of the
tiny model's full logits, reflection against `generate` and `rouge_score` run directly; and the
folder behaviour (reuse, resume after a kill, refusal to mix runs)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import build_tiny_llama, random_token_examples
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

import spectrumkd.scoring.reflection as reflection_module
from spectrumkd.data.loading import load_examples
from spectrumkd.data.tokenize import tokenize_examples
from spectrumkd.models.generation import generate
from spectrumkd.scoring import (
    METRICS,
    ScoringSettings,
    compute_difficulty,
    easy_first_ranks,
    fuse,
    fused_positions,
    read_difficulties,
    score_examples,
)

FLOAT32 = ScoringSettings(precision="float32")
# Short prompts and answers keep the tiny model's generation to seconds.
SHORT = {"max_prompt_tokens": 70, "max_total_tokens": 86}


@pytest.fixture(scope="module")
def dolly(tiny_tokenizer):
    texts = load_examples("embedded:dolly", limit=40)
    dataset = tokenize_examples(texts, tiny_tokenizer, max_length=200, max_prompt_length=70)
    return texts, dataset.examples[:10]


# ------------------------------------------------------------------------ reciprocal rank fusion


def test_the_specs_worked_example_gives_the_order_0_3_2_1():
    rouge = np.array([0.9, 0.1, 0.5, 0.5])
    ce = np.array([1.0, 3.0, 2.0, 0.5])
    positions, scores, (rouge_ranks, ce_ranks) = fused_positions([1 - rouge, ce])
    assert list(rouge_ranks) == [1, 4, 2, 3]  # the tie .5/.5 keeps index order
    assert list(ce_ranks) == [2, 4, 3, 1]
    expected = [1 / 61 + 1 / 62, 1 / 64 + 1 / 64, 1 / 62 + 1 / 63, 1 / 63 + 1 / 61]
    np.testing.assert_allclose(scores, expected, rtol=1e-15)
    assert list(np.argsort(positions)) == [0, 3, 2, 1]
    rows = fuse([(list("abcd"), 1 - rouge), (list("abcd"), ce)], names=["rouge", "ce"])
    assert [row["id"] for row in sorted(rows, key=lambda r: r["difficulty"])] == list("adcb")
    assert rows[3]["rouge_rank"] == 3 and rows[3]["ce_rank"] == 1


MONOTONE = [
    lambda x: 3.0 * x + 7.0,
    lambda x: x**3 + 5.0 * x,
    lambda x: np.exp(x / 10.0),
    lambda x: np.arctan(x / 50.0),
]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=40),
    st.sampled_from(range(len(MONOTONE))),
    st.sampled_from(range(len(MONOTONE))),
)
def test_strictly_monotone_transforms_leave_the_fused_order_unchanged(pairs, f, g):
    rouge = np.array([p[0] for p in pairs], dtype=np.float64)
    ce = np.array([p[1] for p in pairs], dtype=np.float64)
    base, _, _ = fused_positions([-rouge, ce])
    moved, _, _ = fused_positions([-MONOTONE[f](rouge), MONOTONE[g](ce)])
    np.testing.assert_array_equal(base, moved)
    assert sorted(base) == list(range(1, len(pairs) + 1))  # a permutation: no ties


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=30))
def test_ranks_break_ties_by_index_order(values):
    ranks = easy_first_ranks(values)
    brute = [
        1 + sum(v < values[i] or (v == values[i] and j < i) for j, v in enumerate(values))
        for i in range(len(values))
    ]
    assert list(ranks) == brute
    equal = fused_positions([np.zeros(len(values)), np.zeros(len(values))])[0]
    assert list(equal) == list(range(1, len(values) + 1))


def test_fuse_aligns_tables_by_id_and_refuses_other_ids():
    rows = fuse([(["a", "b", "c"], [3, 1, 2]), (["c", "a", "b"], [2, 3, 1])], names=["x", "y"])
    assert [row["x_rank"] for row in rows] == [row["y_rank"] for row in rows] == [3, 1, 2]
    with pytest.raises(ValueError, match="same data"):
        fuse([(["a", "b"], [1, 2]), (["a", "z"], [1, 2])])


# ------------------------------------------------------------------------ model-free metrics


def test_length_is_the_count_of_response_tokens(tmp_path):
    examples = random_token_examples(30, 300, seed=1)
    result = compute_difficulty("length", examples, out_dir=tmp_path / "r", progress=False)
    assert list(result.difficulties) == [
        sum(1 for label in e.labels if label != -100) for e in examples
    ]
    whole = compute_difficulty("length", examples, include_prompt=True, progress=False)
    assert list(whole.difficulties) == [len(e.input_ids) for e in examples]
    ids, values = read_difficulties(tmp_path / "r" / "difficulties.jsonl")
    assert ids == [e.id for e in examples] and list(values) == list(result.difficulties)


def test_unigram_entropy_equals_a_float64_brute_force(tiny_tokenizer):
    examples = random_token_examples(25, len(tiny_tokenizer), seed=2)
    result = compute_difficulty(
        "unigram_entropy", examples, tokenizer=tiny_tokenizer, progress=False
    )
    responses = [[t for t in e.labels if t != -100] for e in examples]
    counts = Counter(t for r in responses for t in r)
    total, vocab = sum(counts.values()), len(tiny_tokenizer)
    expected = [
        -sum(math.log((counts[t] + 1) / (total + vocab)) for t in r) / len(r) for r in responses
    ]
    np.testing.assert_allclose(result.difficulties, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="vocabulary size"):
        compute_difficulty("unigram_entropy", examples, progress=False)
    with pytest.raises(ValueError, match="outside the vocabulary of 10"):
        compute_difficulty("unigram_entropy", examples, vocab_size=10, progress=False)


# ------------------------------------------------------------------------ predictive entropy


def test_predictive_entropy_equals_the_entropy_of_the_full_logits(tiny_model):
    examples = random_token_examples(24, tiny_model.config.vocab_size, seed=4)
    small_batches = ScoringSettings(max_tokens_per_batch=128, precision="float32")
    result = compute_difficulty(
        "predictive_entropy", examples, model=tiny_model, settings=small_batches, progress=False
    )
    for example, value in zip(examples, result.difficulties, strict=True):
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([example.input_ids])).logits[0]
        labels = torch.tensor(example.labels)
        predicts = torch.zeros_like(labels, dtype=torch.bool)
        predicts[:-1] = labels[1:] != -100
        entropy = torch.distributions.Categorical(logits=logits[predicts].double()).entropy()
        assert value == pytest.approx(entropy.mean().item(), abs=1e-4)


# ------------------------------------------------------------------------ cross-entropy


def test_ce_mean_writes_the_table_of_todays_scorer(tiny_model, tmp_path):
    examples = random_token_examples(20, tiny_model.config.vocab_size, seed=5)
    compute_difficulty(
        "ce_mean", examples, model=tiny_model, out_dir=tmp_path / "m", progress=False
    )
    score_examples(tiny_model, examples, out_dir=tmp_path / "plain", progress=False)
    assert (tmp_path / "m" / "difficulties.jsonl").read_bytes() == (
        tmp_path / "plain" / "difficulties.jsonl"
    ).read_bytes()
    summed = compute_difficulty("ce_sum", examples, model=tiny_model, progress=False)
    np.testing.assert_allclose(summed.difficulties, summed.table.loss_sum, rtol=0)


# ------------------------------------------------------------------------ reflection


def test_reflection_rouge_is_one_minus_rouge_l_of_the_students_own_answers(
    tiny_model, tiny_tokenizer, dolly
):
    texts, examples = dolly
    result = compute_difficulty(
        "reflection_rouge",
        examples,
        texts=texts,
        model=tiny_model,
        tokenizer=tiny_tokenizer,
        settings=FLOAT32,
        progress=False,
        temperature=0.0,  # greedy, so generate can be run independently below
        batch_size=1,
        **SHORT,
    )
    by_id = {t.id: t for t in texts}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for example, row in zip(examples, result.rows, strict=True):
        text = by_id[example.id]
        budget = SHORT["max_total_tokens"] - example.num_prompt_tokens
        [answer] = generate(
            tiny_model, tiny_tokenizer, [text.prompt], max_new_tokens=budget, precision="float32"
        )
        assert row["answer"] == answer
        f1 = scorer.score(text.response, answer)["rougeL"].fmeasure
        assert row["difficulty"] == pytest.approx(1 - f1, abs=1e-12)


def test_reflection_rrf_fuses_its_own_rouge_and_ce_columns(tiny_model, tiny_tokenizer, dolly):
    texts, examples = dolly
    result = compute_difficulty(
        "reflection_rrf",
        examples,
        texts=texts,
        model=tiny_model,
        tokenizer=tiny_tokenizer,
        settings=FLOAT32,
        progress=False,
        **SHORT,
    )
    rows = result.rows
    ce = score_examples(tiny_model, examples, settings=FLOAT32, progress=False)
    np.testing.assert_allclose([r["ce_mean"] for r in rows], ce.loss_mean, rtol=1e-12)
    # Brute force: ROUGE rank 1 = highest F1, CE rank 1 = lowest CE, ties by index.
    n = len(rows)
    f1 = [r["rouge_f1"] for r in rows]
    c = [r["ce_mean"] for r in rows]
    rouge_rank = [
        1 + sum(f1[j] > f1[i] or (f1[j] == f1[i] and j < i) for j in range(n)) for i in range(n)
    ]
    ce_rank = [1 + sum(c[j] < c[i] or (c[j] == c[i] and j < i) for j in range(n)) for i in range(n)]
    s = [1 / (60 + rouge_rank[i]) + 1 / (60 + ce_rank[i]) for i in range(n)]
    order = sorted(range(n), key=lambda i: (-s[i], i))
    assert [r["rouge_rank"] for r in rows] == rouge_rank
    assert [r["ce_rank"] for r in rows] == ce_rank
    assert sorted(range(n), key=lambda i: rows[i]["difficulty"]) == order


class Killed(Exception):
    pass


def test_a_killed_reflection_run_resumes_to_the_same_table(
    tiny_model, tiny_tokenizer, dolly, tmp_path, monkeypatch
):
    texts, examples = dolly
    run = {
        "texts": texts,
        "model": tiny_model,
        "tokenizer": tiny_tokenizer,
        "settings": FLOAT32,
        "progress": False,
        "batch_size": 2,
        "shard_batches": 1,
        **SHORT,
    }
    calls = []

    def dies_on_the_fourth_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise Killed
        return generate(*args, **kwargs)

    monkeypatch.setattr(reflection_module, "generate", dies_on_the_fourth_batch)
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        compute_difficulty("reflection_rouge", examples, out_dir=killed, **run)
    shards = sorted((killed / "shards").glob("shard-*.jsonl"))
    assert len(shards) == 3 and not (killed / "difficulties.jsonl").exists()
    finished = {path: path.stat().st_mtime_ns for path in shards}

    calls.clear()
    monkeypatch.setattr(
        reflection_module, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k)
    )
    resumed = compute_difficulty("reflection_rouge", examples, out_dir=killed, **run)
    assert len(calls) == 2  # only the two unfinished batches of five
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())
    clean = compute_difficulty("reflection_rouge", examples, out_dir=tmp_path / "clean", **run)
    assert (killed / "difficulties.jsonl").read_bytes() == (
        tmp_path / "clean" / "difficulties.jsonl"
    ).read_bytes()
    assert resumed.rows == clean.rows

    calls.clear()
    again = compute_difficulty("reflection_rouge", examples, out_dir=killed, **run)
    assert again.reused and not calls and again.rows == clean.rows

    other_model = build_tiny_llama(len(tiny_tokenizer), seed=1)
    with pytest.raises(
        ValueError, match=r"different run \(model changed\); pass another output folder"
    ):
        compute_difficulty(
            "reflection_rouge", examples, out_dir=killed, **{**run, "model": other_model}
        )
    with pytest.raises(ValueError, match=r"different run \(data, num_examples, texts changed\)"):
        compute_difficulty("reflection_rouge", examples[:5], out_dir=killed, **run)
    with pytest.raises(ValueError, match=r"different run \(options changed\)"):
        compute_difficulty("reflection_rouge", examples, out_dir=killed, **{**run, "seed": 1})
    with pytest.raises(ValueError, match=r"different run \(metric, model, options"):
        compute_difficulty("length", examples, out_dir=killed, progress=False)


# ------------------------------------------------------------------------ user errors


def test_wrong_metric_options_and_missing_inputs_are_one_line_errors(
    tiny_model, dolly, monkeypatch
):
    texts, examples = dolly
    # As before spectrumkd.evaluation is imported (another test module may have imported it).
    monkeypatch.delitem(METRICS, "code_execution", raising=False)
    cases = [
        (lambda: compute_difficulty("rouge", examples), "unknown difficulty metric 'rouge'"),
        (lambda: compute_difficulty("code_execution", examples), "spectrumkd.evaluation"),
        (
            lambda: compute_difficulty("length", examples, prompt=True),
            "options are: include_prompt",
        ),
        (lambda: compute_difficulty("length", examples, include_prompt="yes"), "must be a bool"),
        (lambda: compute_difficulty("ce_mean", examples), "needs the student model; pass model="),
        (
            lambda: compute_difficulty("reflection_rouge", examples, model=tiny_model),
            "needs the student's tokenizer",
        ),
        (lambda: compute_difficulty("length", []), "no examples to score"),
        (
            lambda: compute_difficulty("length", examples + examples[:1]),
            "appears twice",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value)
    assert set(METRICS) >= {
        "ce_mean",
        "ce_sum",
        "length",
        "unigram_entropy",
        "predictive_entropy",
        "reflection_rouge",
        "reflection_rrf",
    }


def test_a_folder_of_the_plain_ce_scorer_is_resumed_and_other_leftovers_refused(
    tiny_model, tmp_path
):
    examples = random_token_examples(12, tiny_model.config.vocab_size, seed=6)
    score_examples(tiny_model, examples, out_dir=tmp_path / "plain", progress=False)
    result = compute_difficulty(
        "ce_mean", examples, model=tiny_model, out_dir=tmp_path / "plain", progress=False
    )
    assert json.loads((tmp_path / "plain" / "metric.json").read_text())["metric"] == "ce_mean"
    assert len(result) == 12
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "difficulties.jsonl").write_text("")
    with pytest.raises(ValueError, match="without a metric.json"):
        compute_difficulty("length", examples, out_dir=tmp_path / "odd")


def test_a_run_refused_before_any_work_does_not_hold_its_folder(tmp_path):
    examples = random_token_examples(8, 300, seed=7)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        compute_difficulty("unigram_entropy", examples, vocab_size=5, out_dir=tmp_path / "u")
    result = compute_difficulty("unigram_entropy", examples, vocab_size=300, out_dir=tmp_path / "u")
    assert len(result) == 8
    with pytest.raises(ValueError, match=r"different run \(options changed\)"):
        compute_difficulty("unigram_entropy", examples, vocab_size=301, out_dir=tmp_path / "u")


def test_the_rrf_metric_fuses_finished_tables_in_the_examples_order(tmp_path):
    examples = random_token_examples(15, 300, seed=8)
    compute_difficulty("length", examples, out_dir=tmp_path / "length")
    compute_difficulty("unigram_entropy", examples, vocab_size=300, out_dir=tmp_path / "uni")
    lengths = [sum(label != -100 for label in e.labels) for e in examples]
    # The second table written in reverse order: rows are matched by id, not by line.
    _, entropy = read_difficulties(tmp_path / "uni" / "difficulties.jsonl")
    reverse = tmp_path / "reverse.jsonl"
    reverse.write_text(
        "".join(
            json.dumps({"id": e.id, "difficulty": float(v)}) + "\n"
            for e, v in reversed(list(zip(examples, entropy, strict=True)))
        )
    )
    tables = f"{tmp_path / 'length' / 'difficulties.jsonl'},{reverse}"
    result = compute_difficulty("rrf", examples, tables=tables, out_dir=tmp_path / "rrf")
    # Brute force: ranks with ties by index, s = sum 1/(60 + rank), order by -s then index.
    n = len(examples)

    def ranks(v):
        return [
            1 + sum(v[j] < v[i] or (v[j] == v[i] and j < i) for j in range(n)) for i in range(n)
        ]

    a, b = ranks(lengths), ranks(list(entropy))
    s = [1 / (60 + a[i]) + 1 / (60 + b[i]) for i in range(n)]
    order = sorted(range(n), key=lambda i: (-s[i], i))
    assert sorted(range(n), key=lambda i: result.rows[i]["difficulty"]) == order
    assert [row["table0_rank"] for row in result.rows] == a
    with pytest.raises(ValueError, match="same data"):
        compute_difficulty("rrf", examples[:5], tables=tables)
    with pytest.raises(ValueError, match="two or more"):
        compute_difficulty("rrf", examples, tables=str(reverse))


def test_reflection_rouge_is_the_evaluation_stages_rouge_l():
    from spectrumkd.evaluation.rouge import rouge_l
    from spectrumkd.scoring.reflection import rouge_l_f1

    pairs = [
        ("The cats are running home", "A cat runs home."),
        ("", "anything"),
        ("identical words here", "identical words here"),
    ]
    for prediction, reference in pairs:
        assert 100 * rouge_l_f1(prediction, reference) == pytest.approx(
            rouge_l(prediction, reference), abs=1e-12
        )
    assert rouge_l_f1("The cats are running home", "A cat runs home.") > 0.5  # stemmed
