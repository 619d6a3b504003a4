"""Execution-based difficulty for code (real MBPP and HumanEval rows, run in the sandbox) and
answer-verified difficulty for maths (real GSM8K rows, math-verify): the pure parts against
known solutions, and the metrics end to end on the tiny untrained student."""

from __future__ import annotations

import json

import pytest

import spectrumkd.evaluation  # noqa: F401  (registers code_execution and maths_verified)
from spectrumkd.data.loading import FieldMap, load_examples
from spectrumkd.data.templates import render_code
from spectrumkd.data.tokenize import tokenize_examples
from spectrumkd.evaluation.code import extract_code, load_humaneval, load_mbpp, run_program
from spectrumkd.evaluation.code.difficulty import (
    count_passed_tests,
    execution_difficulty,
    problems_for,
    single_tests,
)
from spectrumkd.evaluation.maths import load_gsm8k
from spectrumkd.evaluation.maths_difficulty import answer_verifies, final_answer, reference_answer
from spectrumkd.io import read_jsonl
from spectrumkd.models.generation import generate
from spectrumkd.scoring import ScoringSettings, compute_difficulty

FLOAT32 = ScoringSettings(precision="float32")


@pytest.fixture(scope="module")
def mbpp_file(shared_data):
    return shared_data / "mbpp" / "mbpp.jsonl"


@pytest.fixture(scope="module")
def mbpp(mbpp_file):
    return {p.id: p for p in load_mbpp(mbpp_file) if p.id in {f"Mbpp/{i}" for i in range(11, 21)}}


def difficulties(problems, solutions):
    return [execution_difficulty(p, t) for p, t in count_passed_tests(problems, solutions)]


def test_canonical_mbpp_solutions_get_difficulty_0_and_broken_ones_1(mbpp):
    problems = list(mbpp.values())
    assert len(problems) == 10
    assert difficulties(problems, [p.reference for p in problems]) == [0.0] * 10
    # Broken: the function exists but returns nothing useful; or the program does not parse.
    broken = []
    for problem in problems:
        name = problem.test.split("assert ", 1)[1].split("(", 1)[0].strip()
        broken.append(f"def {name}(*args, **kwargs):\n    return None\n")
    broken[0] = "def remove_Occ(s, ch)\n    return s\n"  # a syntax error
    assert difficulties(problems, broken) == [1.0] * 10


def test_the_share_counts_each_test_on_its_own(mbpp):
    problem = mbpp["Mbpp/11"]
    assert [t.test for t in single_tests(problem)] == [
        "assert remove_Occ('hello', 'l') == 'heo'",
        "assert remove_Occ('abcda', 'a') == 'bcd'",
        "assert remove_Occ('PHP', 'P') == 'H'",
    ]
    one_right = "def remove_Occ(s, ch):\n    return 'heo'\n"
    two_right = "def remove_Occ(s, ch):\n    return {'l': 'heo', 'a': 'bcd'}.get(ch, s)\n"
    assert count_passed_tests([problem] * 2, [one_right, two_right]) == [(1, 3), (2, 3)]
    assert execution_difficulty(1, 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="without tests"):
        execution_difficulty(0, 0)


def test_humaneval_tests_are_the_asserts_of_check(shared_data):
    problems = load_humaneval(shared_data / "humaneval" / "HumanEval.jsonl.gz")[:3]
    for problem in problems:
        tests = single_tests(problem)
        assert len(tests) == problem.test.count("\n    assert ")
    assert difficulties(problems, [p.reference for p in problems]) == [0.0] * 3
    stubs = [p.prompt_code + "    return None\n" for p in problems]
    assert difficulties(problems, stubs) == [1.0] * 3


def test_examples_are_matched_to_tasks_by_id(mbpp):
    problems = list(mbpp.values())
    assert [p.id for p in problems_for(["11", "Mbpp/12"], problems)] == ["Mbpp/11", "Mbpp/12"]
    with pytest.raises(ValueError, match="no task in the problems file \\(first: '9999'\\)"):
        problems_for(["11", "9999"], problems)


