"""Scoring on both cores: one process with torch's threads against forked one-thread workers.

Usage: python benchmarks/bench_scoring_workers.py [--rows 300] [--num-layers 20] [--rounds 2]

The demo's student (``bench_scoring.student_for_benchmark``: SmolLM2-135M-Instruct cut to
``--num-layers`` blocks by block influence) scores the first ``--rows`` embedded Dolly rows
(<= 256 tokens) with ``score_examples`` at its defaults (bf16 where the CPU has fast bf16), into a
fresh folder each time: one process with one thread, one process with two threads, and two
forked one-thread workers (``workers=2``). Wall time, since the variants differ in how many
cores they use: run it with nothing else on the machine. Rounds alternate the order. The
workers' table must equal the one-thread table (each worker is a one-thread scorer of whole
shards; checked).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from bench_scoring import student_for_benchmark

from spectrumkd.data import load_examples, tokenize_examples
from spectrumkd.models import DEFAULT_TEACHER, load_tokenizer
from spectrumkd.scoring import score_examples

VARIANTS = {  # name -> (torch threads, workers)
    "one process, 1 thread": (1, 1),
    "one process, 2 threads": (2, 1),
    "2 forked workers, 1 thread each": (2, 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--num-layers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    dataset = tokenize_examples(
        load_examples("embedded:dolly", limit=args.rows), tokenizer, max_length=256
    )
    model = student_for_benchmark(args.num_layers, tokenizer, dataset).eval()
    examples = dataset.examples
    tokens = sum(len(e.input_ids) for e in examples)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    tables = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            names = list(VARIANTS) if round_ % 2 == 0 else list(VARIANTS)[::-1]
            for name in names:
                threads, workers = VARIANTS[name]
                torch.set_num_threads(threads)
                start = time.perf_counter()
                tables[name] = score_examples(
                    model,
                    examples,
                    pad_token_id=tokenizer.pad_token_id,
                    out_dir=Path(scratch) / f"{round_}-{threads}-{workers}",
                    progress=False,
                    workers=workers,
                )
                seconds[name].append(time.perf_counter() - start)
    one = tables["one process, 1 thread"].loss_sum.tolist()
    if tables["2 forked workers, 1 thread each"].loss_sum.tolist() != one:
        raise AssertionError("the workers' table differs from the one-thread table")
    print(
        f"# {len(examples)} Dolly rows ({tokens:,} tokens), {args.num_layers}-layer student, "
        f"score_examples defaults; torch {torch.__version__}, {platform.machine()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; best of {args.rounds} rounds\n"
    )
    base = min(seconds["one process, 1 thread"])
    print("| scoring | wall s | tokens/s | vs one thread |")
    print("|---|---:|---:|---:|")
    for name, runs in seconds.items():
        best = min(runs)
        print(f"| {name} | {best:.1f} | {tokens / best:,.0f} | {base / best:.2f}x |")
    print(
        f"\nwall seconds per round: { {k: [round(v, 1) for v in s] for k, s in seconds.items()} }"
    )


if __name__ == "__main__":
    main()
