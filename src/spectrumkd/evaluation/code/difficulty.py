"""Execution-based difficulty for code (spec section 7, beyond the papers): the share of an
example's tests that the untrained student's greedy program passes, run in the evaluation
sandbox; difficulty = 1 - that share (0: the student already solves it, 1: it passes nothing).

Each test runs as its own program (the solution, then the one test), so one failing assertion
does not hide the others: MBPP's tests are the top-level statements of its ``test_list``;
HumanEval's are the top-level ``assert`` statements of its ``check`` function (its other
statements run in every test's program). The program is the suite's: the first fenced Python
block of the answer (:func:`extract_code`), completed as the suite completes it.

Examples are matched to the tasks of the ``problems`` file (MBPP ``mbpp.jsonl`` /
``sanitized-mbpp.json`` or HumanEval) by id: the task id itself (``Mbpp/11``), or the MBPP /
HumanEval number as the training data's id field holds it (``11``). The student answers
greedily, by default the suite's own prompt of the task (option ``prompt="task"``: the paper's
code template around EvalPlus's problem text, which shows the first test and so names the
function the tests call); ``prompt="example"`` gives it the example's training prompt instead,
which for MBPP's plain ``text`` does not name the function, so nearly every program fails its
tests by name alone.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from spectrumkd.data.templates import render_code
from spectrumkd.evaluation.code.isolation import resolve_isolation
from spectrumkd.evaluation.code.suite import (
    CodeProblem,
    check_solutions,
    complete_solution,
    extract_code,
    load_humaneval,
    load_mbpp,
)
from spectrumkd.evaluation.greedy import file_digest
from spectrumkd.scoring.reflection import REFLECTION_OPTIONS, answer_rows, check_reflection_options
from spectrumkd.scoring.registry import MetricInputs, MetricSpec, register_metric

CODE_DIFFICULTY_OPTIONS: dict[str, Any] = {
    **REFLECTION_OPTIONS,
    "temperature": 0.0,  # greedy: the student's own best program
    "max_prompt_tokens": 512,
    "max_total_tokens": 1024,
    "max_new_tokens": 512,
    "problems": "",  # the MBPP or HumanEval file holding the examples' tests
    "timeout_s": 10.0,  # per test program
    "memory_mb": 2048,
    "workers": 0,  # test programs at once; 0: up to 8, one per core
    "isolation": "auto",
    "prompt": "task",  # "task": the code suite's prompt of the task; "example": the training prompt
}
PROMPT_SOURCES = ("task", "example")


def single_tests(problem: CodeProblem) -> list[CodeProblem]:
    """One problem per test of ``problem``, each running only that test."""
    try:
        tree = ast.parse(problem.test)
    except SyntaxError as error:
        raise ValueError(f"task {problem.id}: its tests do not parse ({error.msg})") from None
    if problem.entry_point is None:  # MBPP: every top-level statement is a test
        return [replace(problem, test=ast.unparse(statement)) for statement in tree.body]
    check = next(
        (node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "check"),
        None,
    )
    if check is None:
        return [problem]
    asserts = [i for i, statement in enumerate(check.body) if isinstance(statement, ast.Assert)]
    if not asserts:
        return [problem]
    tests = []
    for keep in asserts:
        body = [s for i, s in enumerate(check.body) if i == keep or i not in asserts]
        one = ast.Module(
            body=[replace_body(node, check, body) for node in tree.body], type_ignores=[]
        )
        tests.append(replace(problem, test=ast.unparse(one)))
    return tests


def replace_body(node: ast.stmt, check: ast.FunctionDef, body: list[ast.stmt]) -> ast.stmt:
    if node is not check:
        return node
    return ast.FunctionDef(
        name=check.name,
        args=check.args,
        body=body,
        decorator_list=check.decorator_list,
        returns=check.returns,
        type_comment=check.type_comment,
        type_params=getattr(check, "type_params", []),
        lineno=check.lineno,
    )


def count_passed_tests(
    problems: Sequence[CodeProblem],
    solutions: Sequence[str],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    workers: int | None = None,
    isolation: str = "auto",
) -> list[tuple[int, int]]:
    """(tests passed, tests) of each self-contained solution against its problem's tests, every
    test in its own sandboxed program (all programs of all problems run together)."""
    if len(problems) != len(solutions):
        raise ValueError(f"{len(problems)} problems but {len(solutions)} solutions")
    split = [single_tests(problem) for problem in problems]
    flat_problems = [test for tests in split for test in tests]
    flat_solutions = [
        solution for solution, tests in zip(solutions, split, strict=True) for _ in tests
    ]
    results = check_solutions(
        flat_problems,
        flat_solutions,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        workers=workers,
        isolation=isolation,
    )
    counts, start = [], 0
    for tests in split:
        passed = sum(result.passed for result in results[start : start + len(tests)])
        counts.append((passed, len(tests)))
        start += len(tests)
    return counts


def execution_difficulty(passed: int, total: int) -> float:
    """1 - the share of tests passed (a task without tests is refused: nothing measures it)."""
    if total < 1:
        raise ValueError("a task without tests has no execution difficulty; drop it")
    return 1.0 - passed / total


def load_problems(path: str | Path) -> list[CodeProblem]:
    """The tasks of an MBPP (``.json`` sanitized, ``.jsonl`` full) or HumanEval
    (``.jsonl``/``.jsonl.gz`` with ``entry_point``) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"code problems file {path} does not exist; pass the option problems=<the MBPP or "
            "HumanEval file holding the examples' tests>"
        )
    if "humaneval" in path.name.lower():
        return load_humaneval(path)
    return load_mbpp(path)


