"""Healing a shrunk student: plain KD without curation (the job itself,
:func:`spectrumkd.jobs.heal`, is a :func:`~spectrumkd.jobs.distill` of this run config)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrumkd.distillation import RunConfig, apply_override


@dataclass(frozen=True)
class HealResult:
    """A healed student: the trainer's final state and the folder of the student to use next."""

    state: dict[str, Any]
    student_dir: Path  # best/ when a validation epoch was kept, else final/

    @property
    def best(self) -> dict[str, Any] | None:
        return self.state.get("best")


def heal_config(
    teacher: str,
    student: str,
    output_dir: str | Path,
    data: dict[str, Any],
    *,
    train: dict[str, Any] | None = None,
    dtype: str = "auto",
    device: str = "auto",
    overrides: Sequence[str] = (),
) -> RunConfig:
    """The run config of healing ``student`` (a shrunk one) on ``data``: plain KD, no curation.

    ``data`` and ``train`` hold :class:`~spectrumkd.data.DataConfig` and ``TrainConfig`` fields;
    ``overrides`` are ``--set``-style ``section.field=value`` strings applied on top.
    """
    values: dict[str, Any] = {
        "teacher": teacher,
        "student": student,
        "output_dir": str(output_dir),
        "dtype": dtype,
        "device": device,
        "data": dict(data),
        "train": dict(train or {}),
    }
    for override in overrides:
        apply_override(values, override)
    return RunConfig.from_dict(values)
