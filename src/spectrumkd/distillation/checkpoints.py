"""What a run writes into its output folder, written so that a kill at any instant leaves it
usable: the resumable checkpoint, the saved student folders (``best``, ``final``) and the metrics
log.

A folder is replaced through a staging folder and a swap (:func:`_swap_in`) that
:func:`recover_folder` finishes or undoes at the next start; the metrics log is trimmed back to
the checkpoint being resumed (:func:`drop_rows_past`), torn lines included, so every step is
logged once.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import PreTrainedTokenizerBase

from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.io import write_json, write_jsonl

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"


def save_checkpoint(accelerator: Accelerator, output: Path, state: dict) -> None:
    """Stage the checkpoint, then swap it in; a kill at any instant leaves either a checkpoint
    or a complete staged one that :func:`recover_folder` adopts (the state file, written last
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


def drop_finished_optimizer_state(accelerator: Accelerator, optimizer) -> None:
    """Empty the optimiser's state before a finished run's last checkpoint: the run steps no
    more, so that checkpoint needs the student and the trainer state, not AdamW's moments (twice
    the student's float32 weights; 0.8 of the demo's 1.2 GB per checkpoint). Emptied in place,
    as a new stage's restart does (stages.restart_optimizer), so the checkpoint loads as ever;
    DeepSpeed saves its engine's own partitions and is left as it is."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        optimizer.state.clear()


def _staging(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.tmp")


def _aside(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def _swap_in(staging: Path, folder: Path) -> None:
    """Replace ``folder`` by ``staging``. The old folder is moved aside, not deleted, until the
    new one is in place, so that :func:`recover_folder` can finish or undo a killed swap."""
    old = _aside(folder)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(folder: Path, marker: str | None = None) -> None:
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


def save_model(
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
        staging = _staging(folder)
        shutil.rmtree(staging, ignore_errors=True)
        exported = export_model(model)
        if state_dict is not None and exported is not model:
            state_dict = None  # a merged LoRA copy has its own (plain) state
        exported.save_pretrained(staging, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        _swap_in(staging, folder)
    accelerator.wait_for_everyone()


def save_final(
    accelerator: Accelerator,
    student,
    output: Path,
    tokenizer: PreTrainedTokenizerBase | None,
    same_as_best: bool,
) -> None:
    """``output/final``: the trained student; when ``same_as_best`` (the last epoch is the kept
    one, so ``best/`` holds these very weights) hard links to ``best/``'s files instead of a
    second copy (a copy where the file system has no hard links). A later ``best/`` replaces
    its folder whole (:func:`_swap_in`), so the linked files never change under ``final/``."""
    best = output / "best"
    if not (same_as_best and (best / "config.json").exists()):
        save_model(accelerator, student, output / "final", tokenizer)
        return
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder = output / "final"
        staging = _staging(folder)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for file in best.iterdir():
            try:
                os.link(file, staging / file.name)
            except OSError:
                shutil.copy2(file, staging / file.name)
        _swap_in(staging, folder)
    accelerator.wait_for_everyone()


def export_model(student: torch.nn.Module) -> torch.nn.Module:
    """The plain model to save: LoRA adapters merged into a copy (the trained student stays as it
    is), so every saved student loads with ``AutoModelForCausalLM.from_pretrained``."""
    from peft import PeftModel

    if isinstance(student, PeftModel):
        return copy.deepcopy(student).merge_and_unload()
    return student


def log_metrics(accelerator: Accelerator, output: Path, row: dict, config: TrainConfig) -> None:
    """Append ``row`` to ``output/metrics.jsonl`` (main process) and hand its scalars to the
    configured trackers."""
    if config.report_to != "none":
        scalars = {k: v for k, v in row.items() if k not in ("epoch", "step")}
        accelerator.log(scalars, step=row["step"])
    if not accelerator.is_main_process:
        return
    output.mkdir(parents=True, exist_ok=True)
    with (output / METRICS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def drop_rows_past(path: Path, epoch: int, step: int) -> None:
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
        # A plan update (DDK) is logged before its epoch's first step: at the checkpoint's own
        # step it came after that checkpoint, and the rerun updates and logs it again.
        and not ("plan_update" in row and row["step"] >= step)
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


# The loss path of a run: None for full logits, else the chunked engine's tokens per chunk;
# UNRECORDED for a checkpoint of loss_impl auto written before the state recorded the path.
UNRECORDED = "unrecorded"


def saved_loss_path(config: dict) -> int | str | None:
    """The loss path of a checkpoint's run, for checkpoints written before the state recorded
    it: loss_impl full or chunked (chunk_size 1,024 by default then) say it; auto does not."""
    if config.get("loss_impl", "full") == "auto":
        return UNRECORDED
    if config.get("loss_impl", "full") != "chunked":
        return None
    return int(config.get("chunk_size", 1024))


def keeps_saved_loss_path(config: TrainConfig, saved: int | str | None, fresh: int | None) -> bool:
    """Whether a run resumed under ``loss_impl: auto`` continues on its checkpoint's loss path
    (the same sums, other roundings) rather than the one auto picks today, as after a change of
    auto's choice: full logits always can; chunks where auto chunks now and no chunk size is
    set. An explicit loss_impl that differs is a changed run."""
    if config.loss_impl != "auto" or saved == UNRECORDED:
        return False
    return saved is None or (fresh is not None and config.chunk_size == 0)


def loss_path_change(saved: int | str | None, fresh: int | None) -> str:
    """What changed, for the refusal, with the settings that continue the checkpoint."""
    if saved == UNRECORDED:
        return (
            "the checkpoint's loss_impl auto predates the record of the path it took; set "
            "loss_impl: full, or chunked with its chunk_size, to the one it trained on"
        )

    def text(path: int | None) -> str:
        return "full logits" if path is None else f"chunks of {path} tokens"

    keep = "loss_impl: full" if saved is None else f"loss_impl: chunked, chunk_size: {saved}"
    return f"{text(saved)} in the checkpoint, {text(fresh)} now; {keep} continues it"
