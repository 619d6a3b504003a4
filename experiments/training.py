"""One cell's distillation, keeping the lowest-validation-CE epoch beside the selected one.

The trainer keeps one ``best/`` (the epoch of the run's ``select_metric``). When a cell selects
on validation ROUGE-L (the paper's rule), the epoch of the lowest validation CE is wanted too, to
evaluate beside it. The trainer's validators are called with the student after each epoch's
validation loss, so one more validator (``jobs.distill``'s ``extra_validators``) saves that
student into ``epochs/<epoch>/`` and drops the saved epochs that can no longer be the CE-best;
after training the CE-best epoch's folder becomes ``best_ce/``, with the run's tokenizer (from
``final/``). At most two students are on disk at a time besides ``best/`` and ``final/``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from experiments.distill_config import validation_curve
from spectrumkd.distillation import RunConfig

EPOCHS = "epochs"
BEST_CE = "best_ce"


def validation_ce(metrics_file: Path) -> dict[int, float]:
    """Each validated epoch's val_ce in the trainer's metrics.jsonl (the last row of an epoch
    wins: a resumed run logs it again)."""
    return {int(row["epoch"]): float(row["val_ce"]) for row in validation_curve(metrics_file)}


def ce_best_epoch(values: dict[int, float]) -> int | None:
    """The epoch of the lowest val_ce, the earliest on ties (as the trainer's choice is)."""
    return min(values, key=lambda e: (values[e], e)) if values else None


def epoch_keeper(output: Path):
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
        if (output / "final" / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(output / "final").save_pretrained(source)
        shutil.rmtree(output / BEST_CE, ignore_errors=True)
        source.rename(output / BEST_CE)
    shutil.rmtree(output / EPOCHS, ignore_errors=True)
    return best


def distill_keeping_ce_best(run: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """``jobs.distill`` of ``run``; when it selects on another metric than val_ce, also keeps
    the CE-best epoch's student in ``best_ce/`` (``state['best_ce']`` names its epoch)."""
    from spectrumkd import jobs

    if run.train.select_metric == "val_ce" or run.train.val_rouge == "off":
        return jobs.distill(run, progress=progress)
    out = Path(run.output_dir)
    state = jobs.distill(run, progress=progress, extra_validators=[epoch_keeper(out)])
    return {**state, "best_ce": finish_ce_best(out)}
