"""The white-box KD training loop (torchtune's recipe style): :func:`train` reads as the recipe,
each of its steps is a function of this module.

    for epoch in plan:                       # a CurriculumPlan (SpectrumKD, POCL, ...) or the baseline
        if plan.epoch(epoch).restart:        # a new stage: fresh optimiser and LR schedule
            restart_optimizer(); scheduler.start(epoch)
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
checkpoint the next start finds or completes; a finished run's last one keeps no optimiser
moments), and a rerun resumes where the last one was written, mid-epoch included, dropping the
metric rows logged after it. On-policy GKD
(``on_policy_fraction``), LoRA (``lora_rank``) and the memory-bounded loss (``loss_impl:
chunked``) are settings of the same loop. A staged plan (POCL, SRD, Baby Step) restarts the
optimiser and the LR schedule where it says so (:mod:`~spectrumkd.distillation.stages`); its
metric rows and state name the stage. A dynamic plan (DDK) is updated before the epochs its
updater declares (:mod:`~spectrumkd.distillation.dynamic`), its state checkpointed with the run.

The parts live beside it: the settings in :mod:`~spectrumkd.distillation.train_config`, one
optimiser step's losses and backward in :mod:`~spectrumkd.distillation.steps`, the end-of-epoch
metrics in :mod:`~spectrumkd.distillation.validation`, and what a run writes into its folder
(checkpoint, saved students, metrics log) in :mod:`~spectrumkd.distillation.checkpoints`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from spectrumkd.curation.plan import CurriculumPlan, EpochPlan
from spectrumkd.data.tokenize import TokenizedExample
from spectrumkd.distillation.checkpoints import (
    CHECKPOINT,
    METRICS_FILE,
    STATE_FILE,
    UNRECORDED,
    drop_finished_optimizer_state,
    drop_rows_past,
    keeps_saved_loss_path,
    log_metrics,
    loss_path_change,
    recover_folder,
    save_checkpoint,
    save_final,
    save_model,
    saved_loss_path,
)
from spectrumkd.distillation.chunked import auto_chunk_size
from spectrumkd.distillation.dynamic import restore_plan, update_plan
from spectrumkd.distillation.objectives import Objective, get_objective
from spectrumkd.distillation.on_policy import sampling_vocabulary
from spectrumkd.distillation.signals import LiveTeacher, TeacherSignalSource, unwrapped
from spectrumkd.distillation.stages import StagedScheduler, epoch_optimizer_steps, restart_optimizer
from spectrumkd.distillation.steps import (
    OnPolicy,
    accumulate_gradients,
    collate_with_ids,
    resolve_loss_impl,
)
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.distillation.validation import (
    EVAL_TEMPERATURE,
    Validator,
    evaluate,
    improves_on,
    run_validators,
)
from spectrumkd.host_memory import release_freed_memory
from spectrumkd.integrations.sampler import CurriculumSampler
from spectrumkd.models.precision import accelerate_mixed_precision, weights_held_in


def baseline_plan(ids: Sequence[str], config: TrainConfig) -> CurriculumPlan:
    """Every example every epoch at the configured temperature: plain KD, no curation."""
    ids = tuple(ids)
    epochs = tuple(
        EpochPlan(epoch, ids, config.temperature) for epoch in range(1, config.epochs + 1)
    )
    return CurriculumPlan(strategy="baseline", epochs=epochs)


# glibc keeps the freed memory of training steps (host_memory): a paper_cpu trainer went from
# 2.5 to 8.9 GB resident in 12 minutes, 3.1 GB after a malloc_trim. Released every few steps.
RELEASE_EVERY_STEPS = 10


@dataclass
class PreparedRun:
    """Everything the epochs of one run share, once :func:`set_up_run` has prepared it."""

    accelerator: Accelerator
    config: TrainConfig
    plan: CurriculumPlan
    output: Path
    student: torch.nn.Module  # prepared by accelerate (and LoRA-wrapped with lora_rank)
    teacher: TeacherSignalSource
    objective: Objective
    sampler: CurriculumSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: StagedScheduler  # stepped once per optimiser step; restarted with each stage
    total_steps: int
    pad_token_id: int
    on_policy: OnPolicy | None
    chunk_size: int | None  # tokens per chunk with loss_impl chunked, else None


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
    validators: Sequence[Validator] = (),
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
    ``output_dir/best`` (the paper selects checkpoints on validation; ``final`` then links to its
    files when it is the last epoch). ``eos_token_id``
    (default: the student's) ends on-policy samples.
    ``validators`` are extra per-epoch metrics of the unwrapped student (for example ROUGE-L of
    generated answers, see :func:`spectrumkd.evaluation.validation.rouge_validator`), run on the main process.
    """
    output = Path(output_dir)
    if accelerator is None:
        with _accelerate_state_restored():
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
    plan = plan or baseline_plan([example.id for example in examples], config)
    run = set_up_run(
        student, teacher, examples, config, plan, accelerator, output, pad_token_id, eos_token_id
    )
    try:
        # A frozen live teacher's weights held in the autocast dtype for the run: the same
        # products, without autocast re-casting all of them at every forward.
        with frozen_teacher_weights(teacher, accelerator):
            state = resume_state(run)
            if config.report_to != "none":
                accelerator.init_trackers("spectrumkd", config=_flat(asdict(config)))
            bar = tqdm(
                total=run.total_steps,
                initial=state["step"],
                unit="step",
                desc="distilling",
                disable=not progress or not accelerator.is_main_process,
                dynamic_ncols=True,
            )
            for epoch in range(state["epoch"] + 1, plan.num_epochs + 1):
                started = time.perf_counter()
                update_plan(run, state, epoch)  # a dynamic plan's hook (DDK); else nothing
                train_epoch(run, state, epoch, bar)
                if validation:
                    metrics = validate_epoch(run, state, epoch, validation, validators)
                    keep_if_best(run, state, epoch, metrics, tokenizer)
                # Wall seconds of the finished epochs (updates, steps, validation; not the
                # checkpoint writes): what a plan update's cost is a share of.
                state["train_seconds"] = state.get("train_seconds", 0.0) + (
                    time.perf_counter() - started
                )
                if epoch == plan.num_epochs:
                    drop_finished_optimizer_state(accelerator, run.optimizer)
                save_checkpoint(accelerator, output, state)
                release_freed_memory()  # glibc keeps a step's freed blocks (host_memory says)
            bar.close()
            last_is_best = (state.get("best") or {}).get("epoch") == plan.num_epochs
            save_final(accelerator, run.student, output, tokenizer, last_is_best)
            if config.report_to != "none":
                accelerator.end_training()
    finally:
        # prepare() wrapped the student's forward in the run's autocast; the caller's model
        # leaves as it came, also from a run that failed, so that what runs it next (an
        # evaluation) picks its own precision.
        accelerator.unwrap_model(run.student, keep_fp32_wrapper=False)
    return state


