"""A judged comparison of two evaluation folders, resumable: every set is read and checked before
the first paid request, each pair is judged in both orders through the cache, and
``out/judge/`` gets one row per pair and a summary per set (see :mod:`spectrumkd.evaluation.judge`)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrumkd.evaluation.judge.answers import (
    choose_run,
    load_questions,
    pair_answers,
    read_answers,
    run_files,
    shorten_ids,
)
from spectrumkd.evaluation.judge.cache import JudgmentCache, cache_key
from spectrumkd.evaluation.judge.client import JudgeConfig, JudgeReply, OpenAIJudge
from spectrumkd.evaluation.judge.prompt import ORDERS, PROMPT_VERSION, build_messages, parse_verdict
from spectrumkd.evaluation.judge.scores import (
    judge_table,
    pair_score,
    student_score,
    summarize_pairs,
)
from spectrumkd.io import write_json, write_jsonl


@dataclass(frozen=True)
class JudgeItem:
    """One question with the two answers to compare."""

    id: str
    question: str
    student: str
    reference: str


def _positions(item: JudgeItem, order: str) -> tuple[str, str]:
    return (item.student, item.reference) if order == "ab" else (item.reference, item.student)


def judge_items(
    items: Sequence[JudgeItem],
    complete: Callable[[list[dict[str, str]]], JudgeReply],
    cache: JudgmentCache,
    *,
    model: str,
    temperature: float,
    max_tokens: int | None,
    workers: int = 1,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Judge every item in both orders (cached judgments are reused) and return one row per
    item, in input order: ``id, verdict_ab, verdict_ba, score_ab, score_ba, score, consistent``
    plus the texts (``question``, ``student``, ``reference``, ``raw_ab``, ``raw_ba``) and the
    finish reasons. A failing request stops the run after the judgments in flight; every
    finished judgment is in the cache already."""
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate ids among the items to judge")
    keyed: list[tuple[JudgeItem, str, str]] = []
    for item in items:
        for order in ORDERS:
            answer_a, answer_b = _positions(item, order)
            key = cache_key(
                question=item.question,
                answer_a=answer_a,
                answer_b=answer_b,
                order=order,
                model=model,
                temperature=temperature,
                max_tokens=max_tokens,
            )
            keyed.append((item, order, key))
    # Identical (question, answers, order) share one key: asked once, whatever their ids.
    todo: list[tuple[JudgeItem, str, str]] = []
    queued: set[str] = set()
    for item, order, key in keyed:
        if key not in cache and key not in queued:
            todo.append((item, order, key))
            queued.add(key)

    def ask(item: JudgeItem, order: str, key: str) -> None:
        reply = complete(build_messages(item.question, *_positions(item, order)))
        cache.put(
            {
                "key": key,
                "id": item.id,
                "order": order,
                "verdict": parse_verdict(reply.text),
                "raw_text": reply.text,
                "finish_reason": reply.finish_reason,
                "model": model,
                "prompt_version": PROMPT_VERSION,
                "temperature": temperature,
                "time": round(time.time(), 3),
            }
        )

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="judging", unit="judgment")
    try:
        if workers <= 1:
            for task in todo:
                ask(*task)
                if bar is not None:
                    bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                pending = {pool.submit(ask, *task) for task in todo}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    if bar is not None:
                        bar.update(len(done))
                    failed = next((f for f in done if f.exception() is not None), None)
                    if failed is not None:
                        for future in pending:
                            future.cancel()
                        raise failed.exception()  # type: ignore[misc]
    finally:
        if bar is not None:
            bar.close()

    keys = {(item.id, order): key for item, order, key in keyed}
    rows = []
    for item in items:
        row: dict[str, Any] = {"id": item.id}
        ab, ba = (cache.get(keys[item.id, order]) for order in ORDERS)
        assert ab is not None and ba is not None  # every judgment was asked above
        score_ab = student_score(ab["verdict"], "ab")
        score_ba = student_score(ba["verdict"], "ba")
        row.update(
            verdict_ab=ab["verdict"],
            verdict_ba=ba["verdict"],
            score_ab=score_ab,
            score_ba=score_ba,
            score=pair_score(ab["verdict"], ba["verdict"]),
            consistent=None if None in (score_ab, score_ba) else score_ab == score_ba,
            question=item.question,
            student=item.student,
            reference=item.reference,
            raw_ab=ab.get("raw_text"),
            raw_ba=ba.get("raw_text"),
            finish_ab=ab.get("finish_reason"),
            finish_ba=ba.get("finish_reason"),
        )
        rows.append(row)
    return rows


