"""The machine time of a profile's matrix for one objective, stated before it runs, from the row
counts of its data (tokenised here, in seconds) and speeds measured on this project's 2-core CPU
machine (sources beside each constant). ``run.py --profile paper_cpu estimate``.

Model of the machine: two runners at a time, one torch thread each (how the committed CPU
results were made), so a piece's machine time is its work at the machine's whole throughput.
Training and decoding cost scale with the student's matmul parameters (its layers plus the
tied 49k-vocabulary head), which is how a smaller student is priced."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from experiments.config import Experiment, data_config

# Training: one optimiser step of 8 Dolly rows (<= 256 tokens) of the 20-layer student from the
# top-4096 teacher cache, float32: 25.4-33.0 s per runner with two runners of one thread
# (experiments/results/fkl-*.json, wall train / steps, 2026-11-26), so 13.5 s of the machine.
# bf16 autocast (the paper_cpu profile's `auto` here) is 1.67x a step of that student
# (benchmarks/README.md, "bf16 against float32", (d)); the demo's quiet bf16 step with the live
# teacher is about 6 s (src/spectrumkd/demo.py).
TRAIN_STEP_S_FP32 = 13.5
BF16_STEP_SPEEDUP = 1.67
# Decoding: every kept DollyEval row sampled at T = 1 to 256 new tokens, bf16, 64 rows at a time
# (continuous batching), the 20-layer student: 254.6 new tokens per CPU second of one thread
# (benchmarks/README.md, "Generation", table 3: the 128 longest prompts, an upper bound per row;
# that student never stopped early, so every row cost the full budget); two runners of one
# thread each make the machine's 509 tokens/s. (Before issue 14's decode loop: 31.2 tokens/s.)
GENERATION_TOKENS_S = 2 * 254.6
MEASURED_LAYERS = 20
# The setup of the CPU profile: 1,017 s for 277 rows (experiments/README.md), of which scoring
# is about 70 s per model per 277 rows; the teacher cache about 180 s per 277 rows.
SETUP_S, SCORING_S_PER_ROW, CACHE_S_PER_ROW = 1017.0, 140.0 / 277, 180.0 / 277
BUDGET_H = 15.0


@dataclass(frozen=True)
class Counts:
    train: int
    validation: int
    test: int


def row_counts(exp: Experiment) -> Counts:
    """The training rows that fit, without test prompts, split as the cells split them; the test
    rows whose prompt fits (the setup's own counting, without its models)."""
    from experiments.measure import load_test
    from spectrumkd.data import split_validation
    from spectrumkd.models import load_tokenizer

    tokenizer = load_tokenizer(exp.teacher)
    _, test, _ = load_test(exp, tokenizer)
    prompts = {example.prompt for example in test}
    config = data_config(exp.data, "data")
    texts = [t for t in config.load_texts(tokenizer) if t.prompt not in prompts]
    kept = config.tokenize(texts, tokenizer).examples
    train, validation = split_validation(
        kept, exp.data.get("validation_ratio", 0.0), exp.data.get("validation_seed", 0)
    )
    return Counts(len(train), len(validation), len(test))


def student_cost(exp: Experiment, layers: int) -> float:
    """Matmul parameters of a ``layers``-block student of the teacher, relative to the measured
    20-block one (per-block attention and MLP weights; the tied head once)."""
    from transformers import AutoConfig

    from spectrumkd.models.loading import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(exp.teacher))
    hidden, inner = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    block = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner
    head = config.vocab_size * hidden
    return (layers * block + head) / (MEASURED_LAYERS * block + head)