def set_up_run(
    student: torch.nn.Module,
    teacher: TeacherSignalSource,
    examples: Sequence[TokenizedExample],
    config: TrainConfig,
    plan: CurriculumPlan,
    accelerator: Accelerator,
    output: Path,
    pad_token_id: int,
    eos_token_id: int | Sequence[int] | None,
) -> PreparedRun:
    """Seed, objective, on-policy sampling, LoRA, the curriculum's data loader, the optimiser and
    its schedule, all prepared by ``accelerator``."""
    set_seed(config.seed)
    ids = [example.id for example in examples]
    objective = get_objective(config.objective, **config.objective_params)
    on_policy = _on_policy_sampling(student, teacher, config, pad_token_id, eos_token_id)
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
    if accelerator.distributed_type == DistributedType.DEEPSPEED and plan.has_restarts:
        raise ValueError(
            f"the {plan.strategy} plan restarts the optimiser between stages, which this trainer "
            "does inside a torch optimiser, not DeepSpeed's; run it with DDP or FSDP"
        )
    steps_per_epoch = epoch_optimizer_steps(
        plan, config.batch_size, config.grad_accum, accelerator.num_processes
    )
    scheduler = StagedScheduler(optimizer, config, plan, steps_per_epoch)
    scheduler.start(1)
    # The scheduler stays unprepared: accelerate's wrapper steps it once per process per call,
    # and this loop counts optimiser steps itself (registered so checkpoints still hold it).
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    chunk_size = None  # full logits
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if resolve_loss_impl(config, student, teacher, sharded=sharded) == "chunked":
        vocab = unwrapped(student).get_output_embeddings().weight.shape[0]
        chunk_size = config.chunk_size or auto_chunk_size(vocab, accelerator.device)
    return PreparedRun(
        accelerator=accelerator,
        config=config,
        plan=plan,
        output=output,
        student=student,
        teacher=teacher,
        objective=objective,
        sampler=sampler,
        loader=loader,
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=scheduler.total_steps,
        pad_token_id=pad_token_id,
        on_policy=on_policy,
        chunk_size=chunk_size,
    )


def _on_policy_sampling(
    student: torch.nn.Module,
    teacher: TeacherSignalSource,
    config: TrainConfig,
    pad_token_id: int,
    eos_token_id: int | Sequence[int] | None,
) -> OnPolicy | None:
    """How the student samples its own responses, or None for an off-policy run. Taken before
    LoRA wraps the student, whose vocabulary and end-of-sequence ids it reads."""
    if config.on_policy_fraction <= 0:
        return None
    if not getattr(teacher, "scores_new_sequences", False):
        raise ValueError(
            "on-policy sampling needs a teacher that scores new sequences (a live teacher); "
            "an offline cache only knows the dataset's responses"
        )
    return OnPolicy(
        config.on_policy_fraction,
        config.sampling_temperature,
        config.max_new_tokens,
        pad_token_id,
        _eos_ids(student, eos_token_id),
        sampling_vocabulary(student, teacher),
        config.mixed_precision,
    )


