"""The crash-safe cache of judgments: every judgment is appended (flushed and fsynced) under a key
of everything the judge's answer depends on, so a rerun asks only for what is missing."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spectrumkd.evaluation.judge.prompt import PROMPT_VERSION, parse_verdict


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
