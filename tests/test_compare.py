"""``spectrumkd compare``: gains, directions, id pairing and Wilcoxon p-values checked against
``scipy.stats.wilcoxon`` on evaluation folders written by the evaluation stage itself."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from scipy.stats import wilcoxon

from spectrumkd.evaluation import SUITE_RUNNERS, Decoding, evaluate_instruction_following
from spectrumkd.evaluation.compare import (
    MIN_NONZERO,
    compare_runs,
    comparison_table,
    default_out_path,
    relative_gain,
    wilcoxon_test,
)
from spectrumkd.evaluation.maths import NEXT_PROBLEM, evaluate_maths, load_math500
from spectrumkd.evaluation.rouge import rouge_l_scores
from spectrumkd.io import read_jsonl, write_jsonl

# --------------------------------------------------------------------------- pure parts


def test_relative_gain_is_the_papers_p_gains():
    assert relative_gain(20.0, 25.0) == pytest.approx(25.0)
    assert relative_gain(2.0, 1.5) == pytest.approx(-25.0)  # lower CE: negative gain, better
    assert relative_gain(0.0, 1.0) is None and relative_gain(None, 1.0) is None


def test_wilcoxon_matches_scipy_and_refuses_too_few_pairs():
    rng = random.Random(0)
    base = [rng.random() for _ in range(30)]
    new = [b + rng.gauss(0.1, 0.2) for b in base]
    new[3] = base[3]  # a zero difference, dropped by zero_method="wilcox"
    result = wilcoxon_test(base, new)
    expected = wilcoxon(new, base, zero_method="wilcox", alternative="two-sided")
    assert result["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["n_nonzero"] == 29

    few = wilcoxon_test([1.0] * 8, [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert few["p_value"] is None and few["n_nonzero"] == MIN_NONZERO - 1
    assert "only 5 pairs differ" in few["reason"]
    # Below 6 non-zero pairs even a perfect sweep cannot reach p < 0.05; at 6 it can.
    assert wilcoxon([2.0] * 5, [1.0] * 5).pvalue > 0.05
    six = wilcoxon_test([1.0] * 6, [2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert six["p_value"] == pytest.approx(2 / 2**6)
    equal = wilcoxon_test([0.5, 0.5], [0.5, 0.5])
    assert equal["p_value"] is None and "all 2 pairs are equal" in equal["reason"]
    with pytest.raises(ValueError, match="pairs must match"):
        wilcoxon_test([1.0], [1.0, 2.0])


# --------------------------------------------------------------------------- real runs


def oracle_math(shared_data, right_every: int):
    """A generate_fn answering every ``right_every``-th MATH-500 problem right."""
    problems = load_math500(shared_data / "math/math500_test.jsonl")

    def generate(prompts):
        out = []
        for prompt in prompts:
            asked = prompt.rsplit(NEXT_PROBLEM + "\n", 1)[1]
            index = next(i for i, p in enumerate(problems) if asked.startswith(p.problem + "\n"))
            answer = problems[index].answer if index % right_every == 0 else "wrong"
            out.append(f"So \\boxed{{{answer}}}.\n")
        return out

    return generate


def evaluate(model, tokenizer, out, shared_data, monkeypatch, *, suites, seeds, teacher, right):
    def math_runner(ctx):  # the registered maths suite, with an oracle instead of a model
        summary = evaluate_maths(
            "math",
            data_dir=ctx.data_root,
            out_dir=ctx.out_dir.parent,
            generate_fn=oracle_math(shared_data, right),
            limit=ctx.limit,
            name="oracle",
        )
        return {"metric": "pass@1", "score": summary["pass_at_1"], **summary}

    monkeypatch.setitem(SUITE_RUNNERS, "math", math_runner)
    return evaluate_instruction_following(
        model,
        tokenizer,
        out,
        suites=suites,
        data_root=shared_data,
        limit=24,
        max_prompt_tokens=4096,  # the tiny tokenizer's tokens are short: keep every prompt
        decoding=Decoding(seeds=seeds, max_new_tokens=6, batch_size=8),
        teacher=teacher,
        progress=False,
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, shared_data, tiny_tokenizer):
    """Base: one tiny model; new: another, on overlapping sets and seeds; a third tiny model is
    the teacher of both (so both KLs are real, non-zero numbers)."""
    from conftest import build_tiny_llama

    root = tmp_path_factory.mktemp("compare")
    base_model = build_tiny_llama(len(tiny_tokenizer), seed=0)
    new_model = build_tiny_llama(len(tiny_tokenizer), seed=1)
    with torch.no_grad():
        for parameter in new_model.parameters():
            parameter.mul_(4.0)  # varied continuations, unlike the default initialisation
    teacher = build_tiny_llama(len(tiny_tokenizer), seed=2)
    with pytest.MonkeyPatch.context() as monkeypatch:
        evaluate(
            base_model,
            tiny_tokenizer,
            root / "A",
            shared_data,
            monkeypatch,
            suites=["vicuna", "selfinst", "math"],
            seeds=(10, 20, 30),
            teacher=teacher,
            right=3,
        )
        evaluate(
            new_model,
            tiny_tokenizer,
            root / "B",
            shared_data,
            monkeypatch,
            suites=["vicuna", "dolly", "math"],
            seeds=(20, 30, 40),
            teacher=teacher,
            right=2,
        )
    return root / "A", root / "B"


def per_example(folder, name, runs):
    """Each example's ROUGE-L averaged over ``runs``, read straight from the files."""
    scores: dict[str, list[float]] = {}
    for run in runs:
        for row in read_jsonl(folder / name / f"{run}.jsonl"):
            scores.setdefault(row["id"], []).append(row["rougeL"])
    return {i: statistics.fmean(v) for i, v in scores.items()}


