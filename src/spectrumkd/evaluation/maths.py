"""Maths pass@1 (GSM8K, MATH-500) with the paper's maths template (Figure 7) and math-verify.

Protocol (spec: appendix C.4, after Qwen2.5-Math's): few-shot prompts (8 shots for GSM8K, 4 for
MATH), greedy decoding, at most 1,024 new tokens; a problem counts as solved when the *last*
``\\boxed{...}`` of the answer is equivalent to the reference under ``math-verify``.

Few-shot examples are chosen by a seeded permutation of a pool, never typed into the code:

- GSM8K: the training split (``gsm8k/train.jsonl``); its solutions end in ``#### 42``, which is
  rewritten to ``The answer is \\boxed{42}.`` so the shots show the format the checker reads.
  The ``<<48/2=24>>`` calculator annotations are removed (tool markup, not prose).
- MATH: this data has only the 500 MATH-500 problems, no training split. The pool is MATH-500
  itself: the seeded permutation's first ``k`` problems are the shots for every problem except
  those ``k`` themselves, which take the next problem of the permutation instead. All 500
  problems are evaluated, no prompt contains its own problem, and all but ``k`` prompts are
  identical. A user file of solved problems (``few_shot_path``) replaces the pool.

Generation does not stop at a string, so a few-shot model usually goes on to write the next
"### Problem:" itself; predictions are cut there before the answer is read (a box in an invented
follow-up problem must not count).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrumkd.data.templates import render_math
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
from spectrumkd.io import read_jsonl

MATH_SETS = ("gsm8k", "math")
DEFAULT_SHOTS = {"gsm8k": 8, "math": 4}
GSM8K_TEST = "gsm8k/test.jsonl"
GSM8K_TRAIN = "gsm8k/train.jsonl"
MATH500 = "math/math500_test.jsonl"
MATH_MAX_NEW_TOKENS = 1024
# Where a few-shot continuation starts inventing the next problem (see the module docstring).
NEXT_PROBLEM = "### Problem:"


@dataclass(frozen=True)
class MathProblem:
    """One problem: its id, text, reference final answer and a worked solution ending in a box."""

    id: str
    problem: str
    answer: str
    solution: str


# ---------------------------------------------------------------------------------- loading


def _require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def gsm8k_final_answer(answer: str) -> str:
    """The number after GSM8K's ``####`` marker, without thousands separators."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####' final-answer marker: {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def gsm8k_boxed_solution(answer: str) -> str:
    """A GSM8K worked answer rewritten to end in ``\\boxed{...}`` (annotations removed)."""
    reasoning = answer.rsplit("####", 1)[0]
    reasoning = re.sub(r"<<[^<>]*>>", "", reasoning).strip()
    return f"{reasoning}\nThe answer is \\boxed{{{gsm8k_final_answer(answer)}}}."


def load_gsm8k(path: str | Path) -> list[MathProblem]:
    """GSM8K rows (``question``, ``answer`` ending in ``#### N``); ids ``gsm8k-<file stem>-<row>``."""
    path = _require_file(path, "GSM8K")
    problems = []
    for index, row in enumerate(read_jsonl(path)):
        if "question" not in row or "answer" not in row:
            raise ValueError(f"{path}: row {index} lacks 'question'/'answer' (not GSM8K format)")
        problems.append(
            MathProblem(
                id=f"gsm8k-{path.stem}-{index:04d}",
                problem=row["question"],
                answer=gsm8k_final_answer(row["answer"]),
                solution=gsm8k_boxed_solution(row["answer"]),
            )
        )
    return problems


def load_math500(path: str | Path) -> list[MathProblem]:
    """MATH-format rows (``problem``, ``solution``, ``answer``); ids from ``unique_id``."""
    path = _require_file(path, "MATH")
    problems = []
    for index, row in enumerate(read_jsonl(path)):
        missing = [key for key in ("problem", "solution", "answer") if key not in row]
        if missing:
            raise ValueError(f"{path}: row {index} lacks {missing} (not MATH format)")
        problems.append(
            MathProblem(
                id=str(row.get("unique_id", f"math-{index:04d}")),
                problem=row["problem"],
                answer=str(row["answer"]),
                solution=row["solution"],
            )
        )
    return problems


def load_few_shot_file(path: str | Path) -> list[MathProblem]:
    """A user's solved examples: GSM8K rows (question/answer with ``####``) or MATH rows
    (problem/solution, the solution containing ``\\boxed{}``)."""
    path = _require_file(path, "few-shot")
    pool = []
    for index, row in enumerate(read_jsonl(path)):
        if "question" in row and "####" in str(row.get("answer", "")):
            answer = str(row["answer"])
            problem = MathProblem(
                f"shot-{index}",
                row["question"],
                gsm8k_final_answer(answer),
                gsm8k_boxed_solution(answer),
            )
        elif "problem" in row and "solution" in row:
            problem = MathProblem(
                f"shot-{index}",
                row["problem"],
                str(row.get("answer", "")),
                row["solution"],
            )
        else:
            raise ValueError(
                f"{path}: row {index} needs question+answer (with '####') or problem+solution"
            )
        if extract_boxed(problem.solution) is None:
            raise ValueError(f"{path}: row {index}: the solution must contain \\boxed{{...}}")
        pool.append(problem)
    return pool


# ---------------------------------------------------------------------------------- few-shot


def shot_order(pool: Sequence[MathProblem], seed: int) -> list[int]:
    """A seeded permutation of the pool (stable across Python versions: random.Random)."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return order


def select_few_shot(
    pool: Sequence[MathProblem],
    k: int,
    *,
    seed: int = 0,
    exclude: MathProblem | None = None,
    order: Sequence[int] | None = None,
) -> list[MathProblem]:
    """The first ``k`` problems of the pool's seeded permutation, skipping ``exclude`` (same id
    or same text) so a prompt never shows the problem it asks."""
    if k < 0:
        raise ValueError(f"the number of few-shot examples must be >= 0, got {k}")
    order = shot_order(pool, seed) if order is None else order
    shots: list[MathProblem] = []
    for index in order:
        if len(shots) == k:
            break
        candidate = pool[index]
        if exclude is not None and (
            candidate.id == exclude.id or candidate.problem.strip() == exclude.problem.strip()
        ):
            continue
        shots.append(candidate)
    if len(shots) < k:
        raise ValueError(f"the few-shot pool has {len(shots)} usable examples, {k} requested")
    return shots


def build_prompts(
    problems: Sequence[MathProblem],
    pool: Sequence[MathProblem],
    k: int,
    *,
    seed: int = 0,
) -> tuple[list[str], list[list[str]]]:
    """(prompts, few-shot ids per prompt) with the paper's maths template."""
    order = shot_order(pool, seed)
    prompts, shot_ids = [], []
    for problem in problems:
        shots = select_few_shot(pool, k, seed=seed, exclude=problem, order=order)
        prompts.append(render_math(problem.problem, [(s.problem, s.solution) for s in shots]))
        shot_ids.append([s.id for s in shots])
    return prompts, shot_ids