def problems_for(ids: Sequence[str], problems: Sequence[CodeProblem]) -> list[CodeProblem]:
    """The task of each example id: ``Mbpp/11`` itself, or ``11`` for ``Mbpp/11`` or
    ``HumanEval/11``; a missing one is refused in one line."""
    by_id = {problem.id: problem for problem in problems}
    for problem in problems:
        by_id.setdefault(problem.id.split("/", 1)[-1], problem)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} examples have no task in the problems file (first: {missing[0]!r}); "
            "load the data with id_field=task_id and pass the file the examples came from"
        )
    return [by_id[i] for i in ids]


def code_execution_rows(inputs: MetricInputs) -> list[dict[str, Any]]:
    options = dict(inputs.options)
    check_reflection_options(options)
    if not options["problems"]:
        raise ValueError(
            "code_execution needs the option problems=<the MBPP or HumanEval file holding the "
            "examples' tests>"
        )
    if options["prompt"] not in PROMPT_SOURCES:
        raise ValueError(
            f"option prompt={options['prompt']!r} must be one of {', '.join(PROMPT_SOURCES)}"
        )
    problems = problems_for([e.id for e in inputs.examples], load_problems(options["problems"]))
    prompts = None
    if options["prompt"] == "task":
        prompts = [render_code(problem.problem) for problem in problems]
    # A sandbox that cannot start must fail in seconds, not after the generation.
    isolation = resolve_isolation(str(options["isolation"]))

    def run_tests(indices: list[int], answers: list[str]) -> list[dict[str, Any]]:
        tasks = [problems[i] for i in indices]
        solutions = [
            complete_solution(task, extract_code(answer))
            for task, answer in zip(tasks, answers, strict=True)
        ]
        counts = count_passed_tests(
            tasks,
            solutions,
            timeout_s=float(options["timeout_s"]),
            memory_mb=int(options["memory_mb"]),
            workers=int(options["workers"]) or None,
            isolation=isolation,
        )
        return [{"tests_passed": p, "tests": t} for p, t in counts]

    rows = answer_rows(
        inputs,
        run_tests,
        max_new_tokens=int(options["max_new_tokens"]),
        required=("tests_passed", "tests"),
        desc="code execution",
        prompts=prompts,
    )
    return [
        {
            "id": row["id"],
            "difficulty": execution_difficulty(row["tests_passed"], row["tests"]),
            "tests_passed": row["tests_passed"],
            "tests": row["tests"],
            "answer": row["answer"],
        }
        for row in rows
    ]


def describe_problems(options: Any) -> dict[str, Any]:
    path = options.get("problems")
    return {"problems_sha256": file_digest(path) if path and Path(path).is_file() else None}


CODE_EXECUTION = MetricSpec(
    "code_execution",
    code_execution_rows,
    "1 - the share of its tests the student's greedy program passes (sandboxed; code data)",
    needs_model=True,
    needs_texts=True,
    options=CODE_DIFFICULTY_OPTIONS,
    describe=describe_problems,
)
register_metric(CODE_EXECUTION)
