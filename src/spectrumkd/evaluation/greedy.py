"""The greedy pass@1 run shared by the maths and code suites: generate for every prompt, score
each chunk, save resumably.

A suite hands over its :class:`SuiteItem` list, the settings its numbers depend on and a scoring
function; this module owns what both suites do the same way (generation through
:func:`spectrumkd.models.generation.generate`, the settings check on resume, ``greedy.jsonl``
written after every chunk, ``summary.json`` with pass@1). The suites keep only what is theirs:
prompts, and answer checking (maths) or test execution in the sandbox (code).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from spectrumkd.io import read_jsonl, write_json, write_jsonl

GenerateFn = Callable[[list[str]], list[str]]
Problem = TypeVar("Problem")


def file_digest(path: str | Path) -> str:
    """First 16 hex digits of a file's SHA-256: settings name data by content, not by a path
    that may be spelled differently on a rerun."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def apply_limit(problems: list[Problem], limit: int | None) -> list[Problem]:
    """The first ``limit`` problems (all when None): a quick look, not comparable with full-set
    numbers."""
    if limit is None:
        return problems
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return problems[:limit]


def pass_at_1_result(summary: dict[str, Any]) -> dict[str, Any]:
    """A suite's summary as the ``evaluate`` command's summary table reads it."""
    return {"metric": "pass@1", "score": summary["pass_at_1"], **summary}


@dataclass(frozen=True)
class SuiteItem:
    """One prompt to generate for, with what scoring needs."""

    id: str
    prompt: str
    reference: str
    payload: Any = None


def resolve_generate(
    model: Any,
    tokenizer: Any,
    generate_fn: GenerateFn | None,
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: bool,
    stop: Sequence[str] = (),
    precision: str = "auto",
) -> GenerateFn:
    """The greedy generation function of a run: ``generate_fn`` as given, or
    :func:`spectrumkd.models.generation.generate` on ``model`` and ``tokenizer`` at
    ``precision`` (the forwards' compute precision; ``auto``: bf16 where the device has fast
    bf16)."""
    if generate_fn is not None:
        if model is not None:
            raise ValueError("pass either model and tokenizer, or generate_fn, not both")
        return generate_fn
    if model is None or tokenizer is None:
        raise ValueError("pass a model and its tokenizer (or a generate_fn)")
    from spectrumkd.models.generation import generate

    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "temperature": 0.0,
        "batch_size": batch_size,
        "progress": progress,
        "precision": precision,
    }
    # Stop strings save most of the generation time of few-shot prompts; pass them if the
    # generation function supports them (the answer is cut at them anyway).
    if stop and "stop" in inspect.signature(generate).parameters:
        options["stop"] = list(stop)

    def greedy(prompts: list[str]) -> list[str]:
        return generate(model, tokenizer, prompts, **options)

    return greedy


def precision_setting(model: Any, precision: str) -> dict[str, str]:
    """``{"precision": resolved}`` for a settings record, empty for float32 (or no model):
    folders written before generation had a precision setting were float32 and still resume."""
    if model is None:
        return {}
    from spectrumkd.models.precision import resolve_precision

    resolved = resolve_precision(precision, next(model.parameters()).device)
    return {} if resolved == "float32" else {"precision": resolved}


def model_name(model: Any) -> str | None:
    """A model's hub id or folder, as recorded in settings (None when unknown)."""
    if model is None:
        return None
    name = getattr(model, "name_or_path", None)
    name = name or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else type(model).__name__


def run_greedy_suite(
    set_name: str,
    items: Sequence[SuiteItem],
    *,
    out_dir: str | Path,
    generate_fn: GenerateFn,
    score_fn: Callable[[Sequence[SuiteItem], list[str]], list[dict[str, Any]]],
    settings: dict[str, Any],
    chunk_size: int = 32,
    after_chunk: Callable[[list[dict[str, Any]]], None] | None = None,
    summary_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate, score and save one set, resumably; returns the summary.

    Writes ``out_dir/<set>/greedy.jsonl`` (one row per item, rewritten atomically after every
    chunk of ``chunk_size`` prompts), ``settings.json`` (generation settings, checked on resume)
    and finally ``summary.json`` (plus ``summary_extra``, e.g. scoring settings that may change
    between resumed runs). Rows already saved for the same id and prompt are kept.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{set_name}: duplicate example ids")
    set_dir = Path(out_dir) / set_name
    results_path, settings_path = set_dir / "greedy.jsonl", set_dir / "settings.json"
    settings = json.loads(json.dumps(settings))  # normalised the way it is stored
    if settings_path.exists() and results_path.exists():
        saved = json.loads(settings_path.read_text(encoding="utf-8"))
        if saved != settings:
            changed = sorted(
                k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k)
            )
            raise ValueError(
                f"{set_dir} holds results made with other settings ({', '.join(changed)}); "
                "use another output folder or delete that one"
            )
    write_json(settings_path, settings)

    start = time.monotonic()
    by_id = {item.id: item for item in items}
    rows: dict[str, dict[str, Any]] = {}
    if results_path.exists():
        for row in read_jsonl(results_path):
            item = by_id.get(row.get("id"))
            if item is not None and row.get("prompt") == item.prompt:
                rows[item.id] = row
    reused = len(rows)
    pending = [item for item in items if item.id not in rows]

    def ordered() -> list[dict[str, Any]]:
        return [rows[item.id] for item in items if item.id in rows]

    for offset in range(0, len(pending), chunk_size):
        chunk = pending[offset : offset + chunk_size]
        predictions = generate_fn([item.prompt for item in chunk])
        if len(predictions) != len(chunk):
            raise RuntimeError(
                f"generation returned {len(predictions)} texts for {len(chunk)} prompts"
            )
        for item, row in zip(chunk, score_fn(chunk, list(predictions)), strict=True):
            rows[item.id] = row
        write_jsonl(results_path, ordered())
        if after_chunk is not None:
            after_chunk(ordered())
    if not pending:
        write_jsonl(results_path, ordered())  # drop rows of items no longer in the set
        if after_chunk is not None:
            after_chunk(ordered())

    n = len(items)
    solved = sum(bool(rows[item.id]["correct"]) for item in items)
    summary = {
        "set": set_name,
        "n": n,
        "pass_at_1": 100.0 * solved / n if n else 0.0,
        "correct": solved,
        "seconds": round(time.monotonic() - start, 3),
        "reused_rows": reused,
        "settings": settings,
        **(summary_extra or {}),
    }
    write_json(set_dir / "summary.json", summary)
    return summary
