"""bf16 autocast against float32 on the real embedded teacher: speed and numerical effect.

Usage: python benchmarks/bench_precision.py [--rows 200] [--rounds 2] [--steps 50]

One torch thread and PROCESS CPU time (other jobs share this machine's cores, so wall time would
measure them too); float32 and bf16 alternate within one process, in swapped order each round.

(a) Scoring: the 20-layer student (teacher layers 0-9 and 20-29) scores the first ``--rows``
    embedded Dolly rows (<= 256 tokens) in each precision; throughput in tokens (all tokens) per
    CPU second, and the difficulty agreement: max / mean |delta| of the per-example mean CE,
    Spearman of the two, examples whose zone (lambda_a = lambda_b = 0.1) changes.
(b) KD loss over ``--steps`` optimiser steps of ``--batch`` rows: a 4-layer student (teacher layers 0, 1, 28, 29),
    live teacher, forward KL with the paper's alpha 0.3 at tau 1, AdamW 5e-5, the same batches in
    both precisions; the teacher's forward and the student's forward and backward run under the
    autocast, the losses in float32 (the trainer's step_losses). Per-step |delta| of the KD loss.
(c) Held-out CE (float32 evaluation) of both students after (b), on ``--heldout`` rows outside
    the scored ones.
(d) Share of scoring + curation in a whole run of the demo-like setting: the 20-layer student,
    live teacher, batch 8, forward KL; CPU seconds per token of a training step (``--speed-steps``
    steps in each precision) and of scoring (a), applied to the token counts of a run: scoring
    every scored row once, training on each epoch's window of the SpectrumKD plan of those rows.
    share = (scoring + curation) / (scoring + curation + training), curation timed as is.

Prints a Markdown table to paste into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from contextlib import nullcontext

import numpy as np
import torch
from scipy.stats import spearmanr

from spectrumkd.curation import SpectrumKD, SpectrumKDConfig
from spectrumkd.curation.spectrum import build_spectrum
from spectrumkd.data import collate, load_examples, tokenize_examples
from spectrumkd.distillation.objectives import get_objective
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.steps import step_losses
from spectrumkd.models import DEFAULT_TEACHER, load_model, load_tokenizer
from spectrumkd.models.precision import autocast, has_fast_bf16
from spectrumkd.models.shrink import shrink_model
from spectrumkd.scoring import ScoringSettings, score_examples

STUDENT_LAYERS = [*range(10), *range(20, 30)]
SMALL_LAYERS = [0, 1, 28, 29]
PRECISIONS = ("float32", "bf16")
ALPHA, TEMPERATURE, LEARNING_RATE = 0.3, 1.0, 5e-5


def cpu_seconds(work) -> tuple[float, object]:
    start = time.process_time()
    result = work()
    return time.process_time() - start, result


def zones(table, lambdas=(0.1, 0.1)) -> dict[str, str]:
    spectrum = build_spectrum(table.ids, table.loss_mean, *lambdas)
    return {row["id"]: row["zone"] for row in spectrum.rows()}


def scoring(student, examples, pad: int, rounds: int) -> dict:
    seconds = {p: [] for p in PRECISIONS}
    tables = {}
    for round_ in range(rounds):
        for precision in PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]:
            settings = ScoringSettings(precision=precision)
            spent, tables[precision] = cpu_seconds(
                lambda s=settings: score_examples(
                    student, examples, pad_token_id=pad, settings=s, progress=False
                )
            )
            seconds[precision].append(spent)
    tokens = sum(len(e.input_ids) for e in examples)
    exact, mixed = tables["float32"].loss_mean, tables["bf16"].loss_mean
    delta = np.abs(mixed - exact)
    zones_exact, zones_mixed = zones(tables["float32"]), zones(tables["bf16"])
    curation_seconds, _ = cpu_seconds(
        lambda: SpectrumKD(SpectrumKDConfig()).plan(tables["bf16"].ids, mixed)
    )
    return {
        "tokens": tokens,
        "seconds": {p: min(s) for p, s in seconds.items()},  # the least disturbed round
        "all_seconds": seconds,
        "max_delta": float(delta.max()),
        "mean_delta": float(delta.mean()),
        "max_rel_delta": float((delta / exact).max()),
        "spearman": float(spearmanr(exact, mixed).statistic),
        "zone_changes": sum(zones_exact[i] != zones_mixed[i] for i in zones_exact),
        "table": tables["bf16"],
        "curation_seconds": curation_seconds,
    }


def batches_of(examples, size: int, count: int, pad: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < size * count:
        order.extend(rng.permutation(len(examples)).tolist())
    return [
        {
            **collate([examples[i] for i in order[s * size : (s + 1) * size]], pad),
            "ids": [examples[i].id for i in order[s * size : (s + 1) * size]],
        }
        for s in range(count)
    ]


def train_step(student, teacher, optimizer, batch, precision: str) -> tuple[float, float, float]:
    """One optimiser step as the trainer takes it; (CE per token, KD per token, CPU seconds)."""
    objective = get_objective("forward_kl")
    start = time.process_time()
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    with autocast(precision, "cpu") if precision != "float32" else nullcontext():
        ce_sum, kd_sum = step_losses(student, teacher, batch, objective, TEMPERATURE)
    loss = (ALPHA * ce_sum + (1 - ALPHA) * TEMPERATURE**2 * kd_sum) / tokens
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return ce_sum.item() / tokens, kd_sum.item() / tokens, time.process_time() - start


def short_runs(teacher, initial, batches) -> dict:
    live = LiveTeacher(teacher)
    students = {p: copy.deepcopy(initial).train() for p in PRECISIONS}
    optimizers = {
        p: torch.optim.AdamW(students[p].parameters(), lr=LEARNING_RATE) for p in PRECISIONS
    }
    kd = {p: [] for p in PRECISIONS}
    seconds = {p: 0.0 for p in PRECISIONS}
    for step, batch in enumerate(batches):
        for precision in PRECISIONS if step % 2 == 0 else PRECISIONS[::-1]:
            _, kd_value, spent = train_step(
                students[precision], live, optimizers[precision], batch, precision
            )
            kd[precision].append(kd_value)
            seconds[precision] += spent
    return {"kd": kd, "seconds": seconds, "students": students}


def heldout_ce(model, examples, pad: int) -> float:
    table = score_examples(
        model.eval(),
        examples,
        pad_token_id=pad,
        settings=ScoringSettings(precision="float32"),
        progress=False,
    )
    return float(table.loss_sum.sum() / table.tokens.sum())


def training_speed(teacher, student, batches) -> dict:
    """CPU seconds per token of a demo-like training step, in each precision."""
    live = LiveTeacher(teacher)
    students = {p: copy.deepcopy(student).train() for p in PRECISIONS}
    optimizers = {p: torch.optim.AdamW(students[p].parameters(), lr=1e-6) for p in PRECISIONS}
    seconds = {p: 0.0 for p in PRECISIONS}
    tokens = 0
    for step, batch in enumerate(batches):
        tokens += batch["input_ids"].numel()
        for precision in PRECISIONS if step % 2 == 0 else PRECISIONS[::-1]:
            seconds[precision] += train_step(
                students[precision], live, optimizers[precision], batch, precision
            )[2]
    return {p: seconds[p] / tokens for p in PRECISIONS}


def run_share(score_per_token, train_per_token, curation_seconds, table, by_id, config) -> float:
    """Share of scoring + curation in a run that scores every row once and trains on the
    plan's windows (padding left out on both sides: the per-token costs are per real token)."""
    plan = SpectrumKD(config).plan(table.ids, table.loss_mean)
    trained = sum(len(by_id[i].input_ids) for epoch in plan.epochs for i in epoch.ids)
    scored = sum(len(by_id[i].input_ids) for i in table.ids)
    front = scored * score_per_token + curation_seconds
    return front / (front + trained * train_per_token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--speed-steps", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    wall = time.perf_counter()

    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    teacher = load_model(DEFAULT_TEACHER).eval()
    dataset = tokenize_examples(
        load_examples("embedded:dolly", limit=3 * (args.rows + args.heldout)),
        tokenizer,
        max_length=256,
    )
    rows = dataset.examples[: args.rows]
    heldout = dataset.examples[args.rows : args.rows + args.heldout]
    pad = tokenizer.pad_token_id
    by_id = {e.id: e for e in rows}

    student = shrink_model(teacher, STUDENT_LAYERS).eval()
    a = scoring(student, rows, pad, args.rounds)
    print(f"(a) scoring done at {time.perf_counter() - wall:.0f} s wall", flush=True)

    small = shrink_model(teacher, SMALL_LAYERS)
    b = short_runs(teacher, small, batches_of(rows, args.batch, args.steps, pad))
    kd = {p: np.asarray(v) for p, v in b["kd"].items()}
    kd_delta = np.abs(kd["bf16"] - kd["float32"])
    print(f"(b) {args.steps} steps done at {time.perf_counter() - wall:.0f} s wall", flush=True)

    ce = {"initial": heldout_ce(small, heldout, pad)}
    ce.update({p: heldout_ce(b["students"][p], heldout, pad) for p in PRECISIONS})

    speed = training_speed(teacher, student, batches_of(rows, 8, args.speed_steps, pad, seed=1))
    score_per_token = {p: a["seconds"][p] / a["tokens"] for p in PRECISIONS}
    shares = {
        (name, p): run_share(
            score_per_token[p], speed[p], a["curation_seconds"], a["table"], by_id, config
        )
        for name, config in (
            ("cpu_default (5 epochs, 2 warm-up)", SpectrumKDConfig(epochs=5, warmup_epochs=2)),
            ("paper (25 epochs, 5 warm-up)", SpectrumKDConfig()),
        )
        for p in PRECISIONS
    }

    fast = "yes" if has_fast_bf16("cpu") else "no"
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
        f"fast bf16 detected: {fast}; {len(rows)} rows ({a['tokens']:,} tokens), "
        f"{time.perf_counter() - wall:.0f} s wall in all\n"
    )
    tps = {p: a["tokens"] / a["seconds"][p] for p in PRECISIONS}
    print("| measure | float32 | bf16 autocast | bf16 vs float32 |")
    print("|---|---:|---:|---:|")
    print(
        f"| (a) scoring, tokens per CPU second (best of {args.rounds}) | {tps['float32']:,.0f} | "
        f"{tps['bf16']:,.0f} | {tps['bf16'] / tps['float32']:.2f}x |"
    )
    print(
        f"| (a) difficulty (mean CE per example) | | | max abs delta {a['max_delta']:.4f} "
        f"(rel {a['max_rel_delta']:.2%}), mean {a['mean_delta']:.4f} |"
    )
    print(
        f"| (a) spectrum agreement | | | Spearman {a['spearman']:.5f}, "
        f"{a['zone_changes']} of {len(rows)} zone changes |"
    )
    print(
        f"| (b) KD per token, step 1 / step {args.steps} | {kd['float32'][0]:.4f} / "
        f"{kd['float32'][-1]:.4f} | {kd['bf16'][0]:.4f} / {kd['bf16'][-1]:.4f} | "
        f"per-step abs delta max {kd_delta.max():.4f}, mean {kd_delta.mean():.4f} |"
    )
    print(
        f"| (b) {args.steps} steps, CPU seconds (4-layer student) | {b['seconds']['float32']:.1f} | "
        f"{b['seconds']['bf16']:.1f} | {b['seconds']['float32'] / b['seconds']['bf16']:.2f}x |"
    )
    print(
        f"| (c) held-out CE ({len(heldout)} rows, float32 eval; initial {ce['initial']:.4f}) | "
        f"{ce['float32']:.4f} | {ce['bf16']:.4f} | delta {ce['bf16'] - ce['float32']:+.4f} |"
    )
    print(
        f"| (d) training step, CPU ms per token (20-layer student, batch 8) | "
        f"{1e3 * speed['float32']:.2f} | {1e3 * speed['bf16']:.2f} | "
        f"{speed['float32'] / speed['bf16']:.2f}x |"
    )
    for name in ("cpu_default (5 epochs, 2 warm-up)", "paper (25 epochs, 5 warm-up)"):
        print(
            f"| (d) scoring + curation share of a run, {name} | "
            f"{shares[(name, 'float32')]:.2%} | {shares[(name, 'bf16')]:.2%} | paper: 5.5 % |"
        )
    print(f"\nscoring CPU seconds per round: {a['all_seconds']}")


if __name__ == "__main__":
    main()
