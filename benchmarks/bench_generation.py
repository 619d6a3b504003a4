"""Generation throughput: ``transformers.generate`` at its defaults in float32 against
spectrumkd's decode loop (preallocated KV cache, finished rows leave, freed slots refilled, bf16
model, inverse-CDF sampling) on the same DollyEval prompts, optionally against the loop of an
earlier commit (``--before REV``: its ``generation.py`` loaded from git, same process, same
prompts); then (``--full``) every DollyEval row that ``spectrumkd evaluate`` keeps, sampled at
temperature 1 with one seed.

Usage:
    python benchmarks/bench_generation.py [--model student|teacher] [--prompts 16]
        [--new-tokens 128] [--threads N] [--before REV] [--skip-compare]
        [--scale 16,64,128] [--scale-prompts 128] [--scale-new-tokens 64]
        [--full] [--full-limit N] [--full-new-tokens 256] [--batch-size 64] [--workers 1]

``student`` (default) is the demo's student: SmolLM2-135M-Instruct cut to blocks 0-9 and 20-29,
undistilled; it never emits EOS, so every row costs the full budget (the worst case).
``teacher`` is SmolLM2-135M-Instruct itself, which ends its answers.

Prints Markdown table rows: generated tokens (up to and including each row's EOS), wall and
process CPU seconds, tokens per CPU second and per wall second, the CPU-time speed-up over the
first row of the table, and how many rows equal ``generate``'s greedy output (with the mean
number of leading tokens a row shares with it). The machine may be
shared: the load average before and after each run is printed (process CPU time is the fairer
number when it is loaded). ``--full-limit`` times the first N kept rows only (the longest
prompts first, as the loop orders them) and extrapolates; ``--workers`` decodes them in that
many processes (CPU time then includes the workers').
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from spectrumkd.batching import left_pad, prompt_token_ids
from spectrumkd.evaluation import MAX_PROMPT_TOKENS, filter_prompts, load_suite
from spectrumkd.models import DEFAULT_TEACHER, load_model, load_tokenizer
from spectrumkd.models import generation as current
from spectrumkd.models.shrink import shrink_model

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO / ".." / "shared" / "data"


def load(which: str) -> tuple[torch.nn.Module, object]:
    """``student``: the demo's student, SmolLM2's layers 0-9 and 20-29 (20 of 30), undistilled;
    ``teacher``: SmolLM2-135M-Instruct itself (float32 weights)."""
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    teacher = load_model(DEFAULT_TEACHER, dtype=torch.float32).eval()
    if which == "teacher":
        return teacher, tokenizer
    return shrink_model(teacher, [*range(10), *range(20, 30)]).eval(), tokenizer


def load_before(rev: str):
    """``src/spectrumkd/models/generation.py`` as it was at ``rev``, as a module."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/spectrumkd/models/generation.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "generation_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("generation_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (decode workers)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn):
    load_before_run = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return result, wall, cpu, (load_before_run, os.getloadavg()[0])


def hf_generate(model, tokenizer, encoded, max_new_tokens: int) -> list[list[int]]:
    """``model.generate`` at the model's own defaults (SmolLM2: greedy, EOS 2, pad 2), one batch
    of left-padded prompts; each row's new tokens up to and including its first EOS."""
    input_ids, attention_mask = left_pad(encoded, tokenizer.pad_token_id)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens
        )
    eos = set(current.eos_token_ids(model, tokenizer))
    rows = []
    for row in output[:, input_ids.shape[1] :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def loop(module, model, tokenizer, encoded, n, precision, temperature=0.0, batch_size=None):
    """``module.decode`` on the prompts (the current loop with ``batch_size`` rows at a time,
    refilled; an earlier loop in batches of ``batch_size`` cut from the length-sorted prompts)."""
    options = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_ids": current.eos_token_ids(model, tokenizer),
        "max_new_tokens": n,
        "temperature": temperature,
        "precision": precision,
    }
    generator = torch.Generator().manual_seed(10) if temperature > 0 else None
    if module is current:
        return module.decode(model, encoded, generator=generator, batch_size=batch_size, **options)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    size = batch_size or len(encoded)
    rows: list[list[int]] = [[] for _ in encoded]
    for start in range(0, len(order), size):
        batch = order[start : start + size]
        out = module.decode(model, [encoded[i] for i in batch], generator=generator, **options)
        for index, tokens in zip(batch, out, strict=True):
            rows[index] = tokens
    return rows


def mean_common_prefix(rows, reference) -> float:
    """Mean number of leading tokens each row shares with its reference row."""
    total = 0
    for a, b in zip(rows, reference, strict=True):
        total += next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
    return total / len(rows)


def table_row(name, rows, wall, cpu, load, base_cpu_rate, reference) -> float:
    tokens = sum(len(r) for r in rows)
    same = (
        ""
        if reference is None
        else f"{sum(a == b for a, b in zip(rows, reference, strict=True))}/{len(rows)}"
    )
    rate = tokens / cpu
    ratio = "1.00x" if base_cpu_rate is None else f"{rate / base_cpu_rate:.2f}x"
    print(
        f"| {name} | {tokens} | {wall:.1f} | {cpu:.1f} | {rate:.1f} | {tokens / wall:.1f} | "
        f"{ratio} | {same} | {load[0]:.1f}->{load[1]:.1f} |",
        flush=True,
    )
    return rate


