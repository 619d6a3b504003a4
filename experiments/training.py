"""One cell's distillation, keeping the lowest-validation-CE epoch beside the selected one.

The trainer keeps one ``best/`` (the epoch of the run's ``select_metric``). When a cell selects
on validation ROUGE-L (the paper's rule), the epoch of the lowest validation CE is wanted too, to
evaluate beside it. The trainer's validators are called with the student after each epoch's
validation loss, so one more validator saves that student into ``epochs/<epoch>/`` and drops the
saved epochs that can no longer be the CE-best; after training the CE-best epoch's folder becomes
``best_ce/``. At most two students are on disk at a time besides ``best/`` and ``final/``.

It is ``jobs.distill``'s path for a run without re-ranking, with that validator added (the job
takes no extra validators)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from spectrumkd.distillation import RunConfig

EPOCHS = "epochs"
BEST_CE = "best_ce"


def validation_ce(metrics_file: Path) -> dict[int, float]:
    """Each validated epoch's val_ce in the trainer's metrics.jsonl (the last row of an epoch
    wins: a resumed run logs it again)."""
    values: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines() if metrics_file.is_file() else ():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if "val_ce" in row:
            values[int(row["epoch"])] = float(row["val_ce"])
    return values


def ce_best_epoch(values: dict[int, float]) -> int | None:
    """The epoch of the lowest val_ce, the earliest on ties (as the trainer's choice is)."""
    return min(values, key=lambda e: (values[e], e)) if values else None


def epoch_keeper(output: Path, tokenizer: Any):
    """A validator that saves the student of the epoch being validated (the first epoch not yet
    in metrics.jsonl: the trainer logs an epoch's validation after its validators) and drops the
    saved epochs that are neither it nor the CE-best of the epochs logged so far."""
    folder = output / EPOCHS

    def keep(model: Any) -> dict[str, float]:
        logged = validation_ce(output / "metrics.jsonl")
        epoch = max(logged, default=0) + 1
        target = folder / str(epoch)
        partial = folder / f"{epoch}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        best = ce_best_epoch(logged)
        for saved in folder.iterdir():
            if saved.name not in (str(epoch), str(best)):
                shutil.rmtree(saved, ignore_errors=True)
        return {}

    return keep


def finish_ce_best(output: Path) -> int | None:
    """Move the CE-best epoch's student to ``best_ce/`` and drop the other saved epochs; the
    epoch (None without validation). Idempotent: a finished folder is left as it is."""
    best = ce_best_epoch(validation_ce(output / "metrics.jsonl"))
    source = output / EPOCHS / str(best)
    if best is not None and source.is_dir():
        shutil.rmtree(output / BEST_CE, ignore_errors=True)
        source.rename(output / BEST_CE)
    shutil.rmtree(output / EPOCHS, ignore_errors=True)
    return best


def distill_keeping_ce_best(run: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """``jobs.distill`` of ``run``; when it selects on another metric than val_ce, also keeps
    the CE-best epoch's student in ``best_ce/`` (``state['best_ce']`` names its epoch)."""
    import yaml

    from spectrumkd import jobs
    from spectrumkd.distillation import train as train_loop
    from spectrumkd.io import atomic_write_text
    from spectrumkd.jobs.curating import curation_plan
    from spectrumkd.jobs.inputs import load_distill_inputs
    from spectrumkd.jobs.training import epoch_validators, teacher_signal

    if run.train.select_metric == "val_ce" or run.train.val_rouge == "off":
        return jobs.distill(run, progress=progress)
    out = Path(run.output_dir)
    inputs = load_distill_inputs(run)
    out.mkdir(parents=True, exist_ok=True)
    config_text = yaml.safe_dump(run.to_dict(), sort_keys=False)
    if not (out / "checkpoint").exists():
        atomic_write_text(out / "run_config.yaml", config_text)
    plan = curation_plan(run, inputs, progress=progress)
    validators = epoch_validators(run.train, inputs)
    if inputs.validation:
        validators.append(epoch_keeper(out, inputs.tokenizer))
    signal = teacher_signal(
        inputs,
        run.train,
        cache_k=run.teacher_cache_k,
        cache_root=run.teacher_cache_root,
        progress=progress,
    )
    state = train_loop(
        inputs.student,
        signal,
        inputs.train_examples,
        run.train,
        out,
        plan=plan,
        pad_token_id=inputs.tokenizer.pad_token_id,
        eos_token_id=inputs.tokenizer.eos_token_id,
        validation=inputs.validation,
        validators=validators,
        tokenizer=inputs.tokenizer,
        progress=progress,
    )
    atomic_write_text(out / "run_config.yaml", config_text)
    return {**state, "best_ce": finish_ce_best(out)}
