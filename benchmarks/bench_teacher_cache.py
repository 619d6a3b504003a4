"""What the offline top-k teacher cache loses, and what it costs, on the real SmolLM2 teacher.

Usage: python benchmarks/bench_teacher_cache.py [--rows 16] [--ks 16 64 256 4096]

Prints two Markdown tables.

1. Per k: the teacher's probability mass outside the top k, as -log(top-k mass) per response
   token at tau 1 and 2 (what a cache that renormalises over the top k throws away: the format-1
   cache did), and the shard bytes per token (top-k values and indices, the log-partition, the
   tail's log-partition on its grid of 29 temperatures).
2. Per k, objective and tau: the KD loss per token of a 20-layer student (SmolLM2 with layers
   10-19 removed, untrained) against the live teacher, and how far below it the cache's value
   lies. The cache compares the student's leftover mass with the teacher's as one tail bucket,
   so its value never exceeds the live one (data-processing inequality) and is exact at k = V;
   the renormalised format-1 value is printed beside it (its reverse KL can be negative).

And the cost of the tail: the process time of the tail's log-partitions against the whole build.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from spectrumkd.batching import collate
from spectrumkd.data import load_examples, tokenize_examples
from spectrumkd.distillation import teacher_cache
from spectrumkd.distillation.objectives import kd_loss
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.teacher_cache import (
    CachedTeacher,
    approximation_error,
    build_teacher_cache,
)
from spectrumkd.models import DEFAULT_TEACHER, load_model, load_tokenizer
from spectrumkd.models.shrink import shrink_model

OBJECTIVES = ("forward_kl", "reverse_kl", "jsd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 64, 256, 4096])
    parser.add_argument("--batch", type=int, default=4, help="rows per KD-loss batch")
    args = parser.parse_args()

    tokenizer, teacher = load_tokenizer(DEFAULT_TEACHER), load_model(DEFAULT_TEACHER)
    student = shrink_model(load_model(DEFAULT_TEACHER), [*range(10), *range(20, 30)]).eval()
    data = tokenize_examples(
        load_examples("embedded:dolly", limit=args.rows + 4), tokenizer, max_length=256
    )
    examples = data.examples[: args.rows]
    pad = tokenizer.pad_token_id
    tokens = sum(sum(1 for label in e.labels[1:] if label != -100) for e in examples)
    vocab = teacher.config.vocab_size
    batches = [
        {
            **collate(examples[i : i + args.batch], pad),
            "ids": [e.id for e in examples[i : i + args.batch]],
        }
        for i in range(0, len(examples), args.batch)
    ]
    with torch.inference_mode():
        live = [LiveTeacher(teacher).logits(b) for b in batches]
        students = [
            student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            for b in batches
        ]

    def per_token(name: str, tau: float, cache: CachedTeacher | None, with_tail: bool) -> float:
        total = 0.0
        for b, teacher_logits, student_logits in zip(batches, live, students, strict=True):
            labels = b["labels"][:, 1:]
            tail = None
            if cache is not None:
                teacher_logits = cache.logits(b)
                if with_tail:
                    tail = cache.tail_logsumexp(b, tau)[:, :-1]
            value, _ = kd_loss(
                student_logits[:, :-1], teacher_logits[:, :-1], labels, name, tau, tail
            )
            total += float(value)
        return total / tokens

    # Process time inside the tail's log-partitions, to report its share of the build.
    tail_seconds = [0.0]
    plain_tail = teacher_cache.tail_log_partitions

    def timed_tail(*a, **kw):
        start = time.process_time()
        try:
            return plain_tail(*a, **kw)
        finally:
            tail_seconds[0] += time.process_time() - start

    teacher_cache.tail_log_partitions = timed_tail

    print(
        f"# {len(examples)} Dolly rows, {tokens:,} response tokens, SmolLM2-135M-Instruct fp32, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
    )
    mass_rows, loss_rows, cost_rows = [], [], []
    live_values = {
        (name, tau): per_token(name, tau, None, False) for name in OBJECTIVES for tau in (1.0, 2.0)
    }
    with tempfile.TemporaryDirectory() as root:
        for k in args.ks:
            tail_seconds[0] = 0.0
            start = time.process_time()
            folder = build_teacher_cache(
                teacher, examples, root, k=k, pad_token_id=pad, progress=False
            )
            build_seconds = time.process_time() - start
            cost_rows.append(
                f"| {k} | {build_seconds:.1f} | {tail_seconds[0]:.1f} | "
                f"{100 * tail_seconds[0] / build_seconds:.0f} % |"
            )
            size = sum(p.stat().st_size for p in Path(folder).glob("shard-*"))
            cache = CachedTeacher(folder, vocab)
            lost = [
                approximation_error(teacher, cache, examples, temperature=tau, pad_token_id=pad)
                for tau in (1.0, 2.0)
            ]
            mass_rows.append(f"| {k} | {lost[0]:.4f} | {lost[1]:.4f} | {size / tokens:.0f} |")
            for name in OBJECTIVES:
                for tau in (1.0, 2.0):
                    exact = live_values[(name, tau)]
                    bucketed = per_token(name, tau, cache, True)
                    renormalised = per_token(name, tau, cache, False)
                    loss_rows.append(
                        f"| {k} | {name} | {tau:g} | {exact:.4f} | {bucketed:.4f} | "
                        f"{exact - bucketed:.4f} | {renormalised:.4f} |"
                    )
    teacher_cache.tail_log_partitions = plain_tail

    print("\n| k | -log top-k mass, tau 1 | -log top-k mass, tau 2 | shard bytes/token |")
    print("|---|---|---|---|")
    print("\n".join(mass_rows))
    print(
        "\n| k | objective | tau | live KD/token | cache (tail bucket) | live - cache | "
        "renormalised (format 1) |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(loss_rows))
    print("\n| k | build, CPU s | of which the tail grid, CPU s | share |")
    print("|---|---|---|---|")
    print("\n".join(cost_rows))
    assert all(math.isfinite(v) for v in live_values.values())


if __name__ == "__main__":
    main()
