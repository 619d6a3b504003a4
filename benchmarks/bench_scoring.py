"""Scoring throughput on the real SmolLM2-derived student: the bucketed scorer against a
batch-of-one loop and a plain padded loop in dataset order, side by side in one run.

Usage: python benchmarks/bench_scoring.py [--rows 200] [--num-layers 20] [--batch 16]
Prints a Markdown table (real, non-padding tokens per second and ratios) to paste into
benchmarks/README.md. All variants score the same examples and must agree (checked).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from spectrumkd.batching import length_bucketed_batches
from spectrumkd.data import collate, load_examples, tokenize_examples
from spectrumkd.models import (
    DEFAULT_TEACHER,
    cache_dir,
    calibration_batches,
    load_model,
    load_tokenizer,
    shrink,
)
from spectrumkd.scoring import ScoringSettings, score_examples


def student_for_benchmark(num_layers: int, tokenizer, dataset) -> torch.nn.Module:
    folder = cache_dir() / "bench" / f"smollm2-student-{num_layers}"
    if not (folder / "shrink_report.json").exists():  # written last: the student is complete
        teacher = load_model(DEFAULT_TEACHER)
        shrink(
            teacher,
            tokenizer,
            calibration_batches(dataset, tokenizer.pad_token_id),
            num_layers=num_layers,
            out_dir=folder,
        )
    return load_model(folder)


def batch_of_one(model, examples) -> np.ndarray:
    """The naive loop: each example alone through the model's own `labels=` loss."""
    means = []
    for example in examples:
        out = model(
            input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])
        )
        means.append(out.loss.item())
    return np.asarray(means)


def padded_in_order(model, examples, batch: int, pad_token_id: int) -> np.ndarray:
    """A plain loop: fixed-size batches in dataset order, full logits, padded to the longest."""
    means = []
    for start in range(0, len(examples), batch):
        inputs = collate(examples[start : start + batch], pad_token_id)
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).logits
        targets = inputs["labels"][:, 1:]
        losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
        means.extend((losses.sum(1) / (targets != -100).sum(1)).tolist())
    return np.asarray(means)


def raw_forward(model, examples, budget: int, pad_token_id: int) -> None:
    """The model's forward alone (full logits, no loss) over the scorer's own length buckets:
    what a scorer that computes every position's logits cannot beat."""
    for batch in length_bucketed_batches(
        [len(e.input_ids) for e in examples], ScoringSettings(max_tokens_per_batch=budget)
    ):
        inputs = collate([examples[i] for i in batch], pad_token_id)
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=200,
        help="Dolly rows to load (those over --max-length are dropped)",
    )
    parser.add_argument("--num-layers", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="batch size of the plain padded loop")
    parser.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=[1024, 4096],
        help="token budgets of the bucketed scorer",
    )
    args = parser.parse_args()

    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    dataset = tokenize_examples(
        load_examples("embedded:dolly", limit=args.rows), tokenizer, max_length=args.max_length
    )
    model = student_for_benchmark(args.num_layers, tokenizer, dataset)
    examples = dataset.examples
    real_tokens = sum(len(e.input_ids) for e in examples)

    def bucketed(budget: int):
        # float32: the variants compared here are float32 loops (bf16: bench_precision.py).
        settings = ScoringSettings(max_tokens_per_batch=budget, precision="float32")
        return lambda: (
            score_examples(
                model,
                examples,
                pad_token_id=tokenizer.pad_token_id,
                settings=settings,
                progress=False,
            ).loss_mean
        )

    variants = [
        (f"bucketed scorer (spectrumkd), {b} tokens/batch", bucketed(b)) for b in args.budgets
    ]
    variants += [
        ("batch-of-one loop, labels= loss", lambda: batch_of_one(model, examples)),
        (
            f"padded loop in dataset order, batch {args.batch}",
            lambda: padded_in_order(model, examples, args.batch, tokenizer.pad_token_id),
        ),
    ]
    results = {}
    with torch.inference_mode():
        batch_of_one(model, examples[:4])  # warm-up
        for name, run in variants:
            start = time.perf_counter()
            means = run()
            results[name] = (time.perf_counter() - start, means)
        start = time.perf_counter()
        raw_forward(model, examples, args.budgets[0], tokenizer.pad_token_id)
        raw_seconds = time.perf_counter() - start
    reference = results["batch-of-one loop, labels= loss"][1]
    deviation = {
        name: float(np.abs(means - reference).max()) for name, (_, means) in results.items()
    }
    for name, worst in deviation.items():
        if name.startswith("bucketed"):
            assert worst < 1e-4, f"{name} disagrees with batch-of-one by {worst}"

    base = results["batch-of-one loop, labels= loss"][0]
    print(
        f"# {len(examples)} Dolly examples ({real_tokens:,} real tokens), SmolLM2 student with {args.num_layers} layers, "
        f"fp32, {torch.get_num_threads()} threads, {platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        "| scorer | seconds | real tokens/s | speed vs batch-of-one | max abs diff vs batch-of-one (nats/token) |"
    )
    print("|---|---|---|---|---|")
    for name, (seconds, _) in results.items():
        print(
            f"| {name} | {seconds:.1f} | {real_tokens / seconds:,.0f} | {base / seconds:.2f}x | {deviation[name]:.1e} |"
        )
    print(
        f"| model forward alone (full logits, no loss) over the same buckets, {args.budgets[0]} tokens/batch | "
        f"{raw_seconds:.1f} | {real_tokens / raw_seconds:,.0f} | {base / raw_seconds:.2f}x | - |"
    )


if __name__ == "__main__":
    main()
