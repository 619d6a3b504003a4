"""A shrunk student on disk: its calibration batches, and reuse of a finished one.

The demo, ``spectrumkd shrink`` and the experiment runner all cut a student from a teacher into
a folder; a rerun should reuse a finished folder that matches the request rather than measure
the blocks again, and rebuild one that does not match (or whose save never finished).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spectrumkd.batching import collate
from spectrumkd.data import TokenizedDataset
from spectrumkd.models.shrink import REPORT_NAME, ShrinkReport, shrink


def calibration_batches(
    dataset: TokenizedDataset, pad_token_id: int, *, rows: int = 32, batch_size: int = 8
) -> list[dict[str, torch.Tensor]]:
    """The first ``rows`` examples as padded batches, for choosing which layers to keep."""
    chosen = dataset.examples[:rows]
    if not chosen:
        raise ValueError(
            "no calibration examples: the calibration data is empty after the length limit"
        )
    return [
        collate(chosen[i : i + batch_size], pad_token_id) for i in range(0, len(chosen), batch_size)
    ]


@dataclass(frozen=True)
class ShrunkStudent:
    """A student folder (safetensors, tokenizer, ``shrink_report.json``) and how it came to be."""

    folder: Path
    report: ShrinkReport
    reused: bool
    # The student in memory when this call shrank it (None when reused: load it from ``folder``).
    model: PreTrainedModel | None = None


def finished_report(
    folder: str | Path,
    *,
    num_layers: int | None = None,
    keep_layers: Sequence[int] | None = None,
    method: str = "block_influence",
) -> ShrinkReport | None:
    """The report of a finished student in ``folder`` that matches the request, else None.

    The report is written last by :func:`~spectrumkd.models.shrink`, so a folder without a
    readable one is a save that did not finish. It matches a ``num_layers`` request when it kept
    that many blocks chosen by ``method``, and a ``keep_layers`` request when it kept exactly
    those blocks.
    """
    try:
        report = ShrinkReport(**json.loads((Path(folder) / REPORT_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if keep_layers is not None:
        matches = list(report.keep_layers) == list(keep_layers)
    else:
        matches = len(report.keep_layers) == num_layers and report.method == method
    return report if matches else None


def shrunk_student(
    folder: str | Path,
    teacher: PreTrainedModel | Callable[[], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    calibration: Iterable[dict[str, Any]] | Callable[[], Iterable[dict[str, Any]]],
    *,
    num_layers: int | None = None,
    keep_layers: Sequence[int] | None = None,
    method: str = "block_influence",
    reuse: bool = True,
) -> ShrunkStudent:
    """The student in ``folder``: reused when a finished one matches the request
    (:func:`finished_report`), else cut from ``teacher`` and saved there (replacing whatever
    the folder held).

    ``teacher`` and ``calibration`` may be callables, called only when a student must be cut:
    a rerun that reuses the folder then loads no teacher and tokenises no calibration rows.
    ``reuse=False`` always cuts a new student (``spectrumkd shrink`` does: a user who runs it
    again means to measure again).
    """
    if (keep_layers is None) == (num_layers is None):
        raise ValueError("give keep_layers (explicit indices) or num_layers (a count), exactly one")
    out_dir = folder  # as given: the report records the path the way the caller wrote it
    folder = Path(folder)
    report = None
    if reuse:
        report = finished_report(
            folder, num_layers=num_layers, keep_layers=keep_layers, method=method
        )
    if report is not None:
        return ShrunkStudent(folder=folder, report=report, reused=True)
    # A model is callable too: tell them apart by type, not by callable().
    model = teacher if isinstance(teacher, torch.nn.Module) else teacher()
    batches = calibration() if callable(calibration) else calibration
    student, report = shrink(
        model,
        tokenizer,
        batches,
        keep_layers=keep_layers,
        num_layers=num_layers,
        method=method,
        out_dir=out_dir,
    )
    return ShrunkStudent(folder=folder, report=report, reused=False, model=student)
