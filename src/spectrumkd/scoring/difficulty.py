"""The difficulty table: per-example response cross-entropy of the untrained student."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from spectrumkd.io import read_jsonl, write_jsonl

Reduction = Literal["mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum")


@dataclass(frozen=True)
class DifficultyTable:
    """Per-example loss over response tokens: ``loss_sum`` nats over ``tokens`` tokens.

    The spectrum uses the per-token mean by default (the paper's figures); the paper's formula
    ``-log q(y|x)`` is the sum, selectable with ``reduction="sum"`` (spec section 2.1).
    """

    ids: tuple[str, ...]
    loss_sum: np.ndarray  # float64
    tokens: np.ndarray  # int64

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.loss_sum) == len(self.tokens):
            raise ValueError("ids, loss_sum and tokens must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def loss_mean(self) -> np.ndarray:
        return self.loss_sum / np.maximum(self.tokens, 1)

    def difficulties(self, reduction: Reduction = "mean") -> np.ndarray:
        if reduction == "mean":
            return self.loss_mean
        if reduction == "sum":
            return self.loss_sum.astype(np.float64)
        raise ValueError(f"reduction={reduction!r} is not one of {', '.join(REDUCTIONS)}")

    def rows(self, reduction: Reduction = "mean") -> list[dict[str, object]]:
        chosen = self.difficulties(reduction)
        return [
            {
                "id": i,
                "difficulty": float(d),
                "loss_mean": float(m),
                "loss_sum": float(s),
                "tokens": int(t),
            }
            for i, d, m, s, t in zip(
                self.ids, chosen, self.loss_mean, self.loss_sum, self.tokens, strict=True
            )
        ]

    def write_jsonl(self, path: str | Path, reduction: Reduction = "mean") -> None:
        write_jsonl(path, self.rows(reduction))


def read_difficulties(path: str | Path, column: str = "difficulty") -> tuple[list[str], np.ndarray]:
    """Read ``{"id": ..., "difficulty": ...}`` rows (JSONL, or a JSON list of such objects), so
    difficulties computed by any other tool can be curated. ``column`` picks another field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"difficulty file {path} does not exist; run `spectrumkd score` or pass a JSONL of id/difficulty rows"
        )
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: not valid JSON ({error.msg} at line {error.lineno})"
            ) from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of objects with 'id' and '{column}'")
    else:
        rows = list(read_jsonl(path))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    ids, values = [], []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "id" not in row or column not in row:
            have = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise ValueError(
                f"{path}: row {number} needs fields 'id' and '{column}' (it has: {have})"
            )
        value = row[column]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value is None:
            raise ValueError(
                f"{path}: row {number} ({row['id']!r}): {column}={value!r} is not a number"
            )
        if not math.isfinite(value):
            raise ValueError(
                f"{path}: row {number} ({row['id']!r}): {column}={value!r} is not finite; "
                "rescore that example or remove its row"
            )
        ids.append(str(row["id"]))
        values.append(float(value))
    return ids, np.asarray(values, dtype=np.float64)


def table_from_rows(rows: Sequence[dict]) -> DifficultyTable:
    return DifficultyTable(
        ids=tuple(str(r["id"]) for r in rows),
        loss_sum=np.asarray([r["loss_sum"] for r in rows], dtype=np.float64),
        tokens=np.asarray([r["tokens"] for r in rows], dtype=np.int64),
    )
