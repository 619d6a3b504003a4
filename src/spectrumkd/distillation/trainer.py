"""The white-box KD training loop, top to bottom in one file (torchtune's recipe style).

    for epoch in plan:                       # a CurriculumPlan (SpectrumKD, ...) or the baseline
        sampler.set_epoch(epoch)             # that epoch's subset of examples
        tau = plan.epoch(epoch).temperature  # that epoch's distillation temperature
        for step in epoch:                   # grad_accum micro-batches per optimiser step
            loss = (alpha * CE + (1 - alpha) * tau^2 * KD) summed over response tokens
                   / response tokens of the whole step, all micro-batches and processes

Runs on one CPU, one GPU or several processes through ``accelerate`` (``accelerate launch``):
DDP, FSDP and DeepSpeed come from its configs. The teacher is any
:class:`~spectrumkd.distillation.signals.TeacherSignalSource` (a live model or the offline cache).
Checkpoints (``accelerator.save_state``: model weights in safetensors, optimiser, scheduler and
RNG states) are written at every epoch end into ``output_dir/checkpoint``, atomically, and a
rerun resumes from the last finished epoch.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from spectrumkd.curation.plan import CurriculumPlan, EpochPlan
from spectrumkd.data.tokenize import IGNORE_INDEX, TokenizedExample, collate
from spectrumkd.distillation.objectives import get_objective, kd_loss
from spectrumkd.distillation.signals import TeacherSignalSource
from spectrumkd.integrations.sampler import CurriculumSampler
from spectrumkd.io import write_json

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a distillation run; invalid values are refused with their names."""

    objective: str = field(
        default="forward_kl",
        metadata={"help": "forward_kl, reverse_kl, jsd, tvd, skew_kl, skew_reverse_kl"},
    )
    objective_params: dict[str, float] = field(
        default_factory=dict, metadata={"help": "e.g. {'beta': 0.1} for jsd"}
    )
    alpha: float = field(
        default=0.3,
        metadata={"help": "weight of the ground-truth CE; KD gets 1 - alpha (paper: 0.3)"},
    )
    temperature: float = field(
        default=1.0, metadata={"help": "distillation temperature when no plan sets one"}
    )
    epochs: int = field(
        default=1, metadata={"help": "epochs of the baseline (a plan brings its own)"}
    )
    batch_size: int = field(default=8, metadata={"help": "micro-batch size per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "share of optimiser steps of linear warm-up"}
    )
    lr_schedule: str = field(
        default="linear", metadata={"help": "decay after warm-up: linear, cosine or constant"}
    )
    max_grad_norm: float | None = 1.0
    mixed_precision: str = field(
        default="no", metadata={"help": "no, bf16 or fp16 (where the device supports it)"}
    )
    seed: int = 0
    log_every: int = 10
    select_metric: str = field(
        default="val_kd",
        metadata={
            "help": "validation metric whose lowest value picks output_dir/best: val_kd or val_ce"
        },
    )

    def __post_init__(self) -> None:
        get_objective(self.objective, **self.objective_params)  # validates name and parameters
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be in [0, 1]")
        for name in ("epochs", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.temperature <= 0 or self.learning_rate <= 0:
            raise ValueError(
                f"temperature={self.temperature} and learning_rate={self.learning_rate} must be > 0"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.lr_schedule not in ("linear", "cosine", "constant"):
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} is not one of linear, cosine, constant"
            )
        if self.select_metric not in ("val_kd", "val_ce"):
            raise ValueError(f"select_metric={self.select_metric!r} is not one of val_kd, val_ce")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(
                f"mixed_precision={self.mixed_precision!r} is not one of no, bf16, fp16"
            )


def baseline_plan(ids: Sequence[str], config: TrainConfig) -> CurriculumPlan:
    """Every example every epoch at the configured temperature: plain KD, no curation."""
    ids = tuple(ids)
    epochs = tuple(
        EpochPlan(epoch, ids, config.temperature) for epoch in range(1, config.epochs + 1)
    )
    return CurriculumPlan(strategy="baseline", epochs=epochs)


def collate_with_ids(batch: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, Any]:
    return {**collate(batch, pad_token_id), "ids": [example.id for example in batch]}


def step_losses(student, teacher: TeacherSignalSource, batch: dict, objective, temperature: float):
    """Summed CE and KD over the response tokens of one micro-batch (no normalisation here)."""
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]  # position t predicts token t+1
    logits = logits[:, :-1]
    teacher_logits = teacher.logits(batch)[:, :-1].to(logits.device)
    if logits.shape[-1] > teacher_logits.shape[-1]:
        # A padded student embedding (rows past the tokenizer's vocabulary, which check_pair has
        # verified both models share): those rows are never a target, so drop them.
        logits = logits[..., : teacher_logits.shape[-1]]
    ce_sum = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    kd_sum, _ = kd_loss(logits, teacher_logits, labels, objective, temperature)
    return ce_sum, kd_sum


