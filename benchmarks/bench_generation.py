"""Generation throughput on the demo's 20-layer SmolLM2 student: ``transformers.generate`` at its
defaults in float32 against spectrumkd's KV-cached decode loop (finished rows leave the batch) in
float32 and under bf16 autocast, on the same DollyEval prompts; then (``--full``) every DollyEval
row that ``spectrumkd evaluate`` keeps, sampled at temperature 1 with one seed.

Usage:
    python benchmarks/bench_generation.py [--prompts 16] [--new-tokens 128] [--batch-size 16]
        [--threads N] [--full] [--full-limit N] [--full-new-tokens 256]

Prints one Markdown table row per variant: generated tokens (up to and including each row's
EOS), wall seconds, process CPU seconds, tokens per wall second, speed-up over ``generate``, and
how many rows equal ``generate``'s greedy output. The machine may be shared: the load average
before and after each run is printed too (process CPU time is the fairer number when it is
loaded). ``--full-limit`` times the first N kept rows only and extrapolates to all of them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from spectrumkd.batching import left_pad, length_sorted_batches, prompt_token_ids
from spectrumkd.evaluation import MAX_PROMPT_TOKENS, filter_prompts, load_suite
from spectrumkd.models import DEFAULT_TEACHER, load_model, load_tokenizer
from spectrumkd.models.generation import (
    decode,
    eos_token_ids,
    generate,
)
from spectrumkd.models.shrink import shrink_model

DATA_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def load_student() -> tuple[torch.nn.Module, object]:
    """The demo's student: SmolLM2's layers 0-9 and 20-29 (20 of 30)."""
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    teacher = load_model(DEFAULT_TEACHER, dtype=torch.float32)
    student = shrink_model(teacher, [*range(10), *range(20, 30)]).eval()
    return student, tokenizer


def timed(fn):
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return result, wall, cpu, (load, os.getloadavg()[0])


def hf_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """``model.generate`` at the model's own defaults (SmolLM2: greedy, EOS 2, pad 2), one batch
    of left-padded prompts; each row's new tokens up to and including its first EOS."""
    encoded = prompt_token_ids(tokenizer, prompts)
    input_ids, attention_mask = left_pad(encoded, tokenizer.pad_token_id)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens
        )
    eos = set(eos_token_ids(model, tokenizer))
    rows = []
    for row in output[:, input_ids.shape[1] :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def new_path(model, tokenizer, prompts, max_new_tokens, precision, temperature=0.0, seed=0):
    """The decode loop on one batch (the same one ``generate`` gets), new ids per row."""
    encoded = prompt_token_ids(tokenizer, prompts)
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    pad = tokenizer.pad_token_id
    return decode(
        model,
        encoded,
        pad_token_id=pad,
        eos_token_ids=eos_token_ids(model, tokenizer),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        generator=generator,
        precision=precision,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's (all cores)")
    parser.add_argument("--data-root", default=str(DATA_ROOT))
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--full", action="store_true", help="time every DollyEval row that fits")
    parser.add_argument("--full-limit", type=int, default=None)
    parser.add_argument("--full-new-tokens", type=int, default=256)
    parser.add_argument("--full-precision", default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_student()
    suite = load_suite("dolly", args.data_root)
    kept, dropped = filter_prompts(suite.examples, tokenizer, MAX_PROMPT_TOKENS)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; DollyEval: {len(kept)} of "
        f"{len(suite.examples)} rows fit in {MAX_PROMPT_TOKENS} prompt tokens"
    )

    if not args.skip_compare:
        prompts = [e.prompt for e in kept[: args.prompts]]
        n = args.new_tokens
        print(f"\n{len(prompts)} prompts, {n} new tokens, one batch of {len(prompts)}\n")
        print("| variant | tokens | wall s | CPU s | tokens/s | vs generate | = generate | load |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        variants = [
            (
                "transformers generate, defaults, float32",
                lambda: hf_generate(model, tokenizer, prompts, n),
            ),
            (
                "decode loop, greedy, float32",
                lambda: new_path(model, tokenizer, prompts, n, "float32"),
            ),
            (
                "decode loop, greedy, bf16 autocast",
                lambda: new_path(model, tokenizer, prompts, n, "bf16"),
            ),
            (
                "decode loop, sampled T=1, bf16 autocast",
                lambda: new_path(model, tokenizer, prompts, n, "bf16", temperature=1.0),
            ),
        ]
        reference, base = None, None
        for name, run in variants:
            rows, wall, cpu, load = timed(run)
            tokens = sum(len(r) for r in rows)
            rate = tokens / wall
            if reference is None:
                reference, base = rows, rate
            same = sum(a == b for a, b in zip(rows, reference, strict=True))
            print(
                f"| {name} | {tokens} | {wall:.1f} | {cpu:.1f} | {rate:.1f} | "
                f"{rate / base:.2f}x | {same}/{len(rows)} | {load[0]:.1f}->{load[1]:.1f} |",
                flush=True,
            )

    if args.full:
        rows = kept[: args.full_limit] if args.full_limit else kept
        prompts = [e.prompt for e in rows]
        batches = len(length_sorted_batches([1] * len(prompts), args.batch_size))

        def run():
            return generate(
                model,
                tokenizer,
                prompts,
                max_new_tokens=args.full_new_tokens,
                temperature=1.0,
                seed=10,
                batch_size=args.batch_size,
                precision=args.full_precision,
            )

        # Each forward of the loop makes one token per row it computes: rows forwarded = tokens.
        forwarded: list[int] = []
        hook = model.register_forward_pre_hook(
            lambda _m, _a, kw: forwarded.append(kw["input_ids"].shape[0]), with_kwargs=True
        )
        _, wall, cpu, load = timed(run)
        hook.remove()
        tokens = sum(forwarded)
        print(
            f"\nDollyEval {len(prompts)} rows ({batches} batches of {args.batch_size}), "
            f"{args.full_new_tokens} new tokens, sampled T=1, seed 10, precision "
            f"{args.full_precision}: {wall:.1f} s wall, {cpu:.1f} s CPU, {tokens} tokens, "
            f"{len(forwarded)} forwards, {tokens / wall:.1f} tokens/s, load {load[0]:.1f}->{load[1]:.1f}"
        )
        if len(prompts) < len(kept):
            print(f"extrapolated to all {len(kept)} rows: {wall * len(kept) / len(prompts):.0f} s")


if __name__ == "__main__":
    main()