def resume_state(run: PreparedRun) -> dict[str, Any]:
    """The trainer state to continue from: that of ``output/checkpoint`` (loaded into the
    prepared objects) when the folder holds one of this same run, else a fresh one.

    First finishes or undoes a folder swap a kill interrupted, and afterwards drops the metric
    rows logged past the state (a torn last line included), since those steps run again.
    """
    accelerator, output = run.accelerator, run.output
    if accelerator.is_main_process:
        recover_folder(output / CHECKPOINT, marker=STATE_FILE)
        for saved_model in ("best", "final"):
            recover_folder(output / saved_model)
    accelerator.wait_for_everyone()
    state = {
        "epoch": 0,
        "step": 0,
        "step_in_epoch": 0,
        "stage": 1,
        "config": asdict(run.config),
        "strategy": run.plan.strategy,
        "plan": run.plan.digest(),
        "val_kd_temperature": EVAL_TEMPERATURE,
        "loss_path": run.chunk_size,
    }
    if (output / CHECKPOINT / STATE_FILE).exists():
        state = _load_checkpoint(run, state)
    restore_plan(run, state)
    if accelerator.is_main_process:
        drop_rows_past(output / METRICS_FILE, state["epoch"], state["step"])
    return state


def _load_checkpoint(run: PreparedRun, fresh: dict[str, Any]) -> dict[str, Any]:
    """The state of the run's checkpoint, refused when it was written by a run of another
    configuration or strategy (continuing it would mix two runs)."""
    accelerator, output = run.accelerator, run.output
    saved = json.loads((output / CHECKPOINT / STATE_FILE).read_text())
    # loss_impl and chunk_size count by the path they resolve to (auto: chunked or full logits;
    # a chunk size only with chunks), so that a run continues across a change of their defaults
    # that leaves its loss as it was; under auto, on the path it started on.
    changed = [
        k
        for k in fresh["config"]
        if k not in ("loss_impl", "chunk_size") and saved["config"].get(k) != fresh["config"][k]
    ]
    saved_path = saved.get("loss_path", saved_loss_path(saved["config"]))
    if saved_path != fresh["loss_path"]:
        if keeps_saved_loss_path(run.config, saved_path, fresh["loss_path"]):
            run.chunk_size = fresh["loss_path"] = saved_path
        elif not (saved_path == UNRECORDED and run.config.loss_impl != "auto"):  # else: as told
            changed.append(f"loss_impl: {loss_path_change(saved_path, fresh['loss_path'])}")
    if saved["strategy"] != fresh["strategy"]:
        changed.append("strategy")
    elif saved.get("plan", fresh["plan"]) != fresh["plan"]:  # older checkpoints have no digest
        changed.append("curriculum plan")
    if changed:
        raise ValueError(
            f"{output} holds a checkpoint of a different run ({', '.join(changed)} changed); "
            "use another output_dir, or delete that one to start over"
        )
    state = {"step_in_epoch": 0, "stage": 1, **saved, "plan": fresh["plan"]}
    state["config"], state["loss_path"] = fresh["config"], fresh["loss_path"]
    # The checkpoint holds the schedule of the span its last step trained in: that span's
    # schedule is built first, so that its state loads into the right one.
    last_trained = state["epoch"] + 1 if state["step_in_epoch"] else state["epoch"]
    run.scheduler.start(max(last_trained, 1))
    accelerator.load_state(str(output / CHECKPOINT))
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
    return state