def accumulate_gradients(
    accelerator: Accelerator,
    student: torch.nn.Module,
    teacher: TeacherSignalSource,
    group: Sequence[dict],
    objective,
    alpha: float,
    temperature: float,
) -> tuple[float, float, int]:
    """Backward over the micro-batches of one optimiser step; returns (CE sum, KD sum, local tokens).

    The loss is normalised by the response tokens of the whole step, across micro-batches and
    processes, so gradient accumulation and the world size do not change the gradient (a
    per-micro-batch mean would weight a short micro-batch's tokens more).
    """
    local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in group)
    tokens = accelerator.reduce(torch.tensor(local, device=accelerator.device), "sum").item()
    ce_total = kd_total = 0.0
    for index, batch in enumerate(group):
        last = index == len(group) - 1
        with nullcontext() if last else accelerator.no_sync(student):
            with accelerator.autocast():
                ce_sum, kd_sum = step_losses(student, teacher, batch, objective, temperature)
            loss = (alpha * ce_sum + (1 - alpha) * temperature**2 * kd_sum) / max(tokens, 1)
            # DDP averages gradients over processes; the token count is already global.
            accelerator.backward(loss * accelerator.num_processes)
        ce_total += ce_sum.item()
        kd_total += kd_sum.item()
    return ce_total, kd_total, local


