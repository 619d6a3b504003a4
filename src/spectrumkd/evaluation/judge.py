"""LLM-as-judge: the pairwise win rate of a student's answers against a reference model's.

The paper judges the distilled student against its teacher on the instruction sets with a
strong model (DeepSeek-V3-0324 at temperature 0.7) and an MT-Bench-style pairwise prompt. This
module does the same against any OpenAI-compatible chat endpoint (base URL, model, key from an
environment variable).

How a set is judged:

- Answers come from two evaluation folders written by ``spectrumkd evaluate`` (the student's and
  the reference model's, e.g. the teacher evaluated the same way): ``OUT/<set>/<run>.jsonl``,
  paired by id. The question is the instruction (and its input) of the data file.
- Every pair is judged twice, once with the student's answer in position A (order ``ab``) and
  once in position B (order ``ba``), so a judge that prefers a position gains the student
  nothing on average.
- A verdict is ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie) in the judge's text. A text with none of
  them, or with two different ones, is *unparseable*: it is counted and reported, never guessed.
- The student's score per judgment is 1 for a win, 0.5 for a tie, 0 for a loss; a pair's score
  is the mean over its two orders. A pair with an unparseable judgment in either order gets no
  score (``null``) and is left out of the win rate, because keeping the one parsed order would
  bring back the position bias the two orders cancel. ``unparseable`` counts such judgments and
  ``excluded_pairs`` the pairs they cost.
- Every judgment is appended to a cache (flushed and fsynced one by one), keyed by everything
  the judge's answer depends on; a rerun, or a run after a crash, asks only for what is missing.

The judging prompt below is this project's own wording. Changing it must change
:data:`PROMPT_VERSION`, which is part of every cache key and of the cache file's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from spectrumkd.io import read_jsonl, write_json, write_jsonl

PROMPT_VERSION = "pairwise-v1"
DEFAULT_TEMPERATURE = 0.7  # the paper's judge setting
DEFAULT_MAX_TOKENS = 1024
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
ORDERS = ("ab", "ba")  # ab: the student's answer is A; ba: the student's answer is B
VERDICTS = ("A", "B", "C")

SYSTEM_PROMPT = """\
You are asked to compare two replies that two AI assistants gave to the same user request, and \
to decide which reply serves the user better.

Judge by what matters to the person who asked: does the reply do what was requested, is it \
correct, is it on topic, does it cover what the request needs (no more, no less), and is it \
clear? A longer reply is not better for being longer. The order in which the replies appear \
says nothing about their quality, and the labels A and B are arbitrary: do not let either \
influence you.

Start with a brief comparison of the two replies, a few sentences at most. Then finish with \
your decision on a line of its own, written exactly as one of:
[[A]] when reply A is better,
[[B]] when reply B is better,
[[C]] when neither is better than the other."""

USER_TEMPLATE = """\
## Request
{question}

## Reply A
<<<
{answer_a}
>>>

## Reply B
<<<
{answer_b}
>>>

Compare the two replies, then give your decision as [[A]], [[B]] or [[C]]."""

# [[A]] / [[B]] / [[C]]; inner spaces and lower case are accepted (a judge's typing, not doubt).
_VERDICT = re.compile(r"\[\[\s*([ABCabc])\s*\]\]")


# --------------------------------------------------------------------------- pure parts


def build_messages(question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The chat messages of one judgment: the system prompt and the filled user template."""
    user = USER_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"`` or ``"C"``; None when the text names no verdict, or two different ones
    (a judge that writes both ``[[A]]`` and ``[[B]]`` has not decided; picking one would be a
    guess). The same verdict repeated is accepted."""
    found = {match.upper() for match in _VERDICT.findall(text or "")}
    return found.pop() if len(found) == 1 else None


def student_score(verdict: str | None, order: str) -> float | None:
    """The student's score (1 win, 0.5 tie, 0 loss) for one judgment in ``order``."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if verdict is None:
        return None
    if verdict == "C":
        return 0.5
    student_slot = "A" if order == "ab" else "B"
    return 1.0 if verdict == student_slot else 0.0


def pair_score(verdict_ab: str | None, verdict_ba: str | None) -> float | None:
    """Mean of the student's scores over both orders; None if either verdict is unparseable."""
    ab, ba = student_score(verdict_ab, "ab"), student_score(verdict_ba, "ba")
    if ab is None or ba is None:
        return None
    return (ab + ba) / 2