def check_row(row, base: dict[str, float], new: dict[str, float], weights=None, scale=1.0):
    """``row`` against a direct computation on the same pairs (scipy called here, directly)."""
    ids = sorted(set(base) & set(new))
    assert row["n_pairs"] == len(ids)
    if weights is None:
        base_mean = statistics.fmean(base[i] for i in ids) * scale
        new_mean = statistics.fmean(new[i] for i in ids) * scale
    else:
        base_w, new_w = weights
        base_mean = sum(base[i] * base_w[i] for i in ids) / sum(base_w[i] for i in ids)
        new_mean = sum(new[i] * new_w[i] for i in ids) / sum(new_w[i] for i in ids)
    assert row["base"] == pytest.approx(base_mean, rel=1e-12)
    assert row["new"] == pytest.approx(new_mean, rel=1e-12)
    assert row["diff"] == pytest.approx(new_mean - base_mean, rel=1e-9, abs=1e-12)
    if base_mean == 0:
        assert row["gain_pct"] is None and "no relative gain" in row["note"]
    else:
        expected_gain = (new_mean - base_mean) / base_mean * 100
        assert row["gain_pct"] == pytest.approx(expected_gain, rel=1e-9)
    x, y = [new[i] for i in ids], [base[i] for i in ids]
    nonzero = sum(a != b for a, b in zip(x, y, strict=True))
    assert row["n_nonzero"] == nonzero
    if nonzero >= MIN_NONZERO:
        expected = wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
        assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    else:
        assert row["p_value"] is None and row["note"]
    higher = row["direction"] == "higher"
    if new_mean == base_mean:
        assert row["better"] == "tie"
    else:
        assert row["better"] == ("new" if (new_mean > base_mean) == higher else "base")


def quality(folder, name, key):
    rows = list(read_jsonl(folder / name / "quality.jsonl"))
    return {r["id"]: r[key] for r in rows}, {r["id"]: r["tokens"] for r in rows}


def test_compare_real_runs_matches_direct_computation(two_runs):
    base_dir, new_dir = two_runs
    result = compare_runs(base_dir, new_dir)
    rows = {(r["set"], r["metric"]): r for r in result["rows"]}
    assert set(rows) == {
        ("vicuna", "rougeL"),
        ("vicuna", "ce"),
        ("vicuna", "kl_forward"),
        ("vicuna", "kl_reverse"),
        ("math", "pass@1"),
    }
    assert {(s["set"], s["reason"]) for s in result["skipped"]} == {
        ("selfinst", "only in base"),
        ("dolly", "only in new"),
    }
    # ROUGE-L on the seeds both runs have (20, 30), not on 10 or 40.
    rouge = rows["vicuna", "rougeL"]
    assert "seed20, seed30" in rouge["note"]
    shared = ["seed20", "seed30"]
    check_row(
        rouge, per_example(base_dir, "vicuna", shared), per_example(new_dir, "vicuna", shared)
    )
    for metric in ("ce", "kl_forward", "kl_reverse"):
        base_values, base_tokens = quality(base_dir, "vicuna", metric)
        new_values, new_tokens = quality(new_dir, "vicuna", metric)
        row = rows["vicuna", metric]
        assert row["direction"] == "lower"
        check_row(row, base_values, new_values, weights=(base_tokens, new_tokens))
        assert row["p_value"] is not None  # 24 real examples, all different
    # The token-weighted CE is the evaluation summary's own number (same examples on both).
    summary = json.loads((base_dir / "summary.json").read_text())
    assert rows["vicuna", "ce"]["base"] == pytest.approx(
        summary["suites"]["vicuna"]["quality"]["ce"], rel=1e-9
    )
    # pass@1 on 0/1 pairs: every 3rd problem right in the base, every 2nd in the new run.
    correct = {
        name: {r["id"]: float(r["correct"]) for r in read_jsonl(d / "math" / "greedy.jsonl")}
        for name, d in (("base", base_dir), ("new", new_dir))
    }
    math_row = rows["math", "pass@1"]
    check_row(math_row, correct["base"], correct["new"], scale=100.0)
    assert math_row["base"] == pytest.approx(100 * 8 / 24) and math_row["new"] == 50.0
    assert math_row["better"] == "new" and math_row["n_pairs"] == 24
    assert math_row["n_nonzero"] == 12  # discordant: right in exactly one run

    table = comparison_table(result)
    assert table.row_count == len(result["rows"])


