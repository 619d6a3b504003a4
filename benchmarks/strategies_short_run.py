"""A short run of every curation strategy on the embedded default, on CPU: does the machinery work?

How this departs from the papers' regime (read this before reading the numbers):
- Size: a few dozen Dolly training rows (default 32) and 16 held-out validation rows, not the
  papers' ~11-15k; the student is the demo's 20-of-30-layer cut of SmolLM2-135M-Instruct (not
  healed, not a pretrained small model), the teacher SmolLM2-135M-Instruct, not GPT-2 XL / LLaMA.
- Epochs: every run gets the example visits of 3 full-data epochs (the papers: 20), as near as
  each method's stage arithmetic allows with whole epochs per stage: POCL and Baby Step one epoch
  per stage (2.5 epochs of visits, the nearest), SRD two, One-Pass three (the papers: 8), so the
  optimiser steps differ a little between runs; the table gives the steps each run took.
- Metric: validation CE of the references and KL(teacher||student) at tau 1 on the 16 held-out
  rows, per response token, at the final and at the kept (lowest-KL) epoch, not ROUGE-L on the
  papers' five test sets. Reflection scoring (POCL, SRD) generates with a cap of 192 prompt+answer
  tokens (prompts of at most 128 tokens; the spec's 256/512), near-greedy as the spec says.
Such a run shows that each strategy's plan reaches the trainer and trains; it does not show which
method is best (issue 17's experiment answers that).

Usage: python benchmarks/strategies_short_run.py [--out runs/strategies-short] [--rows 32]
The run is resumable per strategy: each finished strategy's result is written atomically to
OUT/results/<strategy>.json and skipped by a rerun; a killed training resumes from its
checkpoint, a killed reflection scoring from its shards. The Markdown table is OUT/results.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from spectrumkd.curation.strategies import STRATEGIES, settings_for_visit_budget, strategy_spec
from spectrumkd.data import load_examples, tokenize_examples
from spectrumkd.distillation import TrainConfig
from spectrumkd.io import atomic_write_text, read_jsonl, write_json
from spectrumkd.jobs import DistillInputs, curate, student_difficulties, train_student
from spectrumkd.models import (
    DEFAULT_TEACHER,
    calibration_batches,
    load_model,
    load_tokenizer,
    shrunk_student,
)

# baseline, spectrumkd, pocl, srd, baby_step, one_pass; the domain mixtures (ddk, domain_mix)
# need data with domains: benchmarks/ddk_three_domains.py runs them.
RUNS = ("baseline", *(n for n, spec in STRATEGIES.items() if not spec.mixes_domains))
# The demo's training settings (spectrumkd.demo.distill_stage), the same for every run.
TRAIN = {
    "objective": "forward_kl",
    "alpha": 0.3,
    "batch_size": 8,
    "learning_rate": 5e-5,
    "log_every": 1,
    "select_metric": "val_kd",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/strategies-short")
    parser.add_argument("--rows", type=int, default=32, help="training rows")
    parser.add_argument("--validation-rows", type=int, default=16)
    parser.add_argument(
        "--baseline-epochs", type=int, default=3, help="every run gets these epochs' visits"
    )
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument(
        "--reflection-total-tokens",
        type=int,
        default=192,
        help="reflection generation cap: prompt + answer tokens",
    )
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log(f"teacher {DEFAULT_TEACHER}; out {out}")
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    teacher = load_model(DEFAULT_TEACHER)
    texts = load_examples("embedded:dolly")
    # The demo's student: 20 of 30 blocks by block influence on the demo's first 32 rows.
    demo_rows = tokenize_examples(texts, tokenizer, max_length=256)
    student_dir = out / "student"
    shrunk_student(
        student_dir,
        teacher,
        tokenizer,
        lambda: calibration_batches(demo_rows, tokenizer.pad_token_id, rows=32),
        num_layers=20,
    )
    dataset = tokenize_examples(
        texts, tokenizer, max_length=256, max_prompt_length=args.max_prompt_length
    )
    order = np.random.default_rng(0).permutation(len(dataset.examples))
    validation = [dataset.examples[i] for i in order[: args.validation_rows]]
    training = [
        dataset.examples[i] for i in order[args.validation_rows : args.validation_rows + args.rows]
    ]
    ids = [e.id for e in training]
    log(f"{len(training)} training rows, {len(validation)} validation rows")

    for name in args.runs:
        result_file = out / "results" / f"{name}.json"
        if result_file.exists():
            log(f"{name}: finished before, skipped")
            continue
        write_json(
            result_file,
            run_one(
                name, args, out, ids, training, validation, texts, tokenizer, teacher, student_dir
            ),
        )
        log(f"{name}: done")
    table = results_table(out, args)
    atomic_write_text(out / "results.md", table)
    print(table)
    log(f"all done in {time.perf_counter() - started:.0f} s")


def run_one(
    name: str,
    args: argparse.Namespace,
    out: Path,
    ids: list[str],
    training: list,
    validation: list,
    texts: list,
    tokenizer: Any,
    teacher: Any,
    student_dir: Path,
) -> dict[str, Any]:
    folder = out / "runs" / name
    plan, metric, scoring_seconds = None, None, 0.0
    if name != "baseline":
        metric = strategy_spec(name).default_metric
        options = {}
        if metric.startswith("reflection"):
            options = {
                "max_prompt_tokens": args.max_prompt_length,
                "max_total_tokens": args.reflection_total_tokens,
            }
        began = time.perf_counter()
        log(f"{name}: scoring the student by {metric}")
        scored = student_difficulties(
            metric,
            load_model(student_dir),
            tokenizer,
            training,
            out / f"scores-{metric}",  # shared by the strategies of one metric
            texts=texts,
            progress=False,
            **options,
        )
        scoring_seconds = 0.0 if scored.reused else time.perf_counter() - began
        extra = {"warmup_fraction": 0.2} if name == "spectrumkd" else {}
        settings = settings_for_visit_budget(name, None, len(ids), args.baseline_epochs, **extra)
        plan = curate(ids, scored.difficulties, settings, folder, strategy=name)
    train = TrainConfig(**TRAIN, epochs=args.baseline_epochs)
    state_file = folder / "checkpoint" / "trainer_state.json"
    resumed = state_file.exists()
    log(f"{name}: training" + (" (resuming its checkpoint)" if resumed else ""))
    began = time.perf_counter()
    inputs = DistillInputs(
        tokenizer=tokenizer,
        teacher=teacher,
        student=load_model(student_dir),
        train_examples=training,
        validation=validation,
    )
    state = train_student(inputs, train, folder, plan=plan, progress=False)
    seconds = time.perf_counter() - began
    epochs = {r["epoch"]: r for r in read_jsonl(folder / "metrics.jsonl") if "val_kd" in r}
    final, kept = epochs[max(epochs)], epochs[state["best"]["epoch"]]
    return {
        "run": name,
        "metric": metric,
        "settings": plan.metadata.get("settings") if plan else None,
        "epochs": plan.num_epochs if plan else args.baseline_epochs,
        "stages": plan.num_stages if plan else 1,
        "example_visits": sum(len(e.ids) for e in plan.epochs)
        if plan
        else args.baseline_epochs * len(ids),
        "steps": state["step"],
        "training_seconds": round(seconds, 1),
        "resumed": resumed,  # the time then covers only the part after the resume
        "scoring_seconds": round(scoring_seconds, 1),
        "final_epoch": final["epoch"],
        "final_val_ce": round(final["val_ce"], 4),
        "final_val_kd": round(final["val_kd"], 4),
        "kept_epoch": kept["epoch"],
        "kept_val_ce": round(kept["val_ce"], 4),
        "kept_val_kd": round(kept["val_kd"], 4),
        "rows": len(ids),
        "validation_rows": len(validation),
    }


def results_table(out: Path, args: argparse.Namespace) -> str:
    import json

    lines = [
        f"{args.rows} training rows, {args.validation_rows} validation rows, the visits of "
        f"{args.baseline_epochs} full-data epochs each; CE and KL(teacher||student) at tau 1 in "
        "nats per response token of the validation rows (lower is better); time: training "
        "wall time on the shared CPU (scoring separate).",
        "",
        "| run | ranked by | epochs (stages) | example visits | optimiser steps | final val CE"
        " | final val KL | kept epoch: val CE / KL | training time | scoring time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in RUNS:
        path = out / "results" / f"{name}.json"
        if not path.exists():
            lines.append(f"| {name} | not run yet | | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        lines.append(
            f"| {name} | {r['metric'] or '-'} | {r['epochs']} ({r['stages']}) | "
            f"{r['example_visits']} | {r['steps']} | {r['final_val_ce']:.4f} | "
            f"{r['final_val_kd']:.4f} | {r['kept_epoch']}: {r['kept_val_ce']:.4f} / "
            f"{r['kept_val_kd']:.4f} | {r['training_seconds']:.0f} s"
            + (" (resumed)" if r["resumed"] else "")
            + f" | {r['scoring_seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


if __name__ == "__main__":
    main()