def train_epoch(run: PreparedRun, state: dict[str, Any], epoch: int, bar: tqdm) -> None:
    """The optimiser steps of ``epoch`` (those after ``state['step_in_epoch']`` when resuming
    mid-epoch), logging every ``log_every`` steps and checkpointing every ``save_every_steps``;
    ``state`` counts them and ends marking the epoch complete."""
    accelerator, config, output = run.accelerator, run.config, run.output
    current = run.plan.epoch(epoch)
    run.loader.set_epoch(epoch - 1)  # reaches the CurriculumSampler through accelerate's wrapper
    run.sampler.set_epoch(epoch - 1)
    alpha = config.alpha if current.kd_weight is None else 1.0 - current.kd_weight
    if current.restart and not state["step_in_epoch"]:
        # A new stage: a fresh optimiser and schedule (a resume mid-epoch loaded them already).
        restart_optimizer(run.optimizer, config.learning_rate)
        run.scheduler.start(epoch)
    state["stage"] = current.stage
    run.student.train()
    batches = _batches_after(run, state["step_in_epoch"])
    while group := [b for _, b in zip(range(config.grad_accum), batches, strict=False)]:
        ce_total, kd_total, local = accumulate_gradients(
            accelerator,
            run.student,
            run.teacher,
            group,
            run.objective,
            alpha,
            current.temperature,
            on_policy=run.on_policy,
            chunk_size=run.chunk_size,
        )
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(run.student.parameters(), config.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
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
                "lr": run.scheduler.get_last_lr()[0],
            }
            if run.plan.is_staged:  # a plan without stages writes the rows it wrote before
                row["stage"] = current.stage
            log_metrics(accelerator, output, row, config)
            bar.set_postfix(ce=f"{row['ce']:.3f}", kd=f"{row['kd']:.3f}", epoch=epoch)
        if config.save_every_steps and state["step"] % config.save_every_steps == 0:
            save_checkpoint(accelerator, output, state)
        if state["step"] % RELEASE_EVERY_STEPS == 0:
            release_freed_memory()
    state["epoch"] = epoch
    state["step_in_epoch"] = 0


def _batches_after(run: PreparedRun, steps_done: int) -> Iterator[dict]:
    """The epoch's micro-batches, past those of the ``steps_done`` optimiser steps a mid-epoch
    checkpoint already holds.

    The sampler's order is a function of (seed, epoch), so the batches already trained on are
    skipped. Starting the iteration draws a seed from the global RNG (on the first batch:
    accelerate's iterator is lazy), and the checkpoint's RNG state is already past that draw,
    so the skip runs without moving the restored state.
    """
    if not steps_done:
        return iter(run.loader)
    rng = torch.get_rng_state()
    batches = iter(run.loader)
    for _ in range(steps_done * run.config.grad_accum):
        next(batches, None)
    torch.set_rng_state(rng)
    return batches


def validate_epoch(
    run: PreparedRun,
    state: dict[str, Any],
    epoch: int,
    validation: Sequence[TokenizedExample],
    validators: Sequence[Validator],
) -> dict[str, float]:
    """The validation metrics of the student after ``epoch`` (CE, KD and the validators'),
    logged; refuses a ``select_metric`` that is not among them."""
    accelerator, config = run.accelerator, run.config
    metrics = evaluate(
        accelerator,
        run.student,
        run.teacher,
        validation,
        run.objective,
        run.plan.epoch(epoch).temperature,
        config,
        run.pad_token_id,
    )
    metrics.update(run_validators(accelerator, run.student, validators))
    row = {"epoch": epoch, "step": state["step"], **metrics}
    if run.plan.is_staged:
        row["stage"] = run.plan.epoch(epoch).stage
    log_metrics(accelerator, run.output, row, config)
    if config.select_metric not in metrics:
        raise ValueError(
            f"select_metric={config.select_metric!r} is not among the validation metrics "
            f"{sorted(metrics)}"
        )
    return metrics


def keep_if_best(
    run: PreparedRun,
    state: dict[str, Any],
    epoch: int,
    metrics: dict[str, float],
    tokenizer: PreTrainedTokenizerBase | None,
) -> None:
    """The checkpoint choice: when ``epoch`` beats the best epoch so far on the run's
    ``select_metric``, its student replaces ``output/best`` and ``state['best']`` names it."""
    metric = run.config.select_metric
    if improves_on(state.get("best"), metric, metrics[metric]):
        state["best"] = {"epoch": epoch, "metric": metric, "value": metrics[metric]}
        save_model(run.accelerator, run.student, run.output / "best", tokenizer)


def frozen_teacher_weights(teacher: TeacherSignalSource, accelerator: Accelerator) -> Any:
    """A live teacher's Linear weights held in the run's autocast dtype while it trains (a
    context manager; nothing for float32 runs or a cached teacher). Autocast re-casts a frozen
    model's weights at every forward (it caches casts only for weights autograd records): for
    SmolLM2 that is 134.5 M weights read and written per step. Every teacher forward of a run
    (training, on-policy scoring, validation) is under the run's autocast, so the products are
    the same bits (tests/test_trainer_precision.py)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))
    if dtype is None or not isinstance(teacher, LiveTeacher):
        return nullcontext()
    return weights_held_in(dtype, teacher.model)


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


@contextmanager
def _accelerate_state_restored() -> Iterator[None]:
    """accelerate's state is per process: a later Accelerator() of this process (the next run of
    a comparison, a test) must not inherit the precision of a run that built its own."""
    previous = dict(AcceleratorState._shared_state)
    try:
        yield
    finally:
        AcceleratorState._shared_state.clear()
        AcceleratorState._shared_state.update(previous)


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


def _flat(values: dict) -> dict:
    """Tracker hyper-parameters must be scalars (TensorBoard refuses dicts)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in values.items()}