def train(
    student: torch.nn.Module,
    teacher: TeacherSignalSource,
    examples: Sequence[TokenizedExample],
    config: TrainConfig,
    output_dir: str | Path,
    *,
    plan: CurriculumPlan | None = None,
    pad_token_id: int = 0,
    accelerator: Accelerator | None = None,
    validation: Sequence[TokenizedExample] = (),
) -> dict[str, Any]:
    """Distil ``teacher`` into ``student`` on ``examples`` following ``plan`` (or the baseline).

    Returns the final trainer state. Metrics go to ``output_dir/metrics.jsonl``. With
    ``validation`` examples, every epoch ends with their CE and KD per token, and the epoch with
    the lowest ``config.select_metric`` is kept in ``output_dir/best`` (the paper selects
    checkpoints on validation).
    """
    output = Path(output_dir)
    accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
    set_seed(config.seed)
    ids = [example.id for example in examples]
    plan = plan or baseline_plan(ids, config)
    objective = get_objective(config.objective, **config.objective_params)

    sampler = CurriculumSampler(ids, plan, seed=config.seed)
    loader = DataLoader(
        list(examples),
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=lambda batch: collate_with_ids(batch, pad_token_id),
    )
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    micro_batches = [
        math.ceil(len(e.ids) / config.batch_size / accelerator.num_processes) for e in plan.epochs
    ]
    total_steps = sum(math.ceil(m / config.grad_accum) for m in micro_batches)
    scheduler = get_scheduler(
        config.lr_schedule,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    # The scheduler stays unprepared: accelerate's wrapper steps it once per process per call,
    # and this loop counts optimiser steps itself (registered so checkpoints still hold it).
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)

    state = {"epoch": 0, "step": 0, "config": asdict(config), "strategy": plan.strategy}
    if (output / CHECKPOINT / STATE_FILE).exists():
        saved = json.loads((output / CHECKPOINT / STATE_FILE).read_text())
        changed = [k for k in state["config"] if saved["config"].get(k) != state["config"][k]]
        if changed or saved["strategy"] != plan.strategy:
            raise ValueError(
                f"{output} holds a checkpoint of a different run ({', '.join(changed) or 'strategy'} changed); "
                "use another output_dir, or delete that one to start over"
            )
        accelerator.load_state(str(output / CHECKPOINT))
        state = saved
        accelerator.print(f"resuming after epoch {state['epoch']} (step {state['step']})")

    for epoch in range(state["epoch"] + 1, plan.num_epochs + 1):
        current = plan.epoch(epoch)
        loader.set_epoch(epoch - 1)  # reaches the CurriculumSampler through accelerate's wrapper
        sampler.set_epoch(epoch - 1)
        alpha = config.alpha if current.kd_weight is None else 1.0 - current.kd_weight
        student.train()
        batches = iter(loader)
        while group := [b for _, b in zip(range(config.grad_accum), batches, strict=False)]:
            ce_total, kd_total, local = accumulate_gradients(
                accelerator, student, teacher, group, objective, alpha, current.temperature
            )
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(student.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            if state["step"] % config.log_every == 0 and accelerator.is_main_process:
                _log(
                    output,
                    {
                        "epoch": epoch,
                        "step": state["step"],
                        "tokens": local,
                        "ce": ce_total / max(local, 1),
                        "kd": kd_total / max(local, 1),
                        "temperature": current.temperature,
                        "lr": scheduler.get_last_lr()[0],
                    },
                )
        state["epoch"] = epoch
        if validation:
            metrics = evaluate(
                accelerator,
                student,
                teacher,
                validation,
                objective,
                current.temperature,
                config,
                pad_token_id,
            )
            if accelerator.is_main_process:
                _log(output, {"epoch": epoch, "step": state["step"], **metrics})
            best = state.get("best")
            if best is None or metrics[config.select_metric] < best["value"]:
                state["best"] = {
                    "epoch": epoch,
                    "metric": config.select_metric,
                    "value": metrics[config.select_metric],
                }
                _save_best(accelerator, student, output)
        _checkpoint(accelerator, output, state)
    return state


def evaluate(
    accelerator, student, teacher, examples, objective, temperature, config, pad_token_id
) -> dict[str, float]:
    """Per-token CE of the references and KD to the teacher (at the epoch's temperature) on a
    validation set: the low-noise metrics; generation-based ROUGE-L comes with the evaluation suite."""
    student.eval()
    ce_total = kd_total = tokens = 0.0
    with torch.no_grad():
        for start in range(
            accelerator.process_index * config.batch_size,
            len(examples),
            config.batch_size * accelerator.num_processes,
        ):
            batch = collate_with_ids(examples[start : start + config.batch_size], pad_token_id)
            batch = {
                k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()
            }
            ce_sum, kd_sum = step_losses(student, teacher, batch, objective, temperature)
            ce_total += ce_sum.item()
            kd_total += kd_sum.item()
            tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    totals = accelerator.reduce(
        torch.tensor([ce_total, kd_total, tokens], device=accelerator.device), "sum"
    ).tolist()
    student.train()
    return {
        "val_ce": totals[0] / max(totals[2], 1),
        "val_kd": totals[1] / max(totals[2], 1),
        "val_tokens": int(totals[2]),
    }


def _save_best(accelerator: Accelerator, student, output: Path) -> None:
    """The best epoch's weights as an ordinary safetensors model folder (``from_pretrained``)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging, final = output / ".best.tmp", output / "best"
        shutil.rmtree(staging, ignore_errors=True)
        accelerator.unwrap_model(student).save_pretrained(staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    accelerator.wait_for_everyone()


def _log(output: Path, row: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    with (output / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _checkpoint(accelerator: Accelerator, output: Path, state: dict) -> None:
    """Save into a staging folder, then swap it in: a kill leaves the previous checkpoint."""
    staging, final = output / f".{CHECKPOINT}.tmp", output / CHECKPOINT
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    if accelerator.is_main_process:
        write_json(staging / STATE_FILE, state)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    accelerator.wait_for_everyone()
