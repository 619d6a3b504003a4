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
RNG states) are written at every epoch end (and every ``save_every_steps`` optimiser steps) into
``output_dir/checkpoint`` through a staging folder (a kill at any instant of the swap leaves a
checkpoint the next start finds or completes), and a rerun resumes where the last one was
written, mid-epoch included, dropping the metric rows logged after it. On-policy GKD (``on_policy_fraction``), LoRA (``lora_rank``) and the
memory-bounded loss (``loss_impl: chunked``) are settings of the same loop.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler

from spectrumkd.batching import IGNORE_INDEX, collate
from spectrumkd.curation.plan import CurriculumPlan, EpochPlan
from spectrumkd.data.tokenize import TokenizedExample
from spectrumkd.distillation.chunked import chunked_kd_loss
from spectrumkd.distillation.objectives import get_objective, kd_loss, topk_kd_loss
from spectrumkd.distillation.on_policy import sampling_vocabulary, with_student_responses
from spectrumkd.distillation.signals import TeacherSignalSource, head_inputs
from spectrumkd.integrations.sampler import CurriculumSampler
from spectrumkd.io import write_json, write_jsonl
from spectrumkd.models.pairing import VocabAlignment
from spectrumkd.models.precision import accelerate_mixed_precision

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
LOSS_IMPLS = ("full", "chunked")
MAXIMISED = {"val_rouge"}  # validation metrics where higher is better
# Validation KD is measured at this temperature whatever the epoch's: KD at a higher temperature
# is smaller by construction, so values at different temperatures do not compare.
EVAL_TEMPERATURE = 1.0
TRACKERS = ("none", "tensorboard", "wandb", "all")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


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
    alpha: float | None = field(
        default=None,
        metadata={
            "help": "weight of the ground-truth CE; KD gets 1 - alpha "
            "(default: the paper's 0.3 off-policy, 0 on-policy)"
        },
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
        default="auto",
        metadata={
            "help": "autocast of every forward of the run (student, live teacher, scoring, "
            "teacher cache): auto (bf16 where the device has fast bf16: a CUDA GPU with bf16, a "
            "CPU with AMX or AVX512-BF16; no elsewhere), no (float32), bf16, fp16 (CUDA). "
            "Weights, optimiser state and losses stay float32"
        },
    )
    seed: int = 0
    log_every: int = 10
    select_metric: str = field(
        default="val_kd",
        metadata={
            "help": "validation metric that picks output_dir/best: val_kd (KD to the teacher "
            "at temperature 1, whatever the epoch's) or val_ce (lowest), val_rouge (highest; "
            "needs val_rouge on)"
        },
    )
    val_rouge: str = field(
        default="off",
        metadata={
            "help": "ROUGE-L of generated validation answers each epoch: off, greedy, or "
            "sampled (temperature 1, the paper's protocol)"
        },
    )
    val_rouge_rows: int | None = field(
        default=None, metadata={"help": "generate for only the first N validation rows"}
    )
    val_max_new_tokens: int = 256
    save_every_steps: int = field(
        default=0,
        metadata={"help": "also checkpoint every N optimiser steps (0: only at epoch ends)"},
    )
    on_policy_fraction: float = field(
        default=0.0,
        metadata={
            "help": "share of each micro-batch whose responses the student samples itself "
            "(on-policy GKD: 0.5 with objective jsd)"
        },
    )
    sampling_temperature: float = field(
        default=0.9,
        metadata={"help": "temperature of on-policy sampling (separate from distillation's)"},
    )
    max_new_tokens: int = field(default=128, metadata={"help": "length limit of on-policy samples"})
    lora_rank: int = field(
        default=0, metadata={"help": "LoRA rank on all attention and MLP linears (0: full)"}
    )
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    loss_impl: str = field(
        default="full",
        metadata={
            "help": "full (both models' logits) or chunked (fused head + loss over token "
            "chunks: never holds batch x length x vocab logits; needs a live teacher)"
        },
    )
    chunk_size: int = field(
        default=1024, metadata={"help": "tokens per chunk of loss_impl chunked"}
    )
    report_to: str = field(
        default="none", metadata={"help": "extra metric trackers: none, tensorboard, wandb, all"}
    )

    def __post_init__(self) -> None:
        get_objective(self.objective, **self.objective_params)  # validates name and parameters
        if not 0.0 <= self.on_policy_fraction <= 1.0:
            raise ValueError(f"on_policy_fraction={self.on_policy_fraction} must be in [0, 1]")
        if self.alpha is None:  # the paper's defaults: 0.3 off-policy, 0 on-policy
            object.__setattr__(self, "alpha", 0.0 if self.on_policy_fraction > 0 else 0.3)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be in [0, 1]")
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "max_new_tokens"):
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
        if self.select_metric not in ("val_kd", "val_ce", "val_rouge"):
            raise ValueError(
                f"select_metric={self.select_metric!r} is not one of val_kd, val_ce, val_rouge"
            )
        if self.val_rouge not in ("off", "greedy", "sampled"):
            raise ValueError(f"val_rouge={self.val_rouge!r} is not one of off, greedy, sampled")
        if self.select_metric == "val_rouge" and self.val_rouge == "off":
            raise ValueError("select_metric=val_rouge needs val_rouge set to greedy or sampled")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"mixed_precision={self.mixed_precision!r} is not one of "
                f"{', '.join(MIXED_PRECISIONS)}"
            )
        if self.save_every_steps < 0 or self.lora_rank < 0 or self.chunk_size < 1:
            raise ValueError(
                f"save_every_steps={self.save_every_steps} and lora_rank={self.lora_rank} must "
                f"be >= 0, chunk_size={self.chunk_size} >= 1"
            )
        if self.sampling_temperature <= 0:
            raise ValueError(f"sampling_temperature={self.sampling_temperature} must be > 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"loss_impl={self.loss_impl!r} is not one of {', '.join(LOSS_IMPLS)}")
        if self.report_to not in TRACKERS:
            raise ValueError(f"report_to={self.report_to!r} is not one of {', '.join(TRACKERS)}")
        if self.loss_impl == "chunked" and self.on_policy_fraction > 0 and self.alpha > 0:
            raise ValueError(
                "loss_impl=chunked takes the CE of every row, also of the student's own samples; "
                "with on_policy_fraction > 0 set alpha=0 (the GKD default) or loss_impl=full"
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


def step_losses(
    student,
    teacher: TeacherSignalSource,
    batch: dict,
    objective,
    temperature: float,
    *,
    chunk_size: int | None = None,
    alpha: float | None = None,
):
    """Summed CE and KD over the response tokens of one micro-batch (no normalisation here).

    Rows marked ``on_policy`` (the student's own samples) count for KD but not for CE. With
    ``chunk_size`` the loss runs through the memory-bounded engine (fused head, token chunks).
    With ``alpha`` 0 the CE only gets logged: it is computed outside the autograd graph.
    """
    ce_grad = alpha is None or alpha > 0
    if chunk_size is not None:
        return _chunked_step_losses(
            student, teacher, batch, objective, temperature, chunk_size, ce_grad
        )
    ce_sum, (kd_sum,) = _full_step_losses(
        student, teacher, batch, objective, (temperature,), ce_grad
    )
    return ce_sum, kd_sum


def _full_step_losses(
    student,
    teacher: TeacherSignalSource,
    batch: dict,
    objective,
    temperatures: Sequence[float],
    ce_grad: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The summed CE and the summed KD at each of ``temperatures``, from one forward pass of
    both models (the CE without its gradient unless ``ce_grad``)."""
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]  # position t predicts token t+1
    logits = logits[:, :-1]
    if _reads_top_k(teacher):
        return _top_k_step_losses(logits, labels, teacher, batch, objective, temperatures, ce_grad)
    if hasattr(teacher, "teacher_vocab_size") and teacher.teacher_vocab_size > teacher.vocab_size:
        # Its tail counts rows the student does not have, and top-k ids past them would vanish.
        raise ValueError(
            f"the teacher cache covers {teacher.teacher_vocab_size} vocabulary rows but the "
            f"run's shared vocabulary is {teacher.vocab_size}; build the cache with "
            f"vocab_size={teacher.vocab_size}"
        )
    teacher_logits = teacher.logits(batch)[:, :-1].to(logits.device)
    if logits.shape[-1] > teacher_logits.shape[-1]:
        # A padded student embedding (rows past the tokenizer's vocabulary, which check_pair has
        # verified both models share): those rows are never a target, so drop them.
        logits = logits[..., : teacher_logits.shape[-1]]
    ce_labels = labels
    if "on_policy" in batch and bool(batch["on_policy"].any()):
        ce_labels = labels.masked_fill(batch["on_policy"].to(labels.device)[:, None], IGNORE_INDEX)
    ce_sum = _response_ce(logits, ce_labels, ce_grad)
    kd_sums = []
    for temperature in temperatures:
        teacher_tail = None
        if hasattr(teacher, "tail_logsumexp"):  # a truncated (cached) teacher: its leftover mass
            teacher_tail = teacher.tail_logsumexp(batch, temperature)[:, :-1].to(logits.device)
        kd_sum, _ = kd_loss(logits, teacher_logits, labels, objective, temperature, teacher_tail)
        kd_sums.append(kd_sum)
    return ce_sum, kd_sums


def _reads_top_k(teacher) -> bool:
    """Whether the teacher's signal can be read as its top-k entries (the offline cache) instead
    of dense logits: the cache's vocabulary must not be wider than the student's, whose extra
    ids only :meth:`CachedTeacher.logits` drops."""
    return hasattr(teacher, "top_k") and teacher.teacher_vocab_size <= teacher.vocab_size


def _response_ce(logits: torch.Tensor, labels: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """Summed float32 CE over the response positions alone (labels not -100): about half of an
    instruction example is prompt, whose float32 logits and log-softmax would be wasted. Without
    ``with_grad`` (alpha 0) it is only logged, so it stays out of the graph."""
    mask = labels != IGNORE_INDEX
    with nullcontext() if with_grad else torch.no_grad():
        return torch.nn.functional.cross_entropy(
            logits[mask].float(), labels[mask], reduction="sum"
        )


def _top_k_step_losses(logits, labels, teacher, batch, objective, temperatures, ce_grad=True):
    """The sums of :func:`_full_step_losses` for a cached teacher, without its [B, T, V] tensor
    of -inf: the objective over the top k and the tail bucket (objectives.topk_kd_loss, the
    same loss as kd_loss on logits() + tail_logsumexp() to float rounding)."""
    width = teacher.teacher_vocab_size  # the rows the cache's top k and tail were taken over
    if logits.shape[-1] < width:
        raise ValueError(
            f"student vocabulary ({logits.shape[-1]}) is narrower than the teacher cache's "
            f"({width}); build the cache with vocab_size={logits.shape[-1]}"
        )
    logits = logits[..., :width]  # a padded student head, as in the dense path
    ce_sum = _response_ce(logits, labels, ce_grad)
    kd_sums = []
    for temperature in temperatures:
        values, indices, tail = teacher.top_k(batch, temperature)
        kd_sum, _ = topk_kd_loss(logits, labels, values, indices, tail, objective, temperature)
        kd_sums.append(kd_sum)
    return ce_sum, kd_sums


def _chunked_step_losses(
    student, teacher, batch, objective, temperature, chunk_size, ce_grad: bool = True
):
    """The same sums without any [B, T, V] logits: the student's final hidden states are taken
    at its output head (which then projects nothing) and the teacher's from its own head, and
    both go through :func:`~spectrumkd.distillation.chunked.chunked_kd_loss`."""
    if not hasattr(teacher, "hidden_states"):
        raise ValueError(
            "loss_impl=chunked needs a live teacher (its hidden states); an offline cache holds "
            "only top-k logits: use loss_impl=full with a cached teacher"
        )
    hidden, head = head_inputs(
        student, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    teacher_hidden, teacher_weight = teacher.hidden_states(batch)
    labels = batch["labels"][:, 1:]
    weight = head.weight[: teacher_weight.shape[0]]  # a padded student head: see step_losses
    kd_sum, ce_sum, _ = chunked_kd_loss(
        hidden[:, :-1],
        weight,
        teacher_hidden[:, :-1].to(weight.device),
        teacher_weight.to(weight.device),
        labels,
        objective,
        temperature,
        chunk_size=chunk_size,
        ce_grad=ce_grad,
    )
    return ce_sum, kd_sum


@dataclass(frozen=True)
class OnPolicy:
    """How the student samples its own responses (on-policy GKD) for part of each batch."""

    fraction: float
    temperature: float
    max_new_tokens: int
    pad_token_id: int
    eos_token_ids: tuple[int, ...]
    # The ids the student may sample: a padded student head (or tokenizer holes) would otherwise
    # hand the teacher ids past its embedding (an IndexError mid-run).
    vocab: VocabAlignment | None = None
    # The run's compute precision (TrainConfig.mixed_precision; "no" is float32), so a float32
    # run also samples in float32.
    precision: str = "auto"


def accumulate_gradients(
    accelerator: Accelerator,
    student: torch.nn.Module,
    teacher: TeacherSignalSource,
    group: Sequence[dict],
    objective,
    alpha: float,
    temperature: float,
    *,
    on_policy: OnPolicy | None = None,
    chunk_size: int | None = None,
) -> tuple[float, float, int]:
    """Backward over the micro-batches of one optimiser step; returns (CE sum, KD sum, local tokens).

    The loss is normalised by the response tokens of the whole step, across micro-batches and
    processes, so gradient accumulation and the world size do not change the gradient (a
    per-micro-batch mean would weight a short micro-batch's tokens more). On-policy samples are
    drawn first, since they change the token count.
    """
    if on_policy is not None and on_policy.fraction > 0:
        generator = accelerator.unwrap_model(student)
        group = [
            with_student_responses(
                generator,
                batch,
                on_policy.fraction,
                pad_token_id=on_policy.pad_token_id,
                eos_token_ids=on_policy.eos_token_ids,
                temperature=on_policy.temperature,
                max_new_tokens=on_policy.max_new_tokens,
                vocab=on_policy.vocab,
                precision=on_policy.precision,
            )
            for batch in group
        ]
    local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in group)
    tokens = accelerator.reduce(torch.tensor(local, device=accelerator.device), "sum").item()
    ce_total = kd_total = 0.0
    for index, batch in enumerate(group):
        last = index == len(group) - 1
        with nullcontext() if last else accelerator.no_sync(student):
            with accelerator.autocast():
                ce_sum, kd_sum = step_losses(
                    student,
                    teacher,
                    batch,
                    objective,
                    temperature,
                    chunk_size=chunk_size,
                    alpha=alpha,
                )
            loss = (alpha * ce_sum + (1 - alpha) * temperature**2 * kd_sum) / max(tokens, 1)
            # DDP averages gradients over processes; the token count is already global.
            accelerator.backward(loss * accelerator.num_processes)
        ce_total += ce_sum.item()
        kd_total += kd_sum.item()
    return ce_total, kd_total, local


def apply_lora(student: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """LoRA adapters on every attention and MLP linear layer (the paper's choice); peft's
    ``all-linear`` leaves the output head out. Only the adapters are trained."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(student, lora)


def export_model(student: torch.nn.Module) -> torch.nn.Module:
    """The plain model to save: LoRA adapters merged into a copy (the trained student stays as it
    is), so every saved student loads with ``AutoModelForCausalLM.from_pretrained``."""
    from peft import PeftModel

    if isinstance(student, PeftModel):
        return copy.deepcopy(student).merge_and_unload()
    return student


def _eos_ids(model: torch.nn.Module, eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    if eos_token_id is None:
        generation = getattr(model, "generation_config", None)
        eos_token_id = getattr(generation, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = getattr(model.config, "eos_token_id", None)
    if eos_token_id is None:
        raise ValueError(
            "on-policy sampling needs an end-of-sequence token: pass eos_token_id to train()"
        )
    return tuple(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else (eos_token_id,)


def train(
    student: torch.nn.Module,
    teacher: TeacherSignalSource,
    examples: Sequence[TokenizedExample],
    config: TrainConfig,
    output_dir: str | Path,
    *,
    plan: CurriculumPlan | None = None,
    pad_token_id: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    accelerator: Accelerator | None = None,
    validation: Sequence[TokenizedExample] = (),
    validators: Sequence[Callable[[torch.nn.Module], dict[str, float]]] = (),
    tokenizer: PreTrainedTokenizerBase | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Distil ``teacher`` into ``student`` on ``examples`` following ``plan`` (or the baseline).

    Returns the final trainer state and writes the trained student to ``output_dir/final``
    (safetensors; LoRA merged). Pass ``tokenizer``: every saved student folder then holds it, so
    that it loads and evaluates with ``from_pretrained``. Metrics go to
    ``output_dir/metrics.jsonl``, each step once (a resumed run drops the rows logged after its
    checkpoint). With ``validation`` examples, every epoch ends with their CE and KD per token
    (KD at temperature 1, and at the epoch's temperature as ``val_kd_train_tau`` when that
    differs), and the epoch with the lowest ``config.select_metric`` is kept in
    ``output_dir/best`` (the paper selects checkpoints on validation). ``eos_token_id``
    (default: the student's) ends on-policy samples.
    ``validators`` are extra per-epoch metrics of the unwrapped student (for example ROUGE-L of
    generated answers, see :func:`spectrumkd.jobs.rouge_validator`), run on the main process.
    """
    output = Path(output_dir)
    if accelerator is None:
        previous = dict(AcceleratorState._shared_state)
        try:
            return train(
                student,
                teacher,
                examples,
                config,
                output,
                plan=plan,
                pad_token_id=pad_token_id,
                eos_token_id=eos_token_id,
                accelerator=build_accelerator(config, output),
                validation=validation,
                validators=validators,
                tokenizer=tokenizer,
                progress=progress,
            )
        finally:
            # accelerate's state is per process: a later Accelerator() of this process (the next
            # run of a comparison, a test) must not inherit this run's precision.
            AcceleratorState._shared_state.clear()
            AcceleratorState._shared_state.update(previous)
    set_seed(config.seed)
    ids = [example.id for example in examples]
    plan = plan or baseline_plan(ids, config)
    objective = get_objective(config.objective, **config.objective_params)
    on_policy = None
    if config.on_policy_fraction > 0:
        if not getattr(teacher, "scores_new_sequences", False):
            raise ValueError(
                "on-policy sampling needs a teacher that scores new sequences (a live teacher); "
                "an offline cache only knows the dataset's responses"
            )
        on_policy = OnPolicy(
            config.on_policy_fraction,
            config.sampling_temperature,
            config.max_new_tokens,
            pad_token_id,
            _eos_ids(student, eos_token_id),
            sampling_vocabulary(student, teacher),  # before LoRA wraps the student
            config.mixed_precision,
        )
    chunk_size = config.chunk_size if config.loss_impl == "chunked" else None
    if config.lora_rank > 0:
        student = apply_lora(student, config)

    sampler = CurriculumSampler(ids, plan, seed=config.seed)
    loader = DataLoader(
        list(examples),
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=lambda batch: collate_with_ids(batch, pad_token_id),
    )
    optimizer = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    micro_batches = [
        math.ceil(len(e.ids) / config.batch_size / accelerator.num_processes) for e in plan.epochs
    ]
    steps_per_epoch = [math.ceil(m / config.grad_accum) for m in micro_batches]
    total_steps = sum(steps_per_epoch)
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

    state = {
        "epoch": 0,
        "step": 0,
        "step_in_epoch": 0,
        "config": asdict(config),
        "strategy": plan.strategy,
        "val_kd_temperature": EVAL_TEMPERATURE,
    }
    if accelerator.is_main_process:
        _recover_folder(output / CHECKPOINT, marker=STATE_FILE)
        for saved_model in ("best", "final"):
            _recover_folder(output / saved_model)
    accelerator.wait_for_everyone()
    if (output / CHECKPOINT / STATE_FILE).exists():
        saved = json.loads((output / CHECKPOINT / STATE_FILE).read_text())
        changed = [k for k in state["config"] if saved["config"].get(k) != state["config"][k]]
        if changed or saved["strategy"] != plan.strategy:
            raise ValueError(
                f"{output} holds a checkpoint of a different run ({', '.join(changed) or 'strategy'} changed); "
                "use another output_dir, or delete that one to start over"
            )
        accelerator.load_state(str(output / CHECKPOINT))
        state = {"step_in_epoch": 0, **saved}
        best = state.get("best")
        if best and best["metric"] == "val_kd" and "val_kd_temperature" not in saved:
            # An older trainer's checkpoint: its val_kd was at the epoch's temperature, so the
            # next epoch's value (at temperature 1) replaces it instead of competing with it.
            del state["best"]
        state["val_kd_temperature"] = EVAL_TEMPERATURE
        accelerator.print(
            f"resuming after epoch {state['epoch']}, step {state['step']} "
            f"({state['step_in_epoch']} steps into epoch {state['epoch'] + 1})"
        )
    if accelerator.is_main_process:
        _drop_rows_past(output / METRICS_FILE, state["epoch"], state["step"])
    if config.report_to != "none":
        accelerator.init_trackers("spectrumkd", config=_flat(asdict(config)))

    bar = tqdm(
        total=total_steps,
        initial=state["step"],
        unit="step",
        desc="distilling",
        disable=not progress or not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    for epoch in range(state["epoch"] + 1, plan.num_epochs + 1):
        current = plan.epoch(epoch)
        loader.set_epoch(epoch - 1)  # reaches the CurriculumSampler through accelerate's wrapper
        sampler.set_epoch(epoch - 1)
        alpha = config.alpha if current.kd_weight is None else 1.0 - current.kd_weight
        student.train()
        if state["step_in_epoch"]:
            # Resuming a mid-epoch checkpoint: the sampler's order is a function of (seed,
            # epoch), so the micro-batches already trained on are skipped. Starting the
            # iteration draws a seed from the global RNG (on the first batch: accelerate's
            # iterator is lazy), and the checkpoint's RNG state is already past that draw, so
            # the skip runs without moving the restored state.
            rng = torch.get_rng_state()
            batches = iter(loader)
            for _ in range(state["step_in_epoch"] * config.grad_accum):
                next(batches, None)
            torch.set_rng_state(rng)
        else:
            batches = iter(loader)
        while group := [b for _, b in zip(range(config.grad_accum), batches, strict=False)]:
            ce_total, kd_total, local = accumulate_gradients(
                accelerator,
                student,
                teacher,
                group,
                objective,
                alpha,
                current.temperature,
                on_policy=on_policy,
                chunk_size=chunk_size,
            )
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(student.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["step_in_epoch"] += 1
            bar.update(1)
            if state["step"] % config.log_every == 0:
                row = {
                    "epoch": epoch,
                    "step": state["step"],
                    "tokens": local,
                    "ce": ce_total / max(local, 1),
                    "kd": kd_total / max(local, 1),
                    "temperature": current.temperature,
                    "alpha": alpha,
                    "lr": scheduler.get_last_lr()[0],
                }
                _log(accelerator, output, row, config)
                bar.set_postfix(ce=f"{row['ce']:.3f}", kd=f"{row['kd']:.3f}", epoch=epoch)
            if config.save_every_steps and state["step"] % config.save_every_steps == 0:
                _checkpoint(accelerator, output, state)
        state["epoch"] = epoch
        state["step_in_epoch"] = 0
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
            metrics.update(_run_validators(accelerator, student, validators))
            _log(accelerator, output, {"epoch": epoch, "step": state["step"], **metrics}, config)
            if config.select_metric not in metrics:
                raise ValueError(
                    f"select_metric={config.select_metric!r} is not among the validation metrics "
                    f"{sorted(metrics)}"
                )
            best = state.get("best")
            sign = -1.0 if config.select_metric in MAXIMISED else 1.0
            if best is None or sign * metrics[config.select_metric] < sign * best["value"]:
                state["best"] = {
                    "epoch": epoch,
                    "metric": config.select_metric,
                    "value": metrics[config.select_metric],
                }
                _save_model(accelerator, student, output / "best", tokenizer)
        _checkpoint(accelerator, output, state)
    bar.close()
    _save_model(accelerator, student, output / "final", tokenizer)
    if config.report_to != "none":
        accelerator.end_training()
    # prepare() wrapped the student's forward in the run's autocast; the caller's model leaves
    # as it came, so what runs it next (an evaluation) picks its own precision.
    accelerator.unwrap_model(student, keep_fp32_wrapper=False)
    return state


def build_accelerator(config: TrainConfig, output: Path) -> Accelerator:
    """The run's Accelerator, its mixed precision resolved for the device it will run on
    (``auto``: bf16 where that device has fast bf16, else no)."""
    mixed_precision = accelerate_mixed_precision(config.mixed_precision, PartialState().device)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision:
        # accelerate keeps one precision per process and refuses another: a second run in the
        # same process (a comparison, a test) with another precision starts it afresh. The
        # process group (PartialState) is kept.
        AcceleratorState._reset_state()
    trackers = {"none": None, "all": "all"}.get(config.report_to, config.report_to)
    return Accelerator(mixed_precision=mixed_precision, log_with=trackers, project_dir=str(output))


def _run_validators(accelerator: Accelerator, student, validators) -> dict[str, float]:
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


def _flat(values: dict) -> dict:
    """Tracker hyper-parameters must be scalars (TensorBoard refuses dicts)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}


def evaluate(
    accelerator, student, teacher, examples, objective, temperature, config, pad_token_id
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
            ce_sum, kd_sums = _full_step_losses(student, teacher, batch, objective, temperatures)
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


def _save_model(
    accelerator: Accelerator,
    student,
    folder: Path,
    tokenizer: PreTrainedTokenizerBase | None,
) -> None:
    """The student (and its tokenizer) as an ordinary safetensors model folder
    (``from_pretrained``), swapped in whole (:func:`_swap_in`)."""
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(student)
    # Full-state gathering (FSDP, DeepSpeed ZeRO-3) is collective: every process takes part.
    state_dict = accelerator.get_state_dict(student) if accelerator.num_processes > 1 else None
    if accelerator.is_main_process:
        staging = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        exported = export_model(model)
        if state_dict is not None and exported is not model:
            state_dict = None  # a merged LoRA copy has its own (plain) state
        exported.save_pretrained(staging, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        _swap_in(staging, folder)
    accelerator.wait_for_everyone()


def _log(accelerator: Accelerator, output: Path, row: dict, config: TrainConfig) -> None:
    if config.report_to != "none":
        scalars = {k: v for k, v in row.items() if k not in ("epoch", "step")}
        accelerator.log(scalars, step=row["step"])
    if not accelerator.is_main_process:
        return
    output.mkdir(parents=True, exist_ok=True)
    with (output / METRICS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _drop_rows_past(path: Path, epoch: int, step: int) -> None:
    """Keep only the metric rows logged before the checkpoint being resumed (``epoch`` and
    ``step`` 0: none), since the steps after it are trained and logged again.

    An epoch's validation row shares its last step, but it belongs to the checkpoint only once
    the epoch is complete in it (a mid-epoch checkpoint at that step comes before it).
    """
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    whole = [line for line in lines if line.endswith("\n")]  # not an append torn by the kill
    kept = [
        row
        for row in map(_metric_row, filter(str.strip, whole))
        if row is not None
        and row["step"] <= step
        and (row["epoch"] <= epoch or not any(key.startswith("val_") for key in row))
    ]
    if len(kept) < len(lines):
        write_jsonl(path, kept)


def _metric_row(line: str) -> dict | None:
    """A logged row, or None for a line an earlier kill tore and a later append completed (it
    no longer parses, and keeping it would make every later resume fail)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and "step" in row and "epoch" in row else None


def _checkpoint(accelerator: Accelerator, output: Path, state: dict) -> None:
    """Stage the checkpoint, then swap it in; a kill at any instant leaves either a checkpoint
    or a complete staged one that :func:`_recover_folder` adopts (the state file, written last
    into the staging folder, marks it complete)."""
    folder = output / CHECKPOINT
    staging = _staging(folder)
    # save_state writes on every process: the main one the model, optimiser, scheduler and its
    # RNG state, each other one its own RNG state (and its shards under FSDP or DeepSpeed). So
    # every step of the swap is a barrier: no process writes into a staging folder that is
    # still being cleared, or that was already renamed while it was writing.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(staging / STATE_FILE, state)
        _swap_in(staging, folder)
    accelerator.wait_for_everyone()  # nobody reads or stages a checkpoint during the swap


def _staging(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.tmp")


def _aside(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def _swap_in(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by ``staging``. The old folder is moved aside, not deleted, until the
    new one is in place, so that :func:`_recover_folder` can finish or undo a killed swap."""
    old = _aside(folder)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _recover_folder(folder: Path, marker: str | None = None) -> None:
    """Finish or undo a swap (:func:`_swap_in`) that a kill interrupted.

    A staging folder holding ``marker`` (a file written into it last) is complete and newer than
    ``folder``, so it replaces it; any other staging folder is discarded. A folder moved aside
    whose successor never arrived comes back.
    """
    staging, old = _staging(folder), _aside(folder)
    if marker is not None and (staging / marker).exists():
        if folder.exists():
            shutil.rmtree(folder)  # a kill in here leaves the staged one complete: adopted again
        staging.rename(folder)
    elif not folder.exists() and old.exists():
        old.rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