def test_the_untrained_students_pass_shares_on_real_mbpp_rows(
    tiny_model, tiny_tokenizer, mbpp_file, tmp_path
):
    fields = FieldMap(instruction=None, input=None, prompt="text", response="code")
    texts = load_examples(str(mbpp_file), fields=fields, template="code", id_field="task_id")
    texts = [t for t in texts if 11 <= int(t.id) <= 16]
    examples = tokenize_examples(texts, tiny_tokenizer, max_length=1024).examples
    assert len(examples) == 6
    result = compute_difficulty(
        "code_execution",
        examples,
        texts=texts,
        model=tiny_model,
        tokenizer=tiny_tokenizer,
        out_dir=tmp_path / "code",
        settings=FLOAT32,
        progress=False,
        problems=str(mbpp_file),
        max_new_tokens=24,
        batch_size=1,
    )
    tasks = {p.id: p for p in load_mbpp(mbpp_file)}
    raw = {str(r["task_id"]): r for r in read_jsonl(mbpp_file)}
    for row in result.rows:
        # The student answered the suite's prompt of the task (it names the function).
        task_prompt = render_code(tasks[f"Mbpp/{row['id']}"].problem)
        [answer] = generate(
            tiny_model, tiny_tokenizer, [task_prompt], max_new_tokens=24, precision="float32"
        )
        assert row["answer"] == answer
        tests = raw[row["id"]]["test_list"]
        assert row["tests"] == len(tests)
        # Independently: the answer's program with each test, run in the sandbox directly.
        code = extract_code(row["answer"])
        passed = sum(
            run_program(f"{code}\n\n{test}\n", run_name="__solution__").passed for test in tests
        )
        assert row["tests_passed"] == passed
        assert row["difficulty"] == 1 - passed / len(tests)
    shares = {row["id"]: row["tests_passed"] / row["tests"] for row in result.rows}
    print("untrained tiny student's MBPP pass shares:", shares)
    manifest = json.loads((tmp_path / "code" / "metric.json").read_text())
    assert len(manifest["inputs"]["problems_sha256"]) == 16
    again = compute_difficulty(
        "code_execution",
        examples,
        texts=texts,
        model=tiny_model,
        tokenizer=tiny_tokenizer,
        out_dir=tmp_path / "code",
        settings=FLOAT32,
        progress=False,
        problems=str(mbpp_file),
        max_new_tokens=24,
        batch_size=1,
    )
    assert again.reused and again.rows == result.rows
    with pytest.raises(ValueError, match="option prompt='suite' must be one of task, example"):
        compute_difficulty(
            "code_execution",
            examples,
            texts=texts,
            model=tiny_model,
            tokenizer=tiny_tokenizer,
            problems=str(mbpp_file),
            prompt="suite",
        )
    with pytest.raises(ValueError, match="needs the option problems="):
        compute_difficulty(
            "code_execution", examples, texts=texts, model=tiny_model, tokenizer=tiny_tokenizer
        )


# ------------------------------------------------------------------------------- maths


@pytest.fixture(scope="module")
def gsm8k_rows(shared_data):
    return list(read_jsonl(shared_data / "gsm8k" / "train.jsonl"))[:4]


def test_a_correct_answer_verifies_and_a_wrong_one_does_not_on_real_gsm8k_rows(
    gsm8k_rows, shared_data
):
    first = gsm8k_rows[0]  # Natalia's clips: 72
    assert reference_answer(first["answer"]) == "72"
    assert answer_verifies("48/2 = 24 in May, so 48 + 24 = \\boxed{72}.", "72")
    assert answer_verifies(first["answer"], "72")  # the reference's own '#### 72'
    assert answer_verifies("The answer is \\boxed{72.0}", "72")
    assert not answer_verifies("48 + 48 = \\boxed{96}.", "72")
    assert not answer_verifies("She sold 72 clips.", "72")  # no final answer to read
    # A box in an invented next problem does not count.
    assert not answer_verifies("\\boxed{70}\n### Problem: x\n\\boxed{72}", "72")
    for row, problem in zip(
        gsm8k_rows, load_gsm8k(shared_data / "gsm8k" / "train.jsonl"), strict=False
    ):
        assert reference_answer(row["answer"]) == problem.answer
        assert answer_verifies(problem.solution, problem.answer)  # boxed form of the solution
    assert final_answer("so #### 1,234\nmore") == "1234"


def test_maths_verified_on_the_untrained_student(tiny_model, tiny_tokenizer, shared_data):
    fields = FieldMap(instruction=None, input=None, prompt="question", response="answer")
    texts = load_examples(
        str(shared_data / "gsm8k" / "train.jsonl"), fields=fields, template="math", limit=4
    )
    examples = tokenize_examples(texts, tiny_tokenizer, max_length=1024).examples
    result = compute_difficulty(
        "maths_verified",
        examples,
        texts=texts,
        model=tiny_model,
        tokenizer=tiny_tokenizer,
        settings=FLOAT32,
        progress=False,
        max_new_tokens=16,
    )
    for row, text in zip(result.rows, texts, strict=True):
        verified = answer_verifies(row["answer"], reference_answer(text.response))
        assert row["difficulty"] == (0.0 if verified else 1.0)
        assert row["reference_answer"] == reference_answer(text.response)
    with pytest.raises(ValueError, match="samples > 1 needs temperature > 0"):
        compute_difficulty(
            "maths_verified",
            examples,
            texts=texts,
            model=tiny_model,
            tokenizer=tiny_tokenizer,
            samples=2,
        )
