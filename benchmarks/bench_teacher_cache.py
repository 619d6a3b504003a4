"""Approximation error and size of the offline top-k teacher cache on the real SmolLM2 teacher.

Usage: python benchmarks/bench_teacher_cache.py [--rows 16] [--ks 16 64 256]
Prints a Markdown table: KL(p_cached || p_live) per response token (= -log of the top-k mass)
at temperatures 1 and 2, and the shard bytes per token.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from spectrumkd.data import load_examples, tokenize_examples
from spectrumkd.distillation.teacher_cache import (
    CachedTeacher,
    approximation_error,
    build_teacher_cache,
)
from spectrumkd.models import DEFAULT_TEACHER, load_model, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 64, 256])
    args = parser.parse_args()

    tokenizer, teacher = load_tokenizer(DEFAULT_TEACHER), load_model(DEFAULT_TEACHER)
    data = tokenize_examples(
        load_examples("embedded:dolly", limit=args.rows + 4), tokenizer, max_length=256
    )
    examples = data.examples[: args.rows]
    tokens = sum(sum(1 for label in e.labels[1:] if label != -100) for e in examples)
    print(
        f"# {len(examples)} Dolly rows, {tokens:,} response tokens, SmolLM2-135M-Instruct fp32, {time.strftime('%Y-%m-%d')}"
    )
    print("| k | KL/token, tau 1 | KL/token, tau 2 | shard bytes/token |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for k in args.ks:
            folder = build_teacher_cache(
                teacher, examples, root, k=k, pad_token_id=tokenizer.pad_token_id, progress=False
            )
            size = sum(p.stat().st_size for p in Path(folder).glob("shard-*"))
            cache = CachedTeacher(folder, teacher.config.vocab_size)
            errors = [
                approximation_error(
                    teacher, cache, examples, temperature=tau, pad_token_id=tokenizer.pad_token_id
                )
                for tau in (1.0, 2.0)
            ]
            print(f"| {k} | {errors[0]:.4f} | {errors[1]:.4f} | {size / tokens:.0f} |")


if __name__ == "__main__":
    main()
