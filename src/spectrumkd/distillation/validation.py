"""The end-of-epoch validation of a run: CE and KD per token on held-out examples, extra
generation-based metrics (validators), and which epoch's student is the best so far.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator

from spectrumkd.batching import IGNORE_INDEX
from spectrumkd.data.tokenize import TokenizedExample
from spectrumkd.distillation.objectives import Objective
from spectrumkd.distillation.signals import TeacherSignalSource
from spectrumkd.distillation.steps import collate_with_ids, full_step_losses
from spectrumkd.distillation.train_config import TrainConfig

MAXIMISED = {"val_rouge"}  # validation metrics where higher is better
# Validation KD is measured at this temperature whatever the epoch's: KD at a higher temperature
# is smaller by construction, so values at different temperatures do not compare.
EVAL_TEMPERATURE = 1.0

# An extra per-epoch metric of the unwrapped student (ROUGE-L of generated answers, ...).
Validator = Callable[[torch.nn.Module], dict[str, float]]


def evaluate(
    accelerator: Accelerator,
    student: torch.nn.Module,
    teacher: TeacherSignalSource,
    examples: Sequence[TokenizedExample],
    objective: Objective,
    temperature: float,
    config: TrainConfig,
    pad_token_id: int,
) -> dict[str, float]:
    """Per-token CE of the references and KD to the teacher on a validation set: the low-noise
    metrics; generation-based ROUGE-L comes with the evaluation suite.

    ``val_kd`` is at :data:`EVAL_TEMPERATURE` (1) whatever the epoch's ``temperature``, so that
    epochs, and runs, compare on one scale; at another training temperature the KD at it is
    reported beside, as ``val_kd_train_tau``.
    """
    temperatures = [EVAL_TEMPERATURE]
    if temperature != EVAL_TEMPERATURE:
        temperatures.append(temperature)
    student.eval()
    ce_total, tokens = 0.0, 0
    kd_totals = [0.0] * len(temperatures)
    # The run's autocast also covers the live teacher's forward here, as in training (the
    # prepared student's forward carries it already); the losses are float32 either way.
    with torch.no_grad(), accelerator.autocast():
        for start in range(
            accelerator.process_index * config.batch_size,
            len(examples),
            config.batch_size * accelerator.num_processes,
        ):
            batch = collate_with_ids(examples[start : start + config.batch_size], pad_token_id)
            batch = {
                k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()
            }
            ce_sum, kd_sums = full_step_losses(student, teacher, batch, objective, temperatures)
            ce_total += ce_sum.item()
            kd_totals = [total + kd.item() for total, kd in zip(kd_totals, kd_sums, strict=True)]
            tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    totals = accelerator.reduce(
        torch.tensor([ce_total, tokens, *kd_totals], device=accelerator.device), "sum"
    ).tolist()
    student.train()
    ce, tokens, kd = totals[0], max(totals[1], 1), totals[2:]
    metrics = {"val_ce": ce / tokens, "val_kd": kd[0] / tokens}
    if len(kd) > 1:
        metrics["val_kd_train_tau"] = kd[1] / tokens
    return {**metrics, "val_tokens": int(totals[1])}


def run_validators(
    accelerator: Accelerator, student: torch.nn.Module, validators: Sequence[Validator]
) -> dict[str, float]:
    """Generation-based metrics on the main process, shared with the others (generation is not
    collective, so the other processes wait instead of generating the same answers)."""
    metrics: dict[str, float] = {}
    if validators and accelerator.is_main_process:
        model = accelerator.unwrap_model(student)
        for validate in validators:
            metrics.update(validate(model))
        student.train()
    if validators and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        metrics = broadcast_object_list([metrics], from_process=0)[0]
    return metrics


def improves_on(best: dict | None, metric: str, value: float) -> bool:
    """Whether an epoch whose ``metric`` is ``value`` beats the ``best`` epoch kept so far (none
    yet: it does); lower is better except for the metrics in :data:`MAXIMISED`."""
    if best is None:
        return True
    sign = -1.0 if metric in MAXIMISED else 1.0
    return sign * value < sign * best["value"]