def derived_run(source, target, *, keep=None, shuffle=True, seed=0):
    """A copy of ``source`` whose vicuna predictions are replaced by a prefix of the reference
    (so ROUGE-L really changes, rescored with the evaluation's own scorer), rows shuffled."""
    shutil.copytree(source, target)
    rng = random.Random(seed)
    for path in sorted((target / "vicuna").glob("seed*.jsonl")):
        rows = list(read_jsonl(path))
        for row in rows:
            words = row["references"][0].split()
            row["prediction"] = " ".join(words[: rng.randint(0, len(words))])
        scores = rouge_l_scores([r["prediction"] for r in rows], [r["references"] for r in rows])
        for row, score in zip(rows, scores, strict=True):
            row["rougeL"] = score
        if keep is not None:
            rows = [r for r in rows if r["id"] in keep]
        if shuffle:
            rng.shuffle(rows)
        write_jsonl(path, rows)
    return target


def test_ids_pair_whatever_the_row_order_and_missing_ids_are_left_out(two_runs, tmp_path):
    base_dir, _ = two_runs
    all_ids = [r["id"] for r in read_jsonl(base_dir / "vicuna" / "seed10.jsonl")]
    keep = set(all_ids[:20])
    new_dir = derived_run(base_dir, tmp_path / "B", keep=keep)
    assert [r["id"] for r in read_jsonl(new_dir / "vicuna" / "seed10.jsonl")] != sorted(keep)
    result = compare_runs(base_dir, new_dir)
    row = next(r for r in result["rows"] if (r["set"], r["metric"]) == ("vicuna", "rougeL"))
    runs = ["seed10", "seed20", "seed30"]
    check_row(row, per_example(base_dir, "vicuna", runs), per_example(new_dir, "vicuna", runs))
    assert row["n_pairs"] == 20 and "4 ids only in base" in row["note"]
    assert row["p_value"] is not None and row["better"] == "new"
    # Unchanged metrics: every pair equal, no test, a tie.
    ce = next(r for r in result["rows"] if (r["set"], r["metric"]) == ("vicuna", "ce"))
    assert ce["diff"] == 0 and ce["better"] == "tie" and ce["p_value"] is None
    assert f"all {ce['n_pairs']} pairs are equal" in ce["note"] and ce["n_pairs"] > 10
    # Two sets evaluated, the average row is their mean (selfinst's ROUGE-L is unchanged).
    average = result["rows"][-1]
    assert average["set"] == "Average" and average["p_value"] is None
    selfinst = next(r for r in result["rows"] if (r["set"], r["metric"]) == ("selfinst", "rougeL"))
    assert average["base"] == pytest.approx((row["base"] + selfinst["base"]) / 2)

    # Same ids, other references: the runs (or two files of one run) hold different data.
    for name in ("seed20.jsonl", "seed10.jsonl", "seed30.jsonl"):
        path = new_dir / "vicuna" / name
        rows = list(read_jsonl(path))
        rows[0]["references"] = ["something else"]
        write_jsonl(path, rows)
        if name == "seed20.jsonl":
            with pytest.raises(
                ValueError, match="different reference answers in seed10 and seed20"
            ):
                compare_runs(base_dir, new_dir)
    with pytest.raises(ValueError, match=r"vicuna: example \d+ has different reference answers"):
        compare_runs(base_dir, new_dir)


def test_runs_without_shared_seeds_or_summary(two_runs, tmp_path):
    base_dir, new_dir = two_runs
    greedy = tmp_path / "greedy"
    shutil.copytree(new_dir, greedy)
    for path in (greedy / "vicuna").glob("seed*.jsonl"):
        path.rename(path.with_name("greedy.jsonl"))
    result = compare_runs(base_dir, greedy)
    assert ("vicuna", "rougeL") not in {(r["set"], r["metric"]) for r in result["rows"]}
    reasons = [s["reason"] for s in result["skipped"] if s["set"] == "vicuna"]
    assert reasons and "rougeL: no generation run in both" in reasons[0]
    with pytest.raises(FileNotFoundError, match="summary.json not found"):
        compare_runs(base_dir, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compare_runs(base_dir, tmp_path / "none")


def parse(argv):
    from spectrumkd.cli.compare import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_compare_writes_the_default_file(two_runs, tmp_path, capsys):
    base_dir, new_dir = two_runs
    args = parse(["compare", str(base_dir), str(new_dir)])
    args.run(args)
    path = default_out_path(base_dir, new_dir)
    assert path == new_dir / f"compare_{base_dir.name}.json"
    assert default_out_path("runs/baseline/eval", "x") == Path("x/compare_baseline-eval.json")
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(compare_runs(base_dir, new_dir)))
    assert {
        "set",
        "metric",
        "base",
        "new",
        "diff",
        "gain_pct",
        "better",
        "p_value",
        "n_pairs",
    } <= set(written["rows"][0])
    assert "gain %" in capsys.readouterr().out
    out = tmp_path / "cmp.json"
    args = parse(["compare", str(base_dir), str(new_dir), "--out", str(out), "--quiet"])
    args.run(args)
    assert out.is_file() and capsys.readouterr().out == ""
    path.unlink()  # the module-scoped runs stay as the other tests expect