def estimate(
    exp: Experiment,
    counts: Counts,
    cost: float,
    *,
    answer_tokens: int | None = None,
    train_step_s: float | None = None,
    generation_tokens_s: float = GENERATION_TOKENS_S,
) -> dict[str, Any]:
    """Hours of each piece of the first objective's matrix (setup, learning-rate trials, cells),
    ``cost`` the student's cost relative to the measured one; answers cost ``answer_tokens``
    each (default: the full budget, as the measured student never stopped early)."""
    from spectrumkd.curation import SpectrumKDConfig, step_parity

    train, test = exp.train, exp.test
    if train_step_s is None:
        bf16 = train.get("mixed_precision", "auto") in ("auto", "bf16")
        train_step_s = TRAIN_STEP_S_FP32 / (BF16_STEP_SPEEDUP if bf16 else 1.0)
    step_s, token_s = train_step_s * cost, cost / generation_tokens_s
    batch = train.get("batch_size", 8) * train.get("grad_accum", 1)
    curation = {k: v for k, v in exp.spectrumkd.items() if k != "warmup_fraction"}
    parity = step_parity(
        SpectrumKDConfig(**curation, epochs=2, warmup_epochs=1),
        exp.baseline_epochs,
        counts.train,
        warmup_fraction=exp.spectrumkd["warmup_fraction"],
    ).to_dict()
    arms = {
        "baseline": (exp.baseline_epochs, exp.baseline_epochs * math.ceil(counts.train / batch)),
        "spectrumkd": (parity["epochs"], parity["epochs"] * math.ceil(parity["window"] / batch)),
    }
    val_rows = counts.validation
    if train.get("val_rouge_rows") is not None:
        val_rows = min(val_rows, train["val_rouge_rows"])
    generating = train.get("val_rouge", "off") != "off"
    val_answer = min(answer_tokens or 10**9, train.get("val_max_new_tokens", 256))
    test_answer = min(answer_tokens or 10**9, test.max_new_tokens)
    test_rows = counts.test if test.rouge_rows is None else min(counts.test, test.rouge_rows)
    runs = len(test.sample_seeds) + int(test.greedy)
    evaluation_h = test_rows * runs * test_answer * token_s / 3600

    def training_h(arm: str) -> tuple[float, float]:
        epochs, steps = arms[arm]
        validation = epochs * val_rows * val_answer * token_s if generating else 0.0
        return steps * step_s / 3600, validation / 3600

    rows = counts.train + counts.validation
    pieces = [
        ("setup (shrink, heal, scoring, starting scores)", SETUP_S + SCORING_S_PER_ROW * rows),
        ("teacher cache", CACHE_S_PER_ROW * rows),
    ]
    pieces = [(name, seconds / 3600, 0.0, 0.0) for name, seconds in pieces]
    grid = exp.lr_selection.grid if exp.lr_selection else ()
    for rate in grid:
        pieces.append(
            (f"lr-{rate:g} (baseline, seed {exp.lr_selection.seed})", *training_h("baseline"), 0.0)
        )
    for seed in exp.seeds:
        for arm in ("baseline", "spectrumkd"):
            train_h, val_h = training_h(arm)
            if grid and arm == "baseline" and seed == exp.lr_selection.seed:
                train_h = val_h = 0.0  # the chosen rate's trial is this cell's training
            pieces.append((f"{arm}-seed{seed}", train_h, val_h, evaluation_h))
    total = sum(sum(piece[1:]) for piece in pieces)
    ce_extra = evaluation_h * 2 * len(exp.seeds) if test.evaluate_ce_selected else 0.0
    return {
        "counts": counts,
        "steps": {arm: steps for arm, (_, steps) in arms.items()},
        "epochs": {arm: epochs for arm, (epochs, _) in arms.items()},
        "train_step_s": step_s,
        "generation_tokens_s": generation_tokens_s / cost,
        "pieces": pieces,
        "total_h": total,
        "ce_selected_extra_h": ce_extra,
    }


def estimate_text(
    exp: Experiment,
    *,
    layers: int | None = None,
    answer_tokens: int | None = None,
    budget_h: float = BUDGET_H,
) -> str:
    counts = row_counts(exp)
    own = layers or (exp.shrink or {}).get("num_layers", MEASURED_LAYERS)
    result = estimate(exp, counts, student_cost(exp, own), answer_tokens=answer_tokens)
    answers = f"{answer_tokens} tokens" if answer_tokens else "the full budget (measured)"
    lines = [
        f"profile {exp.profile}, first objective's matrix ({', '.join(map(str, exp.seeds))} "
        f"seeds x 2 arms), a {own}-layer student; answers cost {answers}",
        f"rows: {counts.train} train + {counts.validation} validation, {counts.test} test; "
        f"steps per cell: baseline {result['steps']['baseline']} ({result['epochs']['baseline']} "
        f"epochs), +SpectrumKD {result['steps']['spectrumkd']} "
        f"({result['epochs']['spectrumkd']} epochs)",
        f"speeds: {result['train_step_s']:.1f} s per optimiser step, "
        f"{result['generation_tokens_s']:.1f} new tokens/s (machine time)",
        "",
        "| piece | training h | validation answers h | test answers h | total h |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, train_h, val_h, test_h in result["pieces"]:
        lines.append(
            f"| {name} | {train_h:.2f} | {val_h:.2f} | {test_h:.2f} "
            f"| {train_h + val_h + test_h:.2f} |"
        )
    total, extra = result["total_h"], result["ce_selected_extra_h"]
    lines += [
        f"| **total** | | | | **{total:.1f}** |",
        "",
        f"CE-selected checkpoints evaluated on their own: up to {extra:.1f} h more (only where "
        "the lowest-CE epoch is not the selected one).",
        "Shorter answers (--answer-tokens) are priced per token: the decode loop refills a "
        "finished row's slot, so a row that stops early frees its work; the full budget is the "
        "measured (undistilled) student's.",
        f"Budget {budget_h:g} h: {'fits' if total <= budget_h else 'does NOT fit'}"
        f" ({total:.1f} h; {total + extra:.1f} h at most).",
        "",
        "| student layers | relative cost | total h | with every CE-selected evaluation h |",
        "|---:|---:|---:|---:|",
    ]
    for size in sorted({own, 20, 16, 12, 8, 6, 4}, reverse=True):
        cost = student_cost(exp, size)
        other = estimate(exp, counts, cost, answer_tokens=answer_tokens)
        lines.append(
            f"| {size} | {cost:.2f} | {other['total_h']:.1f} "
            f"| {other['total_h'] + other['ce_selected_extra_h']:.1f} |"
        )
    return "\n".join(lines)