def summarize_pairs(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and win rate of per-pair rows (``verdict_ab``, ``verdict_ba``, ``finish_ab``, ...).

    ``wins``/``ties``/``losses`` count judgments (two per pair) of the pairs that have a score;
    ``win_rate`` = 100 x (wins + ties / 2) / (their judgments) = 100 x the mean pair score, in
    percent, None when no pair has a score. ``unparseable`` counts judgments of all pairs,
    ``unparseable_share`` is it over ``2 n``, ``excluded_pairs`` the pairs left out for it.
    ``consistent_pairs``: scored pairs whose two orders gave the student the same result.
    """
    wins = ties = losses = unparseable = consistent = cut_off = 0
    scores: list[float] = []
    for row in rows:
        per_order = [student_score(row["verdict_ab"], "ab"), student_score(row["verdict_ba"], "ba")]
        unparseable += sum(s is None for s in per_order)
        cut_off += sum(row.get(f"finish_{order}") == "length" for order in ORDERS)
        if None in per_order:
            continue
        scores.append(sum(per_order) / 2)  # type: ignore[arg-type]
        wins += per_order.count(1.0)
        ties += per_order.count(0.5)
        losses += per_order.count(0.0)
        consistent += per_order[0] == per_order[1]
    n = len(rows)
    return {
        "n": n,
        "win_rate": 100.0 * statistics.fmean(scores) if scores else None,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "unparseable": unparseable,
        "unparseable_share": unparseable / (2 * n) if n else None,
        "scored_pairs": len(scores),
        "excluded_pairs": n - len(scores),
        "consistent_pairs": consistent,
        "cut_off": cut_off,  # judgments stopped by max_tokens (a common cause of no verdict)
    }


def cache_key(
    *,
    question: str,
    answer_a: str,
    answer_b: str,
    order: str,
    model: str,
    temperature: float,
    max_tokens: int | None,
    prompt_version: str = PROMPT_VERSION,
) -> str:
    """What a judgment depends on, hashed. The endpoint's URL is left out on purpose: the same
    judge model behind a moved server (another port) keeps its cache."""
    payload = {
        "question": question,
        "answer_a": answer_a,
        "answer_b": answer_b,
        "order": order,
        "model": model,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "prompt_version": prompt_version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- cache


class JudgmentCache:
    """Append-only JSONL of judgments, one row per line: ``{key, id, order, raw_text,
    finish_reason, verdict}``.

    Each row is written with one ``write``, then flushed and fsynced, so a killed run loses at
    most the judgment in flight. A half-written last line (no newline, not valid JSON) is the
    trace of such a kill: it is ignored and cut off before the next append. A bad line anywhere
    else is corruption and raises. Verdicts are re-parsed from ``raw_text`` on every read, so a
    parser fix applies to cached judgments without asking the judge again.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.dropped_partial_line = False
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        ends_clean = data.endswith(b"\n") or not data
        offset = 0
        for number, line in enumerate(lines, start=1):
            is_tail = number == len(lines) and not ends_clean
            if line.strip():
                try:
                    row = json.loads(line.decode("utf-8"))
                    if not isinstance(row, dict) or "key" not in row:
                        raise ValueError("not a judgment row")
                except (ValueError, UnicodeDecodeError):
                    if not is_tail:
                        raise ValueError(
                            f"{self.path}:{number}: corrupt judgment cache line; delete that "
                            "line (its judgment is asked again) or the whole file"
                        ) from None
                    # A kill mid-write: drop the fragment so the next append starts a clean line.
                    with self.path.open("r+b") as handle:
                        handle.truncate(offset)
                    self.dropped_partial_line = True
                    return
                self._rows[row["key"]] = row
            if is_tail:  # a complete row whose newline was lost: add it before appending
                with self.path.open("ab") as handle:
                    handle.write(b"\n")
            offset += len(line) + 1

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._rows.get(key)
        if row is None:
            return None
        return {**row, "verdict": parse_verdict(row.get("raw_text"))}

    def put(self, row: Mapping[str, Any]) -> None:
        line = json.dumps(dict(row), ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self._rows[row["key"]] = dict(row)


# --------------------------------------------------------------------------- the endpoint


@dataclass(frozen=True)
class JudgeConfig:
    """The judge endpoint and its sampling; the key itself is read from ``key_env`` only."""

    base_url: str
    model: str
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    key_env: str = DEFAULT_KEY_ENV
    timeout_s: float = 120.0
    # The openai client retries connection errors, 408, 409, 429 and 5xx with exponential
    # back-off (0.5 s doubling to 8 s, jittered; a Retry-After header wins).
    max_retries: int = 5
    workers: int = 4  # judgments in flight at once

    def __post_init__(self) -> None:
        if not self.base_url.strip():
            raise ValueError("the judge needs a base URL, e.g. https://api.deepseek.com/v1")
        if not self.model.strip():
            raise ValueError("the judge needs a model name, e.g. deepseek-chat")
        if not self.temperature >= 0:
            raise ValueError(f"judge temperature must be >= 0, got {self.temperature}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"judge max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout_s}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def public(self) -> dict[str, Any]:
        """What the summary records: no key, and no credentials embedded in the URL."""
        return {
            "base_url": redact_url(self.base_url),
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "prompt_version": PROMPT_VERSION,
            "key_env": self.key_env,
        }


def redact_url(url: str) -> str:
    """``url`` without user:password and query string (where some gateways put keys)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class JudgeReply:
    text: str
    finish_reason: str | None


class OpenAIJudge:
    """One chat completion per judgment through the ``openai`` client (v1+)."""

    def __init__(self, config: JudgeConfig, api_key: str | None = None) -> None:
        from openai import OpenAI

        key = api_key if api_key is not None else os.environ.get(config.key_env)
        if not key:
            raise ValueError(
                f"no judge API key: set the environment variable {config.key_env} (or name "
                "another one with --judge-key-env); a server without keys accepts any value"
            )
        self.config = config
        self._key = key
        self._client = OpenAI(
            base_url=config.base_url,
            api_key=key,
            max_retries=config.max_retries,
            timeout=config.timeout_s,
        )

    def __repr__(self) -> str:  # never show the key
        url = redact_url(self.config.base_url)
        return f"OpenAIJudge(model={self.config.model!r}, base_url={url!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def complete(self, messages: list[dict[str, str]]) -> JudgeReply:
        import openai

        config = self.config
        options: dict[str, Any] = {"temperature": config.temperature}
        if config.max_tokens is not None:
            options["max_tokens"] = config.max_tokens
        where = f"judge endpoint {redact_url(config.base_url)}"
        try:
            response = self._client.chat.completions.create(
                model=config.model, messages=messages, **options
            )
        except openai.APIStatusError as error:
            status = error.status_code
            body = error.body  # the openai client hands over the "error" object's contents
            message = body.get("message") if isinstance(body, dict) else None
            detail = self._redact(str(message or error.message or "")).strip()
            detail = detail.splitlines()[0] if detail else "no message"
            if status in (401, 403):
                raise ValueError(
                    f"{where} refused the key in ${config.key_env} (HTTP {status})"
                ) from None
            if status == 429 or status >= 500:
                # Still failing after the client's retries: an outage, worth a later rerun.
                raise ConnectionError(
                    f"{where} still answers HTTP {status} after {config.max_retries} retries: "
                    f"{detail}"
                ) from None
            raise ValueError(f"{where} answered HTTP {status}: {detail}") from None
        except openai.APIConnectionError as error:  # includes timeouts
            raise ConnectionError(
                f"{where}: {type(error).__name__} after {config.max_retries} retries"
            ) from None
        if not response.choices:
            raise ValueError(f"{where} answered without any choice (model {config.model!r})")
        choice = response.choices[0]
        return JudgeReply(choice.message.content or "", choice.finish_reason)


# --------------------------------------------------------------------------- judging


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


# --------------------------------------------------------------------------- evaluation folders

_RUN_FILE = re.compile(r"^(seed(\d+)|greedy)\.jsonl$")


def run_files(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the generation runs (``seed<k>.jsonl``, ``greedy.jsonl``) in a set's
    folder."""
    if not folder.is_dir():
        return {}
    return {
        match.group(1): path
        for path in sorted(folder.iterdir())
        if (match := _RUN_FILE.match(path.name)) and path.is_file()
    }


def choose_run(student_set: Path, reference_set: Path, run: str | None = None) -> str:
    """The generation run judged: ``run`` when given, else ``greedy`` when both folders have it,
    else the lowest seed both have (one sample per question, as one judged answer each)."""
    mine, theirs = run_files(student_set), run_files(reference_set)
    common = sorted(set(mine) & set(theirs))
    if run is not None:
        if run not in common:
            raise FileNotFoundError(
                f"run {run!r} is not in both {student_set} ({', '.join(sorted(mine)) or 'none'}) "
                f"and {reference_set} ({', '.join(sorted(theirs)) or 'none'})"
            )
        return run
    if not common:
        raise FileNotFoundError(
            f"no generation run common to {student_set} ({', '.join(sorted(mine)) or 'none'}) "
            f"and {reference_set} ({', '.join(sorted(theirs)) or 'none'})"
        )
    if "greedy" in common:
        return "greedy"
    return min(common, key=lambda stem: int(stem[4:]))


def read_answers(path: Path) -> dict[str, dict[str, Any]]:
    """``{id: row}`` of a generation run file, refusing duplicate ids and rows without text."""
    rows: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        example_id = row.get("id")
        if example_id is None or not isinstance(row.get("prediction"), str):
            raise ValueError(f"{path}:{number}: a run row needs 'id' and a 'prediction' string")
        if str(example_id) in rows:
            raise ValueError(f"{path}:{number}: duplicate id {example_id!r}")
        rows[str(example_id)] = row
    return rows


def _few(ids: Iterable[str], limit: int = 5) -> str:
    ids = sorted(ids)
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def pair_answers(
    student: Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, Mapping[str, Any]],
    *,
    where: str,
) -> list[str]:
    """The common ids in the student's file order; any id in only one file is an error."""
    only_student = set(student) - set(reference)
    only_reference = set(reference) - set(student)
    if only_student or only_reference:
        parts = []
        if only_student:
            parts.append(f"missing from the reference answers: {_few(only_student)}")
        if only_reference:
            parts.append(f"missing from the student answers: {_few(only_reference)}")
        raise ValueError(
            f"{where}: the two answer sets cover different examples; {'; '.join(parts)}"
        )
    return list(student)


def question_text(row: Mapping[str, Any], prompt: str) -> str:
    """What the judge reads as the user's request: the instruction and its input, without the
    evaluation template's preamble (the prompt itself for a prompt-only file)."""
    instruction = row.get("instruction")
    if isinstance(instruction, str) and instruction.strip():
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip():
            return f"{instruction.strip()}\n\nInput:\n{extra.strip()}"
        return instruction.strip()
    return prompt


def load_questions(
    name: str, data_root: str | Path | None, source: str | Path | None = None
) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{id: (question, references)}`` of an instruction set, with the ids the evaluation
    stage gives (its loader's)."""
    from spectrumkd.evaluation.instruction.suites import examples_from_rows, load_rows, suite_path

    if source is None:
        if data_root is None:
            raise ValueError(f"{name}: give a data root (the folder holding minillm_eval/)")
        source = suite_path(name, data_root)
    rows = load_rows(source)
    examples, _ = examples_from_rows(rows, where=str(source))
    return {
        example.id: (question_text(row, example.prompt), example.references)
        for example, row in zip(examples, rows, strict=True)
    }


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
                f"{name}: ids {_few(unknown_ids)} of {student_file} are not in the data file; "
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


def judge_table(summary: Mapping[str, Any]) -> Any:
    """A rich table of a judge summary: one row per set."""
    from rich.table import Table

    settings = summary.get("judge", {})
    table = Table(
        title=(
            f"Win rate of the student against the reference (judge {settings.get('model')}, "
            f"T={settings.get('temperature')}, both orders)"
        )
    )
    for column in ("set", "pairs", "win rate %", "wins", "ties", "losses", "unparseable"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for name, result in summary.items():
        if name == "judge" or not isinstance(result, Mapping):
            continue
        rate = result.get("win_rate")
        share = result.get("unparseable_share")
        table.add_row(
            name,
            str(result["n"]),
            "-" if rate is None else f"{rate:.1f}",
            str(result["wins"]),
            str(result["ties"]),
            str(result["losses"]),
            f"{result['unparseable']}" + ("" if share is None else f" ({100 * share:.0f} %)"),
        )
    table.caption = (
        "wins/ties/losses count judgments (2 per pair) of pairs with both verdicts parsed; "
        "a pair with an unparseable verdict is left out of the win rate"
    )
    return table


__all__ = [
    "DEFAULT_KEY_ENV",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "ORDERS",
    "PROMPT_VERSION",
    "SYSTEM_PROMPT",
    "USER_TEMPLATE",
    "JudgeConfig",
    "JudgeItem",
    "JudgeReply",
    "JudgmentCache",
    "OpenAIJudge",
    "build_messages",
    "cache_key",
    "choose_run",
    "judge_cache_path",
    "judge_eval_runs",
    "judge_items",
    "judge_table",
    "load_questions",
    "pair_answers",
    "pair_score",
    "parse_verdict",
    "read_answers",
    "redact_url",
    "student_score",
    "summarize_pairs",
]
