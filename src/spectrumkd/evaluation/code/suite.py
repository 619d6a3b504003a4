"""Code pass@1 (HumanEval, MBPP) with the paper's code template (Figure 8) and a sandbox.

Protocol (spec: appendix C.4, after EvalPlus): greedy decoding; the first fenced Python block of
the answer is the solution (the whole answer when there is no fence); the solution plus the
set's tests run in :mod:`spectrumkd.evaluation.code.sandbox`; a timeout or crash is a failure.

Prompts follow EvalPlus's instruction-model prompts inside the paper's template: the problem
section is the task in a code fence. HumanEval's task is its ``prompt`` (signature and
docstring); MBPP's is EvalPlus's MBPP+ form, a docstring holding the description and the first
test assertion (which names the function and shows its call).

Test programs:

- HumanEval: solution + the task's ``test`` + ``check(<entry_point>)``. When the extracted code
  does not define the entry point (a bare function body), the task prompt is put in front, as
  a completion would be. The prompt's import lines (``from typing import List``...) are put in
  front of a solution that lacks them, because annotations fail without them.
- MBPP: the set's test imports + solution + setup code + every ``test_list`` assertion
  (``challenge_test_list`` is not run, as in the original MBPP evaluation).

Programs run with ``__name__`` set to ``"__solution__"``, so a solution's own
``if __name__ == "__main__":`` demo (often reading stdin) does not run, the same effect as
EvalPlus's sanitiser removing it.

``OUT/<set>/samples.jsonl`` holds EvalPlus samples (``task_id`` + self-contained ``solution``):
``evalplus.evaluate --dataset humaneval|mbpp --samples OUT/<set>/samples.jsonl`` runs
HumanEval+/MBPP+'s extended tests on the same generations (task ids follow EvalPlus:
``HumanEval/0``, ``Mbpp/2``; MBPP+ covers 378 of the 427 sanitized tasks).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrumkd.data.templates import render_code
from spectrumkd.evaluation.code.isolation import resolve_isolation
from spectrumkd.evaluation.code.process import SandboxResult
from spectrumkd.evaluation.code.sandbox import run_programs
from spectrumkd.evaluation.greedy import (
    GenerateFn,
    SuiteItem,
    apply_limit,
    file_digest,
    model_name,
    pass_at_1_result,
    precision_setting,
    resolve_generate,
    run_greedy_suite,
)
from spectrumkd.evaluation.registry import SuiteContext, data_root_of
from spectrumkd.io import read_jsonl, write_jsonl

CODE_SETS = ("humaneval", "mbpp")
HUMANEVAL = "humaneval/HumanEval.jsonl.gz"
MBPP_SANITIZED = "mbpp/sanitized-mbpp.json"
MBPP_FULL = "mbpp/mbpp.jsonl"
# EvalPlus's default generation budget for code.
CODE_MAX_NEW_TOKENS = 768
# MBPP's README: task-id ranges of its splits.
MBPP_SPLITS = {
    "all": (1, 10**9),
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}
RUN_NAME = "__solution__"


@dataclass(frozen=True)
class CodeProblem:
    """One task: EvalPlus-style id, the problem text shown to the model, and how to test it."""

    id: str
    problem: str
    test: str
    reference: str  # a self-contained reference solution
    entry_point: str | None = None
    prompt_code: str = ""  # HumanEval: signature + docstring, put before a bare body
    test_header: str = ""  # MBPP: test imports, run before the solution
    test_setup: str = ""  # MBPP: setup code (may use the solution's names), run after it


# ---------------------------------------------------------------------------------- loading


def load_humaneval(path: str | Path) -> list[CodeProblem]:
    """HumanEval rows (``task_id``, ``prompt``, ``canonical_solution``, ``test``,
    ``entry_point``) from a ``.jsonl`` or ``.jsonl.gz`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    problems = []
    for index, row in enumerate(rows):
        missing = [
            key
            for key in ("task_id", "prompt", "canonical_solution", "test", "entry_point")
            if key not in row
        ]
        if missing:
            raise ValueError(f"{path}: row {index} lacks {missing} (not HumanEval format)")
        problems.append(
            CodeProblem(
                id=row["task_id"],
                problem="```python\n" + row["prompt"].strip() + "\n```",
                test=row["test"],
                reference=row["prompt"] + row["canonical_solution"],
                entry_point=row["entry_point"],
                prompt_code=row["prompt"],
            )
        )
    return problems


def load_mbpp(path: str | Path, *, split: str = "all") -> list[CodeProblem]:
    """MBPP tasks from ``sanitized-mbpp.json`` (427 rows: ``prompt``, ``test_imports``) or the
    full ``mbpp.jsonl`` (974 rows: ``text``, ``test_setup_code``); ``split`` keeps the task-id
    range of one of MBPP's splits (``test`` = 11-510)."""
    if split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; choose one of {', '.join(MBPP_SPLITS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MBPP file not found: {path}")
    if path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
    else:
        rows = list(read_jsonl(path))
    low, high = MBPP_SPLITS[split]
    problems = []
    for index, row in enumerate(rows):
        text = row.get("prompt", row.get("text"))
        if text is None or "test_list" not in row or "code" not in row or "task_id" not in row:
            raise ValueError(
                f"{path}: row {index} lacks task_id/prompt (or text)/code/test_list "
                "(not MBPP format)"
            )
        if not low <= int(row["task_id"]) <= high:
            continue
        header = "\n".join(row.get("test_imports") or [])
        setup = (row.get("test_setup_code") or "").replace("\r\n", "\n")
        tests = [test for test in row["test_list"] if test.strip()]
        # EvalPlus's MBPP+ prompt: the description and one example call, as a docstring.
        docstring = '"""\n' + text.strip() + "\n" + (tests[0] if tests else "") + '\n"""'
        problems.append(
            CodeProblem(
                id=f"Mbpp/{row['task_id']}",
                problem="```python\n" + docstring + "\n```",
                test="\n".join(tests),
                reference=row["code"].replace("\r\n", "\n"),
                test_header=header,
                test_setup=setup,
            )
        )
    return problems


def load_code_set(
    set_name: str, data_dir: str | Path, *, mbpp_file: str = MBPP_SANITIZED, mbpp_split: str = "all"
) -> tuple[list[CodeProblem], Path]:
    """The tasks of ``humaneval`` or ``mbpp`` under the shared data folder."""
    data_dir = Path(data_dir)
    if set_name == "humaneval":
        path = data_dir / HUMANEVAL
        return load_humaneval(path), path
    if set_name == "mbpp":
        path = data_dir / mbpp_file
        return load_mbpp(path, split=mbpp_split), path
    raise ValueError(f"unknown code set {set_name!r}; choose one of {', '.join(CODE_SETS)}")


# ---------------------------------------------------------------------------------- programs

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}


def extract_code(completion: str) -> str:
    """The first fenced Python block (an untagged fence counts; a block cut off by the token
    limit runs to the end); the whole completion when it has no such fence."""
    for match in _FENCE.finditer(completion):
        if match.group(1).lower() in _PYTHON_TAGS:
            return match.group(2).rstrip() + "\n"
    return completion.rstrip() + "\n"


def _imports(code: str) -> list[str]:
    return [
        line
        for line in code.splitlines()
        if line.startswith("import ") or (line.startswith("from ") and " import " in line)
    ]


def complete_solution(problem: CodeProblem, code: str) -> str:
    """The self-contained solution to run (and to hand to EvalPlus) for extracted ``code``."""
    if problem.entry_point is None:
        return code
    if not re.search(rf"^\s*def\s+{re.escape(problem.entry_point)}\s*\(", code, re.MULTILINE):
        return problem.prompt_code + code  # a bare function body: complete the prompt
    missing = [line for line in _imports(problem.prompt_code) if line not in code.splitlines()]
    return "\n".join(missing) + "\n" + code if missing else code


def build_program(problem: CodeProblem, solution: str) -> str:
    """Solution plus the set's tests, as one program whose failure is a non-zero exit."""
    if problem.entry_point is not None:  # HumanEval
        return f"{solution}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"
    # MBPP's harness order: imports, solution, setup code (it builds objects from the
    # solution's classes), then the assertions.
    header = problem.test_header + "\n\n" if problem.test_header else ""
    setup = problem.test_setup + "\n\n" if problem.test_setup.strip() else ""
    return f"{header}{solution}\n\n{setup}{problem.test}\n"


def check_solutions(
    problems: Sequence[CodeProblem],
    solutions: Sequence[str],
    *,
    timeout_s: float = 20.0,
    memory_mb: int = 2048,
    workers: int | None = None,
    isolation: str = "auto",
) -> list[SandboxResult]:
    """Run each solution against its task's tests in the sandbox."""
    if len(problems) != len(solutions):
        raise ValueError(f"{len(problems)} problems but {len(solutions)} solutions")
    programs = [build_program(p, s) for p, s in zip(problems, solutions, strict=True)]
    return run_programs(
        programs,
        workers=workers,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        isolation=isolation,
        run_name=RUN_NAME,
    )


def write_evalplus_samples(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """EvalPlus's samples format: one ``{"task_id", "solution"}`` per line."""
    write_jsonl(path, ({"task_id": row["id"], "solution": row["extracted"]} for row in rows))


# ---------------------------------------------------------------------------------- running


def evaluate_code(
    set_name: str,
    *,
    data_dir: str | Path,
    out_dir: str | Path,
    model: Any = None,
    tokenizer: Any = None,
    generate_fn: GenerateFn | None = None,
    limit: int | None = None,
    mbpp_file: str = MBPP_SANITIZED,
    mbpp_split: str = "all",
    max_new_tokens: int = CODE_MAX_NEW_TOKENS,
    batch_size: int = 8,
    chunk_size: int = 32,
    timeout_s: float = 20.0,
    memory_mb: int = 2048,
    workers: int | None = None,
    isolation: str = "auto",
    progress: bool = False,
    name: str | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Greedy pass@1 on ``humaneval`` or ``mbpp``; writes ``out_dir/<set>/greedy.jsonl``,
    ``samples.jsonl`` (EvalPlus) and ``summary.json`` and returns the summary.

    Give ``model`` and ``tokenizer`` (generated at ``precision``) or a
    ``generate_fn(prompts) -> texts``. ``timeout_s`` and
    ``memory_mb`` limit each test program, ``workers`` run at once (default: up to 8, one per
    core). ``limit`` evaluates the first N tasks (not comparable with full-set numbers).
    """
    problems, source = load_code_set(set_name, data_dir, mbpp_file=mbpp_file, mbpp_split=mbpp_split)
    problems = apply_limit(problems, limit)
    items = [SuiteItem(p.id, render_code(p.problem), p.reference, payload=p) for p in problems]
    settings = {
        "set": set_name,
        "data": Path(source).name,
        "data_sha256": file_digest(source),
        "mbpp_split": mbpp_split if set_name == "mbpp" else None,
        "model": name or model_name(model),
        "template": "code (paper Figure 8)",
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
        "limit": limit,
        **precision_setting(model, precision),
    }
    # Settle the isolation before generating: a sandbox that cannot start must fail in seconds,
    # not after hours of generation.
    resolved_isolation = resolve_isolation(isolation)
    generate = resolve_generate(
        model,
        tokenizer,
        generate_fn,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        precision=precision,
    )

    def score(chunk: Sequence[SuiteItem], predictions: list[str]) -> list[dict[str, Any]]:
        tasks = [item.payload for item in chunk]
        solutions = [
            complete_solution(task, extract_code(prediction))
            for task, prediction in zip(tasks, predictions, strict=True)
        ]
        results = check_solutions(
            tasks,
            solutions,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            workers=workers,
            isolation=resolved_isolation,
        )
        rows = []
        for item, prediction, solution, result in zip(
            chunk, predictions, solutions, results, strict=True
        ):
            row = {
                "id": item.id,
                "prompt": item.prompt,
                "prediction": prediction,
                "extracted": solution,
                "reference": item.reference,
                "correct": result.passed,
            }
            if not result.passed:
                row["error"] = result.error
            rows.append(row)
        return rows

    return run_greedy_suite(
        set_name,
        items,
        out_dir=out_dir,
        generate_fn=generate,
        score_fn=score,
        settings=settings,
        chunk_size=chunk_size,
        after_chunk=lambda rows: write_evalplus_samples(
            Path(out_dir) / set_name / "samples.jsonl", rows
        ),
        summary_extra={
            "sandbox": {
                "isolation": resolved_isolation,
                "timeout_s": timeout_s,
                "memory_mb": memory_mb,
            }
        },
    )


def code_suite_runner(set_name: str) -> Callable[[SuiteContext], dict[str, Any]]:
    """A :data:`spectrumkd.evaluation.registry.SUITE_RUNNERS` entry for ``humaneval`` or ``mbpp``.

    Reads ``ctx.options``: ``timeout_s``, ``memory_mb``, ``workers``, ``isolation``,
    ``mbpp_file`` (relative to the data root), ``mbpp_split``. Files land in ``ctx.out_dir``.
    """
    if set_name not in CODE_SETS:
        raise ValueError(f"unknown code set {set_name!r}; choose one of {', '.join(CODE_SETS)}")

    def run(ctx: SuiteContext) -> dict[str, Any]:
        options = dict(ctx.options)
        summary = evaluate_code(
            set_name,
            data_dir=data_root_of(ctx, set_name),
            out_dir=Path(ctx.out_dir).parent,
            model=ctx.model,
            tokenizer=ctx.tokenizer,
            limit=ctx.limit,
            mbpp_file=options.get("mbpp_file", MBPP_SANITIZED),
            mbpp_split=options.get("mbpp_split", "all"),
            max_new_tokens=ctx.max_new_tokens or CODE_MAX_NEW_TOKENS,
            batch_size=ctx.batch_size,
            timeout_s=float(options.get("timeout_s", 20.0)),
            memory_mb=int(options.get("memory_mb", 2048)),
            workers=options.get("workers"),
            isolation=options.get("isolation", "auto"),
            progress=ctx.progress,
            precision=ctx.precision,
        )
        return pass_at_1_result(summary)

    return run
