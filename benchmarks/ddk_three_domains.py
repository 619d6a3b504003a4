"""DDK against uniform domain mixing on a three-domain mix, on CPU, at the same optimiser steps.

How this departs from the DDK paper (read before the numbers): its teachers and students are
Qwen-1.5 / LLaMA-2 pairs trained for thousands of steps on a large multi-domain corpus with
K = 1,000 steps between weight updates and 500 validation rows per domain. Here: the embedded
SmolLM2-135M-Instruct teacher and the demo's 20-of-30-layer cut of it as the student (not
healed); three domains of a few hundred rows each (instruction following: the embedded Dolly dev
rows; maths: GSM8K train; code: MBPP's training tasks 601-974), 160 rows a domain and 15 % of
each held out; K = 6 steps of 8 rows, 5 intervals (30 steps, about 0.6 of a pass over the mix); the
paper's loss CE + 0.2 KL (forward KL, T = 1) for both arms; learning rate 1e-4 (the paper's grid
is not searched). One seed. What it shows: that DDK's weights follow the student's gap to the
teacher on a real mix and what its measurements cost; not whether DDK beats uniform mixing at
the paper's scale.

Usage: python benchmarks/ddk_three_domains.py [--out runs/ddk-three-domains]
       [--data-root ../shared/data] [--rows-per-domain 160] [--update-every 6] [--intervals 5]
Resumable: each arm's result is written atomically to OUT/results/<arm>.json and skipped by a
rerun; a killed training resumes from its checkpoint. The Markdown table is OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from spectrumkd.data import load_examples, tokenize_examples
from spectrumkd.distillation import RunConfig
from spectrumkd.evaluation.instruction.quality import distillation_quality
from spectrumkd.evaluation.instruction.suites import EvalExample
from spectrumkd.io import atomic_write_text, read_jsonl, write_json
from spectrumkd.jobs import distill
from spectrumkd.jobs.inputs import load_distill_inputs
from spectrumkd.models import (
    DEFAULT_TEACHER,
    calibration_batches,
    load_model,
    load_tokenizer,
    shrunk_student,
)

ARMS = ("domain_mix", "ddk")  # uniform mixing (the baseline), then DDK


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ddk-three-domains")
    parser.add_argument(
        "--data-root",
        default=os.environ.get("SPECTRUMKD_DATA_ROOT", "../shared/data"),
        help="the folder holding gsm8k/ and mbpp/",
    )
    parser.add_argument("--rows-per-domain", type=int, default=160)
    parser.add_argument("--validation-ratio", type=float, default=0.15)
    parser.add_argument("--update-every", type=int, default=6, help="K: steps per interval")
    parser.add_argument("--intervals", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    return parser.parse_args()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def data_section(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.data_root)
    rows = args.rows_per_domain
    return {
        "mix": [
            {"domain": "instruction", "source": "embedded:dolly", "limit": rows},
            {
                "domain": "maths",
                "source": str(root / "gsm8k" / "train.jsonl"),
                "fields": {"instruction": "question", "response": "answer"},
                "template": "math",
                "limit": rows,
            },
            {
                "domain": "code",
                "source": str(root / "mbpp" / "mbpp.jsonl"),
                "fields": {"instruction": "text", "response": "code"},
                "template": "code",
                "split": "train[600:]",  # task ids 601-974: MBPP's training tasks
                "limit": rows,
            },
        ],
        "max_length": 256,
        "validation_ratio": args.validation_ratio,
        "validation_seed": 0,
    }


def run_config(arm: str, args: argparse.Namespace, out: Path) -> RunConfig:
    return RunConfig.from_dict(
        {
            "teacher": DEFAULT_TEACHER,
            "student": str(out / "student"),
            "output_dir": str(out / "runs" / arm),
            "data": data_section(args),
            "teacher_cache_k": 64,
            "teacher_cache_root": str(out / "teacher-cache"),  # one cache for both arms
            "curation": {
                "strategy": arm,
                "update_every_steps": args.update_every,
                "intervals": args.intervals,
            },
            "train": {
                "objective": "forward_kl",
                "batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "log_every": 1,
                "select_metric": "val_kd",
                "seed": 0,
            },
        }
    )


def build_student(out: Path) -> None:
    """The demo's student: 20 of 30 blocks by block influence on 32 Dolly rows."""
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    rows = tokenize_examples(load_examples("embedded:dolly"), tokenizer, max_length=256)
    shrunk_student(
        out / "student",
        lambda: load_model(DEFAULT_TEACHER),
        tokenizer,
        lambda: calibration_batches(rows, tokenizer.pad_token_id, rows=32),
        num_layers=20,
    )


def per_domain_quality(run: RunConfig, student_dirs: dict[str, Path]) -> dict[str, Any]:
    """CE of the references and KL to the teacher (both directions, tau 1, per response token)
    on each domain's held-out rows, for every model in ``student_dirs``."""
    inputs = load_distill_inputs(run)
    by_domain: dict[str, list[EvalExample]] = {}
    for example in inputs.validation:
        text = inputs.texts[example.id]
        by_domain.setdefault(inputs.domains[example.id], []).append(
            EvalExample(example.id, text.prompt, (text.response,))
        )
    quality = {}
    for name, folder in student_dirs.items():
        model = load_model(folder)
        quality[name] = {
            domain: distillation_quality(
                model, inputs.tokenizer, rows, teacher=inputs.teacher, max_length=512
            ).summary()
            for domain, rows in sorted(by_domain.items())
        }
    return quality


