"""Distillation: white-box KD objectives, the teacher's signal (live or cached), and the training
loop that distils it into the student.

The modules, by idea: ``objectives``, ``chunked`` and ``reference`` (the losses); ``signals``,
``teacher_cache`` and ``tail`` (where the teacher's probabilities come from); ``train_config`` and
``run_config`` (a run's settings); ``trainer`` (the recipe), ``steps`` (one optimiser step),
``validation`` (end-of-epoch metrics) and ``checkpoints`` (what a run writes, kill-safe).
Other packages import the names below from here.
"""

from spectrumkd.batching import IGNORE_INDEX
from spectrumkd.distillation.chunked import chunked_kd_loss
from spectrumkd.distillation.objectives import (
    OBJECTIVES,
    Objective,
    combine,
    forward_kl,
    get_objective,
    jsd,
    kd_loss,
    reverse_kl,
    scaled_log_probs,
    skew_kl,
    skew_reverse_kl,
    tvd,
)
from spectrumkd.distillation.run_config import RunConfig, apply_override, read_yaml_mapping
from spectrumkd.distillation.signals import LiveTeacher, TeacherSignalSource
from spectrumkd.distillation.steps import step_losses
from spectrumkd.distillation.teacher_cache import (
    CachedTeacher,
    MissingFromCacheError,
    build_teacher_cache,
    teacher_cache_dir,
)
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.distillation.trainer import baseline_plan, train

__all__ = [
    "IGNORE_INDEX",
    "OBJECTIVES",
    "CachedTeacher",
    "LiveTeacher",
    "MissingFromCacheError",
    "Objective",
    "RunConfig",
    "TeacherSignalSource",
    "TrainConfig",
    "apply_override",
    "baseline_plan",
    "build_teacher_cache",
    "chunked_kd_loss",
    "combine",
    "forward_kl",
    "get_objective",
    "jsd",
    "kd_loss",
    "read_yaml_mapping",
    "reverse_kl",
    "scaled_log_probs",
    "skew_kl",
    "skew_reverse_kl",
    "step_losses",
    "teacher_cache_dir",
    "train",
    "tvd",
]
