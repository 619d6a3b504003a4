"""Peak memory of the KD loss (forward + backward, with CE): the chunked engine against full logits.

Usage: python benchmarks/bench_loss_memory.py [--vocabs 49152 152064] [--lengths 512 2048]
    [--chunk-sizes 1024 256] [--repeats 2] [--malloc pinned|default] [--threads 0]

For each (vocabulary, length) it runs, each in a fresh subprocess and interleaved:

- reference: ``hidden @ W.T`` logits of both models, ``objectives.kd_loss`` + cross-entropy,
  ``combine``, backward (what ``trainer.step_losses`` does after the model's forward);
- chunked: ``chunked.chunked_kd_loss`` on the hidden states and head weights, ``combine``,
  backward, at each ``--chunk-sizes``.

Memory is the growth of the process's peak resident set during the loss: the inputs (hidden
states, both heads) are allocated and a small warm-up runs first, then the kernel's high-water mark
is reset (``/proc/self/clear_refs``) and read back (``VmHWM``) after backward. By default the
workers pin glibc's mmap threshold (``--malloc pinned``), so freed tensors leave the resident set
at once and the peak is that of live tensors; ``--malloc default`` measures glibc as it comes,
whose heap keeps freed buffers of the chunk loop resident. On CUDA it is
``torch.cuda.max_memory_allocated`` over the same span. Both numbers include the head weight's
own gradient (V x H_s float32), which every path has to produce. Every engine must give the same
loss (relative 1e-4) and gradients (relative 1e-3 in norm) as the reference, or the script fails.
Prints a Markdown table to paste into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import reset_peak, status_mib

from spectrumkd.batching import IGNORE_INDEX
from spectrumkd.distillation.chunked import chunked_kd_loss
from spectrumkd.distillation.objectives import combine, kd_loss

# Realistic (student, teacher) hidden sizes for each vocabulary: SmolLM2-135M / SmolLM2-360M on
# the 49,152 vocabulary, Qwen2.5-0.5B / Qwen2.5-1.5B widths on Qwen2.5's padded 152,064 rows.
HIDDEN = {49152: (576, 960), 152064: (896, 1536)}
ALPHA, TEMPERATURE = 0.3, 1.0  # the trainer's default alpha; tau 1


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return status_mib("VmHWM")


def _inputs(vocab: int, length: int, prompt_share: float, device: torch.device) -> dict[str, Any]:
    """Seeded hidden states, heads and labels: identical in every subprocess."""
    hidden_s, hidden_t = HIDDEN.get(vocab, (896, 1536))
    gen = torch.Generator().manual_seed(0)
    # Heads scaled so logits have a standard deviation of about 2, like a trained LM head.
    student_hidden = torch.randn(length, hidden_s, generator=gen)
    student_head = torch.randn(vocab, hidden_s, generator=gen) * (2.0 / hidden_s**0.5)
    teacher_hidden = torch.randn(length, hidden_t, generator=gen)
    teacher_head = torch.randn(vocab, hidden_t, generator=gen) * (2.0 / hidden_t**0.5)
    labels = torch.randint(0, vocab, (length,), generator=gen)
    labels[: int(prompt_share * length)] = IGNORE_INDEX
    return {
        "student_hidden": student_hidden.to(device).requires_grad_(),
        "student_head": student_head.to(device).requires_grad_(),
        "teacher_hidden": teacher_hidden.to(device),
        "teacher_head": teacher_head.to(device),
        "labels": labels.to(device),
    }


def _loss(engine: str, chunk_size: int, x: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """(loss, kd_sum, ce_sum) of one engine; the caller runs backward."""
    if engine == "reference":
        student_logits = x["student_hidden"] @ x["student_head"].T
        with torch.no_grad():  # the teacher never needs a graph
            teacher_logits = x["teacher_hidden"] @ x["teacher_head"].T
        kd_sum, num = kd_loss(student_logits, teacher_logits, x["labels"], "forward_kl")
        ce_sum = F.cross_entropy(
            student_logits.float(), x["labels"], ignore_index=IGNORE_INDEX, reduction="sum"
        )
    else:
        kd_sum, ce_sum, num = chunked_kd_loss(
            x["student_hidden"],
            x["student_head"],
            x["teacher_hidden"],
            x["teacher_head"],
            x["labels"],
            "forward_kl",
            TEMPERATURE,
            chunk_size=chunk_size,
        )
    return combine(ce_sum, kd_sum, num, ALPHA, TEMPERATURE), kd_sum, ce_sum


def worker(engine: str, vocab: int, length: int, chunk_size: int, prompt_share: float) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Warm-up on a tiny case: thread pools and kernel workspaces are not the loss's memory.
    for name in ("reference", "chunked"):
        small = _inputs(64, 8, 0.0, device)
        _loss(name, 4, small)[0].backward()
    x = _inputs(vocab, length, prompt_share, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        reset_peak()
        base = status_mib("VmRSS")
    start = time.process_time()  # CPU time: far less sensitive to other jobs than wall time
    loss, kd_sum, ce_sum = _loss(engine, chunk_size, x)
    forward_peak = _peak(device)  # the high-water mark is monotonic: forward part, then the total
    loss.backward()
    peak = _peak(device)
    seconds = time.process_time() - start
    print(
        json.dumps(
            {
                "peak_mib": peak - base,
                "forward_peak_mib": forward_peak - base,
                "seconds": seconds,
                "loss": loss.item(),
                "kd_sum": kd_sum.item(),
                "ce_sum": ce_sum.item(),
                "grad_hidden_norm": x["student_hidden"].grad.norm().item(),
                "grad_head_norm": x["student_head"].grad.norm().item(),
                "device": device.type,
            }
        )
    )


def _run(
    engine: str,
    vocab: int,
    length: int,
    chunk_size: int,
    prompt_share: float,
    malloc: str,
    threads: int,
) -> dict:
    env = dict(os.environ)
    if malloc == "pinned":
        # A fixed mmap threshold turns off glibc's dynamic one, so every freed tensor above 64 KiB
        # goes back to the OS at once and the RSS peak is the peak of live tensors (as
        # max_memory_allocated is on CUDA). With the default, freed buffers under 32 MiB stay
        # on the heap and are counted.
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    command = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--vocabs",
        str(vocab),
        "--lengths",
        str(length),
        "--chunk-sizes",
        str(chunk_size),
        "--prompt-share",
        str(prompt_share),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} V={vocab} N={length} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check(name: str, got: dict, ref: dict) -> float:
    """Largest relative difference of loss, KD and CE sums; fails if any part or a gradient norm
    disagrees beyond tolerance."""
    worst = 0.0
    for key, tol in (
        ("loss", 1e-4),
        ("kd_sum", 1e-4),
        ("ce_sum", 1e-4),
        ("grad_hidden_norm", 1e-3),
        ("grad_head_norm", 1e-3),
    ):
        rel = abs(got[key] - ref[key]) / max(abs(ref[key]), 1e-12)
        if rel > tol:
            raise AssertionError(
                f"{name}: {key} {got[key]!r} vs reference {ref[key]!r} ({rel:.1e})"
            )
        if key in ("loss", "kd_sum", "ce_sum"):
            worst = max(worst, rel)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", type=int, nargs="+", default=[49152, 152064])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1024, 256])
    parser.add_argument(
        "--prompt-share",
        type=float,
        default=0.0,
        help="share of positions labelled -100 (0: every position is a response token)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per engine")
    parser.add_argument(
        "--malloc",
        choices=["pinned", "default"],
        default="pinned",
        help="pinned: MALLOC_MMAP_THRESHOLD_=65536 in the workers, so RSS follows live tensors; "
        "default: glibc as it comes (freed buffers may stay resident)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per worker (0: torch's default)"
    )
    parser.add_argument("--worker", choices=["reference", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        worker(args.worker, args.vocabs[0], args.lengths[0], args.chunk_sizes[0], args.prompt_share)
        return

    engines = [("reference", 0)] + [("chunked", c) for c in args.chunk_sizes]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for vocab in args.vocabs:
        for length in args.lengths:
            results: dict[tuple[str, int], list[dict]] = {e: [] for e in engines}
            for repeat in range(args.repeats):
                # interleaved, order alternating, so a burst of load hits both sides alike
                order = engines if repeat % 2 == 0 else engines[::-1]
                for engine, chunk in order:
                    results[(engine, chunk)].append(
                        _run(
                            engine,
                            vocab,
                            length,
                            chunk,
                            args.prompt_share,
                            args.malloc,
                            args.threads,
                        )
                    )
            reference = results[("reference", 0)][0]
            worst = max(
                _check(f"chunked {chunk} V={vocab} N={length}", run, reference)
                for (engine, chunk), runs in results.items()
                if engine == "chunked"
                for run in runs
            )
            rows.append((vocab, length, results, worst))

    print(
        f"# forward KL + CE (alpha {ALPHA}, tau {TEMPERATURE}), fp32, batch 1, prompt share "
        f"{args.prompt_share}, {device}, {args.threads or torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, {platform.machine()}, {time.strftime('%Y-%m-%d')}; peak = "
        f"{'max_memory_allocated' if device == 'cuda' else 'VmHWM'} growth over the inputs "
        f"(glibc malloc {args.malloc}), "
        f"median of {args.repeats} fresh processes each"
    )
    header = "| vocab | tokens | H student / teacher | full logits MiB |"
    for c in args.chunk_sizes:
        header += f" chunked {c} MiB | chunked {c} / full |"
    header += f" CPU time chunked {args.chunk_sizes[0]} / full | max rel diff (loss, KD, CE) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for vocab, length, results, worst in rows:
        ref_mib = _median(results[("reference", 0)], "peak_mib")
        hidden = "/".join(map(str, HIDDEN.get(vocab, (896, 1536))))
        row = f"| {vocab:,} | {length:,} | {hidden} | {ref_mib:,.0f} |"
        for c in args.chunk_sizes:
            mib = _median(results[("chunked", c)], "peak_mib")
            row += f" {mib:,.0f} | {mib / ref_mib:.2f} |"
        # time ratio of the first chunk size, paired run by run (the same repeat)
        ratios = [
            c["seconds"] / r["seconds"]
            for c, r in zip(
                results[("chunked", args.chunk_sizes[0])], results[("reference", 0)], strict=True
            )
        ]
        print(f"{row} {statistics.median(ratios):.2f} | {worst:.1e} |")

    # Where the memory goes: the peak up to the end of forward, then the total; beside the sizes
    # of one [V, H_s] float32 tensor (a head gradient) and one [N, V] float32 tensor (logits).
    print()
    header = "| vocab | tokens | [V, H_s] MiB | [N, V] MiB | full logits fwd / total |"
    header += "".join(f" chunked {c} fwd / total |" for c in args.chunk_sizes)
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for vocab, length, results, _ in rows:
        v_h = vocab * HIDDEN.get(vocab, (896, 1536))[0] * 4 / 2**20
        row = f"| {vocab:,} | {length:,} | {v_h:,.0f} | {length * vocab * 4 / 2**20:,.0f} |"
        for engine in engines:
            runs = results[engine]
            row += f" {_median(runs, 'forward_peak_mib'):,.0f} / {_median(runs, 'peak_mib'):,.0f} |"
        print(row)


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


if __name__ == "__main__":
    main()