def judge_cache_path(out: Path, model: str, set_name: str) -> Path:
    """One cache file per (judge model, prompt version, set); a short hash of the model keeps
    names like ``org/model`` and ``org_model`` apart."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") or "model"
    digest = hashlib.sha256(model.encode("utf-8")).hexdigest()[:8]
    return out / "judge" / "cache" / f"{slug}-{digest}.{PROMPT_VERSION}.{set_name}.jsonl"


def judge_eval_runs(
    student_eval: str | Path,
    reference_eval: str | Path,
    out: str | Path,
    config: JudgeConfig,
    *,
    suites: Sequence[str] | None = None,
    data_root: str | Path | None = None,
    sources: Mapping[str, str | Path] | None = None,
    run: str | None = None,
    limit: int | None = None,
    judge: Any = None,
    progress: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    """Judge the student's answers in ``student_eval`` against those in ``reference_eval``.

    Writes ``out/judge/<set>.jsonl`` (one row per pair), ``out/judge/summary.json``
    (``{<set>: counts and win rate, "judge": endpoint settings}``) and the caches under
    ``out/judge/cache/``; returns the summary. ``suites`` default: the instruction sets both
    folders hold. ``run``: the generation run judged (see :func:`choose_run`). ``limit``: the
    first N pairs of each set. ``judge``: anything with ``complete(messages) -> JudgeReply``
    (default: :class:`OpenAIJudge` of ``config``).
    """
    from spectrumkd.evaluation.instruction.suites import INSTRUCTION_SUITES

    student_dir, reference_dir, out = Path(student_eval), Path(reference_eval), Path(out)
    for label, folder in (("student", student_dir), ("reference", reference_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{label} evaluation folder {folder} does not exist")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    sources = dict(sources or {})
    if suites is None:
        names = [
            name
            for name in INSTRUCTION_SUITES
            if run_files(student_dir / name) and run_files(reference_dir / name)
        ]
        if not names:
            raise FileNotFoundError(
                f"no instruction set has generation runs in both {student_dir} and {reference_dir}"
            )
    else:
        names = [name.strip() for name in suites if name.strip()]
        unknown = [name for name in names if name not in INSTRUCTION_SUITES]
        if unknown:
            raise ValueError(
                f"the judge compares instruction-following answers; unknown set(s) "
                f"{', '.join(unknown)} (choose from {', '.join(INSTRUCTION_SUITES)})"
            )
    if console is None:
        from rich.console import Console

        console = Console(quiet=not progress)

    # Read and check every set before the first paid request.
    plans: list[tuple[str, str, Path, Path, list[JudgeItem]]] = []
    for name in names:
        run_name = choose_run(student_dir / name, reference_dir / name, run)
        student_file = student_dir / name / f"{run_name}.jsonl"
        reference_file = reference_dir / name / f"{run_name}.jsonl"
        student_rows, reference_rows = read_answers(student_file), read_answers(reference_file)
        ids = pair_answers(student_rows, reference_rows, where=name)
        questions = load_questions(name, data_root, sources.get(name))
        unknown_ids = [i for i in ids if i not in questions]
        if unknown_ids:
            raise ValueError(
                f"{name}: ids {shorten_ids(unknown_ids)} of {student_file} are not in the data file; "
                "was it evaluated on another file? (give it with sources / --data-root)"
            )
        for example_id in ids:
            for rows, file in ((student_rows, student_file), (reference_rows, reference_file)):
                refs = rows[example_id].get("references")
                if refs is not None and tuple(refs) != questions[example_id][1]:
                    raise ValueError(
                        f"{file}: id {example_id} has other reference answers than the data "
                        "file: it was evaluated on another file"
                    )
        if limit is not None:
            ids = ids[:limit]
        items = [
            JudgeItem(
                example_id,
                questions[example_id][0],
                student_rows[example_id]["prediction"],
                reference_rows[example_id]["prediction"],
            )
            for example_id in ids
        ]
        plans.append((name, run_name, student_file, reference_file, items))

    if judge is None:
        judge = OpenAIJudge(config)
    summary_path = out / "judge" / "summary.json"
    summary: dict[str, Any] = {}
    if summary_path.is_file():
        previous = json.loads(summary_path.read_text(encoding="utf-8"))
        if previous.get("judge") == config.public():  # other sets judged the same way stay
            summary = {k: v for k, v in previous.items() if k != "judge"}
    for name, run_name, student_file, reference_file, items in plans:
        cache = JudgmentCache(judge_cache_path(out, config.model, name))
        before = len(cache)
        console.print(f"{name}: {len(items)} pairs ({run_name}), {len(cache)} judgments cached")
        rows = judge_items(
            items,
            judge.complete,
            cache,
            model=config.model,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            workers=config.workers,
            progress=progress,
        )
        write_jsonl(out / "judge" / f"{name}.jsonl", rows)
        summary[name] = {
            **summarize_pairs(rows),
            "run": run_name,
            "student": str(student_file),
            "reference": str(reference_file),
            "requested": len(cache) - before,
            "limit": limit,
        }
    summary["judge"] = config.public()
    write_json(summary_path, summary)
    console.print(judge_table(summary))
    console.print(f"wrote {summary_path}")
    return summary
