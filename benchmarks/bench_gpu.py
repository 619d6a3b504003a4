"""GPU measurement of the speed targets: KD step, scoring and generation, bf16 against float32.

Usage: python benchmarks/bench_gpu.py [--steps 10] [--batch-size 16] [--max-length 512]
    [--layers 6] [--rows 256] [--prompts 64] [--new-tokens 128] [--device cuda]
       python benchmarks/bench_gpu.py --tiny   # the same code on tiny random models, on the CPU

Runs as is on a machine with a CUDA GPU (estimated at 2-4 minutes on one recent GPU at the
defaults, not yet run on one; the sizes keep it well under 10) and prints Markdown tables:

1. KD step (the trainer's ``step_losses`` under the toolkit's autocast, then backward, gradient
   clipping at 1.0 and an AdamW step: what ``train()`` does per optimiser step, without its data
   loader and logging): SmolLM2-135M-Instruct teacher -> ``--layers``-block ``shrink_model``
   student, off-policy forward KL at tau 1, alpha 0, ``--batch-size`` Dolly rows of at most
   ``--max-length`` tokens; float32 and bf16, full logits and the chunked engine, with sdpa
   attention (flash kernels where torch picks them) and, for comparison, eager attention in bf16.
   Real (non-padding) tokens per second, peak GPU memory per variant
   (``torch.cuda.max_memory_allocated``), and the first step's loss against float32 full logits.
2. Scoring throughput: ``score_examples`` of the student on ``--rows`` Dolly rows, float32 and
   bf16 (``ScoringSettings.precision``), real tokens per second; the difficulties must agree.
3. Generation: ``spectrumkd.models.generation.generate`` against ``transformers``'
   ``model.generate`` (greedy, left-padded batches of 16, ``--new-tokens`` new tokens at most) on
   ``--prompts`` Dolly prompts, in float32 and bf16; new tokens per second (ours re-tokenises its
   decoded continuations to count them).

Each variant is timed after one untimed warm-up (kernel selection, allocator), synchronised.
``--tiny`` builds a 2-block teacher and a 1-block student from a Llama config in code with the
real tokenizer's vocabulary and shrinks every size, so that a test can run the whole script on
a CPU in seconds; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from spectrumkd.batching import IGNORE_INDEX
from spectrumkd.data import collate, load_examples, tokenize_examples
from spectrumkd.data.tokenize import TokenizedExample
from spectrumkd.distillation.objectives import combine
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.steps import step_losses
from spectrumkd.models import DEFAULT_TEACHER, load_model, load_tokenizer, shrink_model
from spectrumkd.models.precision import autocast, resolve_precision

# (precision, loss_impl, attention) of each KD-step variant
KD_VARIANTS = (
    ("float32", "full", "sdpa"),
    ("bf16", "full", "sdpa"),
    ("float32", "chunked", "sdpa"),
    ("bf16", "chunked", "sdpa"),
    ("bf16", "full", "eager"),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _timed(device: torch.device, work: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    result = work()
    _sync(device)
    return time.perf_counter() - start, result


def _keep_layers(total: int, keep: int) -> list[int]:
    """``keep`` block indices evenly spaced over ``total``, first and last included."""
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def _set_attention(model: torch.nn.Module, name: str) -> None:
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:
        raise RuntimeError(f"{type(model).__name__} did not take attention {name!r}")


def _tiny_llama(vocab_size: int, layers: int, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def _models(args: argparse.Namespace, tokenizer: Any, device: torch.device):
    """(teacher, student) in float32 on ``device``."""
    if args.tiny:
        teacher = _tiny_llama(len(tokenizer), layers=2, seed=0)
        student = _tiny_llama(len(tokenizer), layers=1, seed=1)
    else:
        teacher = load_model(DEFAULT_TEACHER)
        keep = _keep_layers(teacher.config.num_hidden_layers, args.layers)
        student = shrink_model(teacher, keep)
    return teacher.to(device), student.to(device)


def _examples(tokenizer: Any, rows: int, max_length: int) -> list[TokenizedExample]:
    data = tokenize_examples(
        load_examples("embedded:dolly", limit=4 * rows + 100), tokenizer, max_length=max_length
    )
    if len(data.examples) < rows:
        raise SystemExit(f"only {len(data.examples)} Dolly rows fit {max_length} tokens")
    return data.examples[:rows]


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def kd_steps(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    batches: Sequence[dict],
    precision: str,
    loss_impl: str,
    device: torch.device,
    chunk_size: int = 1024,
) -> dict:
    """One untimed step, then one timed optimiser step per further batch; a fresh copy of
    ``student`` and a fresh AdamW, so every variant starts from the same weights."""
    student = copy.deepcopy(student).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.0)
    source = LiveTeacher(teacher)
    losses: list[float] = []

    def step(batch: dict) -> None:
        with autocast(precision, device):
            ce_sum, kd_sum = step_losses(
                student,
                source,
                batch,
                "forward_kl",
                1.0,
                chunk_size=chunk_size if loss_impl == "chunked" else None,
                alpha=0.0,  # the CE is only logged, as train() passes it
            )
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss = combine(ce_sum, kd_sum, tokens, 0.0, 1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(kd_sum.item() / max(tokens, 1))

    _reset_memory(device)
    step(batches[0])
    seconds, _ = _timed(device, lambda: [step(b) for b in batches[1:]])
    real = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    return {
        "tokens_per_s": real / seconds,
        "seconds_per_step": seconds / max(len(batches) - 1, 1),
        "peak_mib": _peak_mib(device),
        "first_loss": losses[0],
    }


def scoring(
    student: torch.nn.Module, examples: Sequence[TokenizedExample], precision: str, pad: int
) -> dict:
    from spectrumkd.scoring import ScoringSettings, score_examples

    device = next(student.parameters()).device
    settings = ScoringSettings(precision=precision)
    score_examples(student, examples[:8], pad_token_id=pad, settings=settings, progress=False)
    seconds, table = _timed(
        device,
        lambda: score_examples(
            student, examples, pad_token_id=pad, settings=settings, progress=False
        ),
    )
    return {
        "tokens_per_s": sum(len(e.input_ids) for e in examples) / seconds,
        "means": [float(x) for x in table.loss_mean],
    }


def generation(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[str],
    precision: str,
    new_tokens: int,
    batch_size: int = 16,
) -> dict:
    """New tokens per second of our ``generate`` and of ``transformers``' on the same prompts."""
    from spectrumkd.models.generation import generate

    device = next(model.parameters()).device
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, precision=precision)
    seconds, texts = _timed(
        device,
        lambda: generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=new_tokens,
            batch_size=batch_size,
            precision=precision,
        ),
    )
    ours = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def hf() -> int:
        produced = 0
        for start in range(0, len(prompts), batch_size):
            inputs = tokenizer(
                prompts[start : start + batch_size], return_tensors="pt", padding=True
            )
            inputs = _to(dict(inputs), device)
            with torch.inference_mode(), autocast(precision, device):
                out = model.generate(
                    **inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad
                )
            new = out[:, inputs["input_ids"].shape[1] :]
            produced += int((new != pad).sum())
        return produced

    try:
        hf_seconds, theirs = _timed(device, hf)
    finally:
        tokenizer.padding_side = side
    return {
        "ours": ours / seconds,
        "hf": theirs / hf_seconds,
        "ours_tokens": ours,
        "hf_tokens": theirs,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models (CPU smoke run)")
    parser.add_argument("--device", default=None, help="cuda (default where available) or cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed KD steps per variant")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6, help="student blocks (of the 30)")
    parser.add_argument("--rows", type=int, default=256, help="rows scored")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.batch_size, args.max_length = 1, 2, 96
        args.rows, args.prompts, args.new_tokens = 4, 2, 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("bench_gpu: no CUDA GPU here; pass --tiny for the CPU smoke run")

    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    pad = tokenizer.pad_token_id
    teacher, student = _models(args, tokenizer, device)
    needed = (args.steps + 1) * args.batch_size
    examples = _examples(tokenizer, max(needed, args.rows, args.prompts), args.max_length)
    batches = [
        _to(collate(examples[i : i + args.batch_size], pad), device)
        for i in range(0, needed, args.batch_size)
    ]
    precisions = ["float32", resolve_precision("bf16", device)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"# {name or platform.machine()}, torch {torch.__version__}, "
        f"{'tiny random models' if args.tiny else 'SmolLM2-135M-Instruct teacher'}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}\n"
    )

    print(
        f"## KD step: batch {args.batch_size}, rows <= {args.max_length} tokens, "
        f"{args.steps} timed steps\n"
    )
    print("| precision | loss | attention | real tokens/s | s/step | vs float32 full | peak MiB "
          "| first-step loss rel. diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for precision, loss_impl, attention in KD_VARIANTS:
        _set_attention(student, attention)
        _set_attention(teacher, attention)
        results[precision, loss_impl, attention] = kd_steps(
            student, teacher, batches, precision, loss_impl, device
        )
    _set_attention(student, "sdpa")
    _set_attention(teacher, "sdpa")
    base = results["float32", "full", "sdpa"]
    for (precision, loss_impl, attention), r in results.items():
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
        diff = abs(r["first_loss"] - base["first_loss"]) / abs(base["first_loss"])
        print(
            f"| {precision} | {loss_impl} | {attention} | {r['tokens_per_s']:,.0f} "
            f"| {r['seconds_per_step']:.3f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x "
            f"| {peak} | {diff:.1e} |"
        )

    print(f"\n## Scoring: {args.rows} rows, score_examples\n")
    print("| precision | real tokens/s | vs float32 | max abs diff of mean CE |")
    print("|---|---|---|---|")
    scored = {p: scoring(student, examples[: args.rows], p, pad) for p in precisions}
    for precision, r in scored.items():
        diff = max(abs(a - b) for a, b in zip(r["means"], scored["float32"]["means"], strict=True))
        ratio = r["tokens_per_s"] / scored["float32"]["tokens_per_s"]
        print(f"| {precision} | {r['tokens_per_s']:,.0f} | {ratio:.2f}x | {diff:.1e} |")

    prompts = [
        tokenizer.decode(
            [t for t, label in zip(e.input_ids, e.labels, strict=True) if label == IGNORE_INDEX]
        )
        for e in examples[: args.prompts]
    ]
    print(
        f"\n## Generation: {args.prompts} prompts, greedy, <= {args.new_tokens} new tokens, "
        "batches of 16\n"
    )
    print("| precision | spectrumkd generate tokens/s | transformers generate tokens/s | ratio |")
    print("|---|---|---|---|")
    for precision in precisions:
        r = generation(student, tokenizer, prompts, precision, args.new_tokens)
        ratio = r["ours"] / r["hf"] if r["hf"] else float("nan")
        print(f"| {precision} | {r['ours']:,.0f} | {r['hf']:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