def run_arm(arm: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run = run_config(arm, args, out)
    folder = Path(run.output_dir)
    resumed = (folder / "checkpoint").exists()
    log(f"{arm}: training" + (" (resuming its checkpoint)" if resumed else ""))
    began = time.perf_counter()
    state = distill(run, progress=False)
    seconds = time.perf_counter() - began
    schedule = json.loads((folder / "schedule.json").read_text())
    updates = [row for row in read_jsonl(folder / "metrics.jsonl") if "plan_update" in row]
    trajectory = [{"step": 0, "weights": schedule["mixture"]["weights"]}] + [
        {"step": row["step"], "weights": row["weights"]} for row in updates
    ]
    plan_seconds = schedule["mixture"].get("measure_seconds", 0.0)
    update_seconds = sum(row["update_seconds"] for row in updates)
    # The trainer's own wall time of its epochs (updates, steps, validation), without loading,
    # the teacher cache and checkpoint writes: what the updates are a share of.
    trainer_state = json.loads((folder / "checkpoint" / "trainer_state.json").read_text())
    epoch_seconds = trainer_state.get("train_seconds", 0.0)
    log(f"{arm}: evaluating per domain")
    quality = per_domain_quality(run, {"after": folder / "final"})["after"]
    return {
        "arm": arm,
        "steps": state["step"],
        "training_seconds": round(seconds, 1),
        "resumed": resumed,  # the time then covers only the part after the resume
        "plan_measure_seconds": round(plan_seconds, 1),
        "update_seconds": round(update_seconds, 1),
        "updates": len(updates),
        "epoch_seconds": round(epoch_seconds, 1),
        "overhead_share": round((plan_seconds + update_seconds) / (epoch_seconds + plan_seconds), 4)
        if epoch_seconds
        else None,
        "trajectory": trajectory,
        "teacher_perplexity": schedule["mixture"].get("teacher_perplexity"),
        "domain_examples_trained": domain_counts(folder),
        "after": quality,
    }


def domain_counts(folder: Path) -> dict[str, int]:
    """Rows of each domain the run trained on: the first interval's draws (``schedule.json``)
    and each later one's (DDK: its update row; fixed mixing: its schedule row)."""
    schedule = json.loads((folder / "schedule.json").read_text())
    drawn = {e["epoch"]: e["drawn"] for e in schedule["epochs"]}
    for row in read_jsonl(folder / "metrics.jsonl"):
        if "plan_update" in row:
            drawn[row["epoch"]] = row["drawn"]
    totals: dict[str, int] = {}
    for counts in drawn.values():
        for domain, count in counts.items():
            totals[domain] = totals.get(domain, 0) + count
    return totals


def results_table(out: Path, before: dict[str, Any]) -> str:
    results = {
        arm: json.loads((out / "results" / f"{arm}.json").read_text())
        for arm in ARMS
        if (out / "results" / f"{arm}.json").exists()
    }
    domains = sorted(before)
    lines = [
        "| model | " + " | ".join(f"{d} CE | {d} KL" for d in domains) + " |",
        "|---|" + "---:|---:|" * len(domains),
    ]

    def row(name: str, quality: dict[str, Any]) -> str:
        cells = [f"{quality[d]['ce']:.4f} | {quality[d]['kl_forward']:.4f}" for d in domains]
        return f"| {name} | " + " | ".join(cells) + " |"

    lines.append(row("student before", before))
    for arm, result in results.items():
        lines.append(row(f"{arm} after {result['steps']} steps", result["after"]))
    lines += [
        "",
        "| arm | weights at steps (" + "/".join(domains) + ") | rows trained per domain | "
        "measuring time of the epochs' time | the updates' share of the epochs |",
        "|---|---|---|---:|---:|",
    ]
    for arm, result in results.items():
        path = "; ".join(
            f"{point['step']}: " + "/".join(f"{point['weights'][d]:.2f}" for d in domains)
            for point in result["trajectory"]
        )
        spent = result["plan_measure_seconds"] + result["update_seconds"]
        whole = result.get("epoch_seconds", 0.0) + result["plan_measure_seconds"]
        share = result.get("overhead_share")
        overhead = f"{spent:.0f} s of {whole:.0f} s" + (
            f" ({100 * share:.1f} %)" if share is not None else ""
        )
        trained = "/".join(str(result["domain_examples_trained"].get(d, 0)) for d in domains)
        # The updates alone (the run's own cost per K steps; the measurement before training is
        # once per run, whatever its length).
        epochs = result.get("epoch_seconds") or 0.0
        updates = (
            f"{result['update_seconds']:.1f} s in {result['updates']} ({100 * result['update_seconds'] / epochs:.1f} %)"
            if epochs
            else "-"
        )
        lines.append(f"| {arm} | {path} | {trained} | {overhead} | {updates} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build_student(out)
    before_file = out / "results" / "before.json"
    if not before_file.exists():
        log("the untrained student, per domain")
        before = per_domain_quality(run_config(ARMS[0], args, out), {"before": out / "student"})
        write_json(before_file, before["before"])
    before = json.loads(before_file.read_text())
    for arm in args.arms:
        result_file = out / "results" / f"{arm}.json"
        if result_file.exists():
            log(f"{arm}: finished before, skipped")
            continue
        write_json(result_file, run_arm(arm, args, out))
        log(f"{arm}: done")
    table = results_table(out, before)
    atomic_write_text(out / "results.md", table)
    print(table)
    log(f"all done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