# ---------------------------------------------------------------------------------- scoring


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces kept; also the
    brace-less ``\\boxed 5`` form. None when the text has no complete box."""
    for match in reversed(list(re.finditer(r"\\(?:boxed|fbox)", text))):
        rest = text[match.end() :]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            start = len(rest) - len(stripped) + 1
            depth = 1
            for position in range(start, len(rest)):
                char = rest[position]
                if char == "{" and rest[position - 1] != "\\":
                    depth += 1
                elif char == "}" and rest[position - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        return rest[start:position].strip()
            continue  # unclosed (cut off by the token limit): try an earlier box
        if rest[:1] == " ":
            bare = re.match(r" +([^\s$]+)", rest)
            if bare:
                return bare.group(1)
    return None


def is_equivalent(prediction: str, reference: str) -> bool:
    """Whether two final answers are mathematically equivalent, per math-verify (both are parsed
    as boxed LaTeX; plain numbers and expressions like ``1/2`` parse too)."""
    from math_verify import parse, verify

    try:
        gold = parse(f"\\boxed{{{reference}}}")
        guess = parse(f"\\boxed{{{prediction}}}")
        return bool(gold) and bool(guess) and bool(verify(gold, guess))
    except Exception:  # math-verify raises on exotic LaTeX and parsing timeouts: not solved
        return False


def cut_at_next_problem(prediction: str) -> str:
    """The answer up to where the model starts writing another few-shot problem."""
    position = prediction.find(NEXT_PROBLEM)
    return prediction if position < 0 else prediction[:position]


def score_math_prediction(prediction: str, reference: str) -> dict[str, Any]:
    """{extracted, correct} for one raw continuation."""
    extracted = extract_boxed(cut_at_next_problem(prediction))
    correct = extracted is not None and is_equivalent(extracted, reference)
    return {"extracted": extracted, "correct": correct}


# ---------------------------------------------------------------------------------- running


def load_math_set(set_name: str, data_dir: str | Path) -> tuple[list[MathProblem], Path]:
    """The evaluated problems of ``gsm8k`` or ``math`` under the shared data folder."""
    data_dir = Path(data_dir)
    if set_name == "gsm8k":
        path = data_dir / GSM8K_TEST
        return load_gsm8k(path), path
    if set_name == "math":
        path = data_dir / MATH500
        return load_math500(path), path
    raise ValueError(f"unknown maths set {set_name!r}; choose one of {', '.join(MATH_SETS)}")


def evaluate_maths(
    set_name: str,
    *,
    data_dir: str | Path,
    out_dir: str | Path,
    model: Any = None,
    tokenizer: Any = None,
    generate_fn: GenerateFn | None = None,
    num_shots: int | None = None,
    seed: int = 0,
    few_shot_path: str | Path | None = None,
    limit: int | None = None,
    max_new_tokens: int = MATH_MAX_NEW_TOKENS,
    batch_size: int = 8,
    chunk_size: int = 32,
    progress: bool = False,
    name: str | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Greedy pass@1 on ``gsm8k`` or ``math``; writes ``out_dir/<set>/greedy.jsonl`` and
    ``summary.json`` and returns the summary.

    Give ``model`` and ``tokenizer`` (generation runs through
    :func:`spectrumkd.models.generation.generate`, at ``precision``) or a
    ``generate_fn(prompts) -> texts``. ``limit`` evaluates the first N problems (a quick look; not comparable with full-set
    numbers). ``name`` records the model in the settings when ``generate_fn`` is used.
    """
    problems, source = load_math_set(set_name, data_dir)
    problems = apply_limit(problems, limit)
    k = DEFAULT_SHOTS[set_name] if num_shots is None else num_shots
    if few_shot_path is not None:
        pool, pool_source = load_few_shot_file(few_shot_path), str(few_shot_path)
    elif set_name == "gsm8k":
        pool_path = Path(data_dir) / GSM8K_TRAIN
        pool, pool_source = load_gsm8k(pool_path), str(pool_path)
    else:
        # MATH-500 has no training split here: the evaluated file is its own pool (the shots
        # of each prompt exclude its problem; see the module docstring).
        pool, pool_source = load_math500(source), str(source)
    prompts, _ = build_prompts(problems, pool, k, seed=seed)
    items = [
        SuiteItem(problem.id, prompt, problem.answer)
        for problem, prompt in zip(problems, prompts, strict=True)
    ]
    settings = {
        "set": set_name,
        "data": Path(source).name,
        "data_sha256": file_digest(source),
        "model": name or model_name(model),
        "template": "math (paper Figure 7)",
        "num_shots": k,
        "few_shot_seed": seed,
        "few_shot_pool": Path(pool_source).name,
        "few_shot_pool_sha256": file_digest(pool_source),
        # The shots of (almost) every prompt; a prompt whose own problem is among them takes
        # the next one of the seeded order instead.
        "few_shot_ids": [shot.id for shot in select_few_shot(pool, k, seed=seed)],
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
        "limit": limit,
        "checker": "math-verify on the last \\boxed{} (answer cut at the next '### Problem:')",
        **precision_setting(model, precision),
    }
    generate = resolve_generate(
        model,
        tokenizer,
        generate_fn,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        stop=(NEXT_PROBLEM,),
        precision=precision,
    )

    def score(chunk: Sequence[SuiteItem], predictions: list[str]) -> list[dict[str, Any]]:
        rows = []
        for item, prediction in zip(chunk, predictions, strict=True):
            scored = score_math_prediction(prediction, item.reference)
            rows.append(
                {
                    "id": item.id,
                    "prompt": item.prompt,
                    "prediction": prediction,
                    "extracted": scored["extracted"],
                    "reference": item.reference,
                    "correct": scored["correct"],
                }
            )
        return rows

    return run_greedy_suite(
        set_name,
        items,
        out_dir=out_dir,
        generate_fn=generate,
        score_fn=score,
        settings=settings,
        chunk_size=chunk_size,
    )


