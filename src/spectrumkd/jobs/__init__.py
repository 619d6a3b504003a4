"""Whole jobs, each a function a user can call from Python: score, curate, shrink, heal, distill,
evaluate.

A job takes plain arguments or the config dataclasses (``DataConfig``, ``SpectrumKDConfig``,
``RunConfig``), loads what it needs (models on the device and dtype named, data), writes its
results into one folder, atomically, and returns what it found. A rerun resumes or reuses what
is already there. The command line (``spectrumkd.cli``), the demo and the experiment runner
only gather arguments and call these.
"""

from __future__ import annotations

from pathlib import Path

from spectrumkd.distillation import RunConfig
from spectrumkd.jobs.curating import curate, curation_plan, strategy_of
from spectrumkd.jobs.evaluating import evaluate
from spectrumkd.jobs.healing import HealResult, heal_config
from spectrumkd.jobs.inputs import DistillInputs, forward_settings, load_distill_inputs
from spectrumkd.jobs.scoring import (
    ScoreResult,
    known_metric,
    score,
    score_dataset,
    student_difficulties,
)
from spectrumkd.jobs.shrinking import shrink
from spectrumkd.jobs.training import distill, epoch_validators, teacher_signal, train_student

__all__ = [
    "DistillInputs",
    "HealResult",
    "ScoreResult",
    "curate",
    "curation_plan",
    "distill",
    "epoch_validators",
    "evaluate",
    "forward_settings",
    "heal",
    "heal_config",
    "known_metric",
    "load_distill_inputs",
    "score",
    "score_dataset",
    "shrink",
    "strategy_of",
    "student_difficulties",
    "teacher_signal",
    "train_student",
]


# heal lives here, not in jobs/healing.py: it calls ``distill`` as this package's attribute, so
# whoever replaces ``spectrumkd.jobs.distill`` (the experiment runner's tests wrap it to count
# trainings) replaces the distillation heal runs too.
def heal(run: RunConfig, *, progress: bool = True) -> HealResult:
    """Plain KD of a shrunk student (``run.student``) on data of the user's choice, so that it
    starts as a working model, as the paper's pretrained students do: :func:`distill` of a run
    config from :func:`heal_config` (resumable), and the student to go on with, the best
    validation epoch's when one was kept."""
    state = distill(run, progress=progress)
    chosen = "best" if state.get("best") else "final"
    return HealResult(state=state, student_dir=Path(run.output_dir) / chosen)