HEADER = (
    "| variant | tokens | wall s | CPU s | tokens/CPU s | tokens/wall s | vs first (CPU) | "
    "= generate (mean common prefix) | load |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("student", "teacher"), default="student")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's (all cores)")
    parser.add_argument("--data-root", default=str(DATA_ROOT))
    parser.add_argument("--before", default=None, help="also time the loop of this git commit")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--scale", default="", help="batch sizes to time, e.g. 16,64,128")
    parser.add_argument("--scale-prompts", type=int, default=128)
    parser.add_argument("--scale-new-tokens", type=int, default=64)
    parser.add_argument("--full", action="store_true", help="time every DollyEval row that fits")
    parser.add_argument("--full-limit", type=int, default=None)
    parser.add_argument("--full-new-tokens", type=int, default=256)
    parser.add_argument("--full-precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers", type=int, default=1, help="--full: decode processes (0: generate's auto)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load(args.model)
    before = load_before(args.before) if args.before else None
    suite = load_suite("dolly", args.data_root)
    kept, _ = filter_prompts(suite.examples, tokenizer, MAX_PROMPT_TOKENS)
    encoded_all = prompt_token_ids(tokenizer, [e.prompt for e in kept])
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; model: {args.model}; "
        f"DollyEval: {len(kept)} of {len(suite.examples)} rows fit in {MAX_PROMPT_TOKENS} "
        f"prompt tokens"
    )

    if not args.skip_compare:
        encoded, n = encoded_all[: args.prompts], args.new_tokens
        print(f"\n{len(encoded)} prompts, {n} new tokens, one batch of {len(encoded)}\n")
        print(HEADER)
        variants = [("transformers generate, defaults, float32", None, "float32", 0.0)]
        variants.append(("loop, greedy, float32", current, "float32", 0.0))
        if before is not None:
            variants.append((f"loop at {args.before}, greedy, bf16 autocast", before, "bf16", 0.0))
        variants.append(("loop, greedy, bf16", current, "bf16", 0.0))
        if before is not None:
            variants.append((f"loop at {args.before}, sampled T=1, bf16", before, "bf16", 1.0))
        variants.append(("loop, sampled T=1, bf16", current, "bf16", 1.0))
        reference, base = None, None
        for name, module, precision, temperature in variants:
            if module is None:
                run = lambda: hf_generate(model, tokenizer, encoded, n)  # noqa: E731
            else:
                run = lambda m=module, p=precision, t=temperature: loop(  # noqa: E731
                    m, model, tokenizer, encoded, n, p, t
                )
            rows, wall, cpu, load_avg = timed(run)
            rate = table_row(name, rows, wall, cpu, load_avg, base, reference or rows)
            if reference is None:
                reference, base = rows, rate

    if args.scale:
        encoded, n = encoded_all[: args.scale_prompts], args.scale_new_tokens
        print(f"\n{len(encoded)} prompts, {n} new tokens, sampled T=1, bf16, by batch size\n")
        print(HEADER)
        base = None
        runs = [(before, 16)] if before is not None else []
        runs += [(current, int(b)) for b in args.scale.split(",")]
        for module, size in runs:
            name = (
                f"loop at {args.before}, batches of {size}"
                if module is before
                else f"loop, {size} rows at a time, refilled"
            )
            run = lambda m=module, s=size: loop(  # noqa: E731
                m, model, tokenizer, encoded, n, "bf16", 1.0, batch_size=s
            )
            rows, wall, cpu, load_avg = timed(run)
            rate = table_row(name, rows, wall, cpu, load_avg, base, None)
            base = base or rate

    if args.full:
        order = sorted(range(len(encoded_all)), key=lambda i: -len(encoded_all[i]))
        chosen = order[: args.full_limit] if args.full_limit else order
        prompts = [kept[i].prompt for i in chosen]
        n = args.full_new_tokens

        def run():
            return current.generate(
                model,
                tokenizer,
                prompts,
                max_new_tokens=n,
                temperature=1.0,
                seed=10,
                batch_size=args.batch_size,
                precision=args.full_precision,
                workers=args.workers or None,
            )

        # Each forward makes one token per row it computes: rows forwarded = tokens. Forwards
        # in decode workers are not seen here: with workers, tokens are counted from the
        # answers (re-encoded, plus the EOS of each row that ended early).
        forwarded: list[int] = []
        hook = model.register_forward_pre_hook(
            lambda _m, _a, kw: forwarded.append(kw["input_ids"].shape[0]), with_kwargs=True
        )
        answers, wall, cpu, load_avg = timed(run)
        hook.remove()
        tokens = sum(forwarded)
        if args.workers != 1:
            lengths = [len(ids) for ids in prompt_token_ids(tokenizer, answers)]
            tokens = sum(min(n, length + 1) for length in lengths)
        print(
            f"\nDollyEval {len(prompts)} rows, {args.batch_size} rows at a time, "
            f"{args.workers or 'auto'} worker(s), {n} new tokens, "
            f"sampled T=1, seed 10, precision {args.full_precision}, model {args.model}: "
            f"{wall:.1f} s wall, {cpu:.1f} s CPU, {tokens} tokens ({tokens / len(prompts):.0f} "
            f"per row, {tokens / (n * len(prompts)):.0%} of the budget), {len(forwarded)} forwards, "
            f"{tokens / wall:.1f} tokens/wall s, {tokens / cpu:.1f} tokens/CPU s, "
            f"load {load_avg[0]:.1f}->{load_avg[1]:.1f}"
        )
        if len(prompts) < len(kept):
            print(f"extrapolated to all {len(kept)} rows: {wall * len(kept) / len(prompts):.0f} s")


if __name__ == "__main__":
    main()