def maths_suite_runner(set_name: str) -> Callable[[SuiteContext], dict[str, Any]]:
    """A :data:`spectrumkd.evaluation.registry.SUITE_RUNNERS` entry for ``gsm8k`` or ``math``.

    Reads ``ctx.options``: ``num_shots``, ``few_shot_seed`` (default 0), ``few_shot_path``.
    ``ctx.out_dir`` is ``OUT/<set>``; files land exactly there.
    """
    if set_name not in MATH_SETS:
        raise ValueError(f"unknown maths set {set_name!r}; choose one of {', '.join(MATH_SETS)}")

    def run(ctx: SuiteContext) -> dict[str, Any]:
        options = dict(ctx.options)
        summary = evaluate_maths(
            set_name,
            data_dir=data_root_of(ctx, set_name),
            out_dir=Path(ctx.out_dir).parent,
            model=ctx.model,
            tokenizer=ctx.tokenizer,
            num_shots=options.get("num_shots"),
            seed=int(options.get("few_shot_seed", 0)),
            few_shot_path=options.get("few_shot_path"),
            limit=ctx.limit,
            max_new_tokens=ctx.max_new_tokens or MATH_MAX_NEW_TOKENS,
            batch_size=ctx.batch_size,
            progress=ctx.progress,
            precision=ctx.precision,
        )
        return pass_at_1_result(summary)

    return run
