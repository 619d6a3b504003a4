"""Instruction-following evaluation on the real MiniLLM files: loaders, ROUGE-L against
``rouge_score`` itself, generation, resumable runs, and CE/KL against independent computations."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer

from spectrumkd.cli.evaluate import register
from spectrumkd.evaluation import (
    INSTRUCTION_SUITES,
    SUITE_RUNNERS,
    Decoding,
    corpus_rouge_l,
    distillation_quality,
    evaluate_instruction_following,
    filter_prompts,
    generate,
    load_suite,
    rouge_l,
    rouge_l_scores,
)
from spectrumkd.evaluation.instruction import runner as runner_module
from spectrumkd.io import read_jsonl

EXPECTED_ROWS = {"dolly": 500, "selfinst": 242, "vicuna": 80, "sni": 1694, "unni_short": 1050}


@pytest.fixture(scope="module")
def chatty_model(tiny_tokenizer):
    """A tiny random Llama whose greedy continuations differ from prompt to prompt (the default
    initialisation emits the same token everywhere, which would make an order test vacuous)."""
    from conftest import build_tiny_llama

    model = build_tiny_llama(len(tiny_tokenizer), seed=1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4.0)
    return model


def raw_rows(shared_data, name):
    return list(read_jsonl(shared_data / INSTRUCTION_SUITES[name].path))


# --------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("name", list(EXPECTED_ROWS))
def test_loaders_read_every_row_with_the_files_own_prompts(shared_data, name):
    suite = load_suite(name, shared_data)
    rows = raw_rows(shared_data, name)
    assert len(suite) == EXPECTED_ROWS[name] == len(rows)
    assert suite.prompt_mismatches == 0
    assert [e.prompt for e in suite.examples] == [row["prompt"] for row in rows]
    for example, row in zip(suite.examples, rows, strict=True):
        expected = row["output"] if isinstance(row["output"], list) else [row["output"]]
        assert list(example.references) == expected
    assert [e.id for e in suite.examples][:2] == ["000000", "000001"]


def test_sni_keeps_every_reference_and_unni_is_labelled_a_subset(shared_data):
    sni = load_suite("sni", shared_data)
    assert max(len(e.references) for e in sni.examples) > 1
    unni = load_suite("unni_short", shared_data)
    assert "short" in unni.label and "not comparable" in unni.note


def test_loader_reads_other_formats_through_datasets(shared_data, tmp_path):
    import datasets

    rows = raw_rows(shared_data, "selfinst")[:5]
    path = tmp_path / "selfinst.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    suite = load_suite("selfinst", source=path)
    assert [e.prompt for e in suite.examples] == [row["prompt"] for row in rows]
    assert load_suite("selfinst", shared_data, limit=3).examples == suite.examples[:3]


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown instruction suite 'alpaca'"):
        load_suite("alpaca", tmp_path)
    with pytest.raises(FileNotFoundError, match="--data-root"):
        load_suite("dolly", tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "Say hi", "output": []}) + "\n")
    with pytest.raises(ValueError, match="row 0: 'output' must be"):
        load_suite("dolly", source=bad)


def test_prompt_filter_drops_and_counts_long_prompts(shared_data, tiny_tokenizer):
    examples = load_suite("vicuna", shared_data).examples
    lengths = [len(tiny_tokenizer(e.prompt)["input_ids"]) for e in examples]
    limit = sorted(lengths)[len(lengths) // 2]
    kept, dropped = filter_prompts(examples, tiny_tokenizer, limit)
    assert len(kept) == sum(n <= limit for n in lengths)
    assert [row["id"] for row in dropped] == [
        e.id for e, n in zip(examples, lengths, strict=True) if n > limit
    ]
    assert all(row["prompt_tokens"] > limit for row in dropped)


# --------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_reproduces_rouge_score_on_fixed_pairs(shared_data):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    refs = [row["output"] for row in raw_rows(shared_data, "dolly")[:20]]
    preds = refs[1:] + refs[:1]  # each paired with another example's answer
    preds[3] = refs[3]
    preds[4] = "The dogs were running; " + refs[4][:40]
    expected = [
        100 * scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)
    ]
    assert rouge_l_scores(preds, refs) == pytest.approx(expected, abs=1e-12)
    assert corpus_rouge_l(preds, refs) == pytest.approx(sum(expected) / 20, abs=1e-12)
    assert expected[3] == pytest.approx(100.0)
    # by hand: LCS "the cat on the mat" = 5 of 6 tokens on each side -> F1 = 5/6
    assert rouge_l("the cat sat on the mat", "The cat is on the mat.") == pytest.approx(500 / 6)
    # stemming: "runs"/"running" -> "run"
    assert rouge_l("dog running", "dogs runs") == pytest.approx(100.0)


def test_rouge_l_takes_the_best_reference(shared_data):
    row = next(r for r in raw_rows(shared_data, "sni") if len(r["output"]) > 1)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    prediction = row["output"][1]
    expected = max(100 * scorer.score(r, prediction)["rougeL"].fmeasure for r in row["output"])
    assert rouge_l(prediction, row["output"]) == pytest.approx(expected) == pytest.approx(100.0)


def test_prediction_reference_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        rouge_l_scores(["a", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="nothing is truncated"):
        corpus_rouge_l(["a", "b", "c"], ["a", "b"])


# --------------------------------------------------------------------------- generation


def test_left_padded_batches_give_one_at_a_time_greedy_outputs(
    shared_data, tiny_tokenizer, chatty_model
):
    examples = load_suite("selfinst", shared_data, limit=9).examples
    prompts = [e.prompt for e in examples]
    assert len({len(tiny_tokenizer(p)["input_ids"]) for p in prompts}) > 5  # real padding
    exact = {"max_new_tokens": 8, "precision": "float32"}  # bf16 may flip near-ties
    batched = generate(chatty_model, tiny_tokenizer, prompts, batch_size=4, **exact)
    alone = [generate(chatty_model, tiny_tokenizer, [p], **exact)[0] for p in prompts]
    assert batched == alone
    assert len(set(batched)) > 3  # the outputs really differ, so order is tested


def test_generation_stops_after_a_stop_string_and_cuts_it(
    shared_data, tiny_tokenizer, chatty_model
):
    prompts = [e.prompt for e in load_suite("selfinst", shared_data, limit=4).examples]
    full = generate(chatty_model, tiny_tokenizer, prompts, max_new_tokens=12, batch_size=4)
    text = max(full, key=len)
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # a piece of one answer's middle
    assert stop.strip(), "the chosen stop string must be visible text"
    stopped = generate(
        chatty_model, tiny_tokenizer, prompts, max_new_tokens=12, batch_size=4, stop=[stop]
    )
    for before, after in zip(full, stopped, strict=True):
        # The same greedy path up to the stop string; nothing from it on.
        assert after == (before[: before.index(stop)] if stop in before else before)
    assert stopped != full


def test_generation_without_pad_token_and_seeded_sampling(
    shared_data, tiny_tokenizer, chatty_model
):
    prompts = [e.prompt for e in load_suite("dolly", shared_data, limit=5).examples]
    greedy = generate(chatty_model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=2)
    no_pad = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer)
    no_pad.eos_token = tiny_tokenizer.eos_token
    assert no_pad.pad_token is None
    assert generate(chatty_model, no_pad, prompts, max_new_tokens=6, batch_size=2) == greedy

    state = torch.get_rng_state()
    options = {"max_new_tokens": 6, "temperature": 1.0, "batch_size": 2}
    first = generate(chatty_model, tiny_tokenizer, prompts, seed=10, **options)
    again = generate(chatty_model, tiny_tokenizer, prompts, seed=10, **options)
    other = generate(chatty_model, tiny_tokenizer, prompts, seed=20, **options)
    assert first == again and first != other
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone


def test_generation_stops_at_eos_and_returns_only_the_continuation(tiny_tokenizer):
    from test_generation import Scripted  # a forward that emits a fixed script

    a, b = (tiny_tokenizer.convert_tokens_to_ids(t) for t in ("A", "B"))
    model = Scripted(len(tiny_tokenizer), [a, b, tiny_tokenizer.eos_token_id, a, a])
    assert generate(model, tiny_tokenizer, ["x y z", "q"], max_new_tokens=5) == ["AB", "AB"]


# --------------------------------------------------------------------------- quality


def test_quality_ce_equals_the_models_own_loss(shared_data, tiny_tokenizer, tiny_model):
    examples = load_suite("dolly", shared_data, limit=6).examples
    result = distillation_quality(tiny_model, tiny_tokenizer, examples, batch_size=4)
    assert [row.id for row in result.rows] == [e.id for e in examples]
    for example, row in zip(examples, result.rows, strict=True):
        prompt = tiny_tokenizer(example.prompt)["input_ids"]
        response = tiny_tokenizer(example.references[0], add_special_tokens=False)["input_ids"]
        response = response + [tiny_tokenizer.eos_token_id]
        ids = torch.tensor([prompt + response])
        labels = torch.tensor([[-100] * len(prompt) + response])
        with torch.no_grad():
            loss = tiny_model(input_ids=ids, labels=labels).loss.item()
        assert row.ce == pytest.approx(loss, abs=1e-5)
        assert row.tokens == len(response)
        assert row.kl_forward is None and row.kl_reverse is None


def test_quality_kl_is_zero_against_itself_and_matches_a_full_computation(
    shared_data, tiny_tokenizer, tiny_model
):
    from conftest import build_tiny_llama

    examples = load_suite("vicuna", shared_data, limit=6).examples
    same = distillation_quality(tiny_model, tiny_tokenizer, examples, teacher=tiny_model)
    assert len(same.rows) >= 1
    assert all(abs(r.kl_forward) < 1e-6 and abs(r.kl_reverse) < 1e-6 for r in same.rows)

    teacher = build_tiny_llama(len(tiny_tokenizer), seed=7)
    result = distillation_quality(tiny_model, tiny_tokenizer, examples, teacher=teacher)
    # GPT-4's long answers, in the tiny tokenizer's short tokens, exceed 512: dropped, listed
    assert [i for i, _ in result.dropped] == [
        e.id for e in examples if e.id not in {r.id for r in same.rows}
    ]
    row = result.rows[0]
    example = next(e for e in examples if e.id == row.id)
    prompt = tiny_tokenizer(example.prompt)["input_ids"]
    response = tiny_tokenizer(example.references[0], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + response + [tiny_tokenizer.eos_token_id]])
    span = slice(len(prompt) - 1, ids.shape[1] - 1)  # positions predicting response tokens
    with torch.no_grad():
        log_q = F.log_softmax(tiny_model(ids).logits[0, span].double(), -1)
        log_p = F.log_softmax(teacher(ids).logits[0, span].double(), -1)
    forward = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()
    reverse = (log_q.exp() * (log_q - log_p)).sum(-1).mean().item()
    assert row.kl_forward == pytest.approx(forward, rel=1e-4)
    assert row.kl_reverse == pytest.approx(reverse, rel=1e-4)
    assert forward > 0 and reverse > 0


# --------------------------------------------------------------------------- the run


def run(model, tokenizer, out, shared_data, **kwargs):
    options = {
        "suites": ["vicuna", "selfinst"],
        "data_root": shared_data,
        "limit": 3,
        "max_prompt_tokens": 4096,  # the tiny tokenizer's tokens are short: keep every prompt
        "decoding": Decoding(seeds=(10, 20), max_new_tokens=4, batch_size=2),
        "progress": False,
    }
    return evaluate_instruction_following(model, tokenizer, out, **{**options, **kwargs})


def test_run_writes_per_example_files_and_resumes(
    shared_data, tiny_tokenizer, tiny_model, tmp_path, monkeypatch
):
    calls = []
    real_generate = runner_module.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["seed"])
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(runner_module, "generate", counting)
    summary = run(tiny_model, tiny_tokenizer, tmp_path, shared_data, teacher=tiny_model)
    assert len(calls) == 4
    for name in ("vicuna", "selfinst"):
        rows = list(read_jsonl(tmp_path / name / "seed10.jsonl"))
        assert [r["id"] for r in rows] == ["000000", "000001", "000002"]
        assert set(rows[0]) == {"id", "prediction", "references", "rougeL"}
        quality = list(read_jsonl(tmp_path / name / "quality.jsonl"))
        assert set(quality[0]) == {"id", "ce", "kl_forward", "kl_reverse", "tokens"}
        result = summary["suites"][name]
        assert result["examples"] == 3 and set(result["runs"]) == {"seed10", "seed20"}
        mean = sum(r["rougeL"] for r in rows) / 3
        assert result["runs"]["seed10"]["rougeL"] == pytest.approx(mean)
        assert abs(result["quality"]["kl_forward"]) < 1e-6
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["average"]["rougeL"] == pytest.approx(
        (summary["suites"]["vicuna"]["rougeL"] + summary["suites"]["selfinst"]["rougeL"]) / 2
    )
    assert on_disk["decoding"]["seeds"] == [10, 20] and on_disk["decoding"]["top_k"] == 0

    calls.clear()
    again = run(tiny_model, tiny_tokenizer, tmp_path, shared_data, teacher=tiny_model)
    assert calls == []
    assert again["suites"] == summary["suites"]

    (tmp_path / "vicuna" / "seed20.jsonl").unlink()
    more = Decoding(seeds=(10, 20, 30), max_new_tokens=4, batch_size=2)
    run(tiny_model, tiny_tokenizer, tmp_path, shared_data, decoding=more)
    assert sorted(calls) == [20, 30, 30]  # the deleted file and the new seed, nothing else

    with pytest.raises(ValueError, match="different decoding"):
        run(tiny_model, tiny_tokenizer, tmp_path, shared_data, decoding=Decoding(max_new_tokens=5))
    with pytest.raises(ValueError, match="different data_fingerprint"):
        run(tiny_model, tiny_tokenizer, tmp_path, shared_data, limit=2)


def test_run_reports_dropped_prompts_and_registered_suites(
    shared_data, tiny_tokenizer, tiny_model, tmp_path, monkeypatch
):
    seen = {}

    def fake_suite(context):
        seen["limit"], seen["out"] = context.limit, context.out_dir
        return {"metric": "pass@1", "score": 12.5}

    monkeypatch.setitem(SUITE_RUNNERS, "gsm8k", fake_suite)
    prompts = [e.prompt for e in load_suite("vicuna", shared_data, limit=6).examples]
    lengths = sorted(len(tiny_tokenizer(p)["input_ids"]) for p in prompts)
    assert lengths[2] < lengths[-1]
    summary = run(
        tiny_model,
        tiny_tokenizer,
        tmp_path,
        shared_data,
        suites=["vicuna", "gsm8k"],
        limit=6,
        max_prompt_tokens=lengths[2],
        decoding=Decoding(greedy=True, max_new_tokens=2),
        quality=False,
    )
    vicuna = summary["suites"]["vicuna"]
    dropped = list(read_jsonl(tmp_path / "vicuna" / "dropped.jsonl"))
    assert vicuna["dropped_prompts"] == len(dropped) > 0
    assert vicuna["examples"] + vicuna["dropped_prompts"] == 6
    assert (tmp_path / "vicuna" / "greedy.jsonl").is_file() and "quality" not in vicuna
    assert summary["suites"]["gsm8k"] == {"kind": "registered", "metric": "pass@1", "score": 12.5}
    assert seen == {"limit": 6, "out": tmp_path / "gsm8k"}
    assert summary["average"]["sets"] == ["vicuna"]
    with pytest.raises(ValueError, match="unknown suite"):
        run(tiny_model, tiny_tokenizer, tmp_path, shared_data, suites=["humaneval_plus"])


def test_generation_precision_is_part_of_the_run_and_reaches_generate(
    shared_data, tiny_tokenizer, tiny_model, tmp_path, monkeypatch
):
    seen = []
    real_generate = runner_module.generate

    def recording(*args, **kwargs):
        seen.append(kwargs["precision"])
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(runner_module, "generate", recording)
    half = Decoding(greedy=True, max_new_tokens=2, precision="bf16")
    summary = run(tiny_model, tiny_tokenizer, tmp_path, shared_data, decoding=half, quality=False)
    assert seen == ["bf16", "bf16"] and summary["decoding"]["precision"] == "bf16"
    manifest = json.loads((tmp_path / "vicuna" / "manifest.json").read_text())
    assert manifest["generation"]["precision"] == "bf16"
    exact = Decoding(greedy=True, max_new_tokens=2, precision="float32")
    with pytest.raises(ValueError, match="different precision"):  # never mixed in one folder
        run(tiny_model, tiny_tokenizer, tmp_path, shared_data, decoding=exact, quality=False)
    # float32 adds no key: folders from before the setting existed (float32) still resume.
    run(tiny_model, tiny_tokenizer, tmp_path / "exact", shared_data, decoding=exact, quality=False)
    manifest = json.loads((tmp_path / "exact" / "vicuna" / "manifest.json").read_text())
    assert "precision" not in manifest["generation"] and seen[-1] == "float32"


# --------------------------------------------------------------------------- command line


def parse(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_evaluate_end_to_end(shared_data, tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    args = parse(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--teacher",
            str(tiny_model_dir),
            "--suites",
            "dolly,sni",
            "--data-root",
            str(shared_data),
            "--seeds",
            "10",
            "--max-new-tokens",
            "3",
            "--limit",
            "2",
            "--max-prompt-tokens",
            "4096",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--precision",
            "float32",
            "--quiet",
        ]
    )
    args.run(args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(tiny_model_dir) and summary["runs"] == ["seed10"]
    assert summary["decoding"]["max_new_tokens"] == 3
    assert summary["decoding"]["precision"] == "float32"
    assert parse(["evaluate", "--out", str(out)]).precision == "auto"  # fast where safe
    assert set(summary["suites"]) == {"dolly", "sni"}
    assert len(list(read_jsonl(out / "sni" / "seed10.jsonl"))) == 2


def test_cli_user_errors_are_one_line(tmp_path, shared_data):
    with pytest.raises(ValueError, match="--greedy or --seeds"):
        args = parse(["evaluate", "--greedy", "--seeds", "1", "--out", str(tmp_path)])
        args.run(args)
    with pytest.raises(FileNotFoundError, match="--data-root"):
        args = parse(["evaluate", "--data-root", str(tmp_path / "none"), "--out", str(tmp_path)])
        args.run(args)
    with pytest.raises(SystemExit):
        parse(["evaluate", "--seeds", "ten", "--out", str(tmp_path)])


# --------------------------------------------------------------------------- real teacher


@pytest.mark.slow
def test_smollm2_on_every_set(shared_data, tmp_path):
    from spectrumkd.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    model = load_model("smollm2")
    prompts = [e.prompt for e in load_suite("dolly", shared_data, limit=3).examples]
    batched = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
    alone = [generate(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == alone

    summary = evaluate_instruction_following(
        model,
        tokenizer,
        tmp_path,
        data_root=shared_data,
        limit=2,
        decoding=Decoding(seeds=(10,), max_new_tokens=8, batch_size=2),
        teacher=model,
        model_spec="smollm2",
        progress=False,
    )
    assert set(summary["suites"]) == set(EXPECTED_ROWS)
    for result in summary["suites"].values():
        assert result["examples"] == 2 and result["dropped_prompts"] == 0
        assert 0.5 < result["quality"]["ce"] < 10  # a trained model, not a random one
        assert abs(result["quality"]["kl_forward"]) < 1e-5
    rows = list(read_jsonl(tmp_path / "dolly" / "seed10.jsonl"))
    assert all(row["prediction"].strip() for row in rows)


def test_an_empty_suite_file_is_refused_in_one_line(tmp_path):
    from spectrumkd.evaluation import load_suite

    empty = tmp_path / "dolly.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError) as error:
        load_suite("dolly", source=empty)
    assert str(error.value) == f"{empty} is empty; give a JSON Lines file with at least one row"
