"""Epoch time of KD training from the offline top-k teacher cache against a live teacher.

Usage: python benchmarks/bench_cache_epoch.py [--rows 64] [--layers 6] [--k 64] [--repeats 2]
    [--batch-size 8] [--max-length 256] [--threads 0] [--precision bf16]

Steps, each in a fresh subprocess so that peak RSS is per run:

1. prepare: a ``--layers``-block student (``shrink_model`` of SmolLM2-135M-Instruct, blocks evenly
   spaced) saved to a temporary folder, so both runs start from the same weights and the cached
   run never loads the teacher;
2. build (one-off): ``build_teacher_cache`` of the teacher's top-k on the first ``--rows`` Dolly
   rows that fit ``--max-length`` tokens; its wall time and size on disk;
3. ``--repeats`` times, interleaved with the order alternating: one epoch of
   ``distillation.trainer.train`` (forward KL, alpha 0.3, tau 1, batch ``--batch-size``, AdamW)
   in ``--precision`` (``TrainConfig.mixed_precision``: bf16 autocast, the default, or float32)
   with a ``LiveTeacher`` (teacher loaded in that process) and with a ``CachedTeacher`` (the
   teacher never loaded). The epoch time runs from the first step's start to the end-of-epoch
   checkpoint (noted by wrappers around ``accumulate_gradients`` and ``save_checkpoint``); the whole
   ``train()`` call (set-up, checkpoint, final save: the same work for both) is shown beside it.
   Peak RSS is the whole process's (``VmHWM``), since holding the teacher or not is the point
   (weights load as mmapped safetensors, so they count once training touches them).

Both runs see the same batches in the same order: the CE of the first step must agree (checked).
Prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import run_worker, status_mib

from spectrumkd.data import load_examples, tokenize_examples
from spectrumkd.data.tokenize import TokenizedExample
from spectrumkd.models import DEFAULT_TEACHER, load_model, load_tokenizer, shrink_model


def _keep_layers(total: int, keep: int) -> list[int]:
    """``keep`` block indices evenly spaced over ``total``, first and last included."""
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def _examples(tokenizer: Any, rows: int, max_length: int) -> list[TokenizedExample]:
    data = tokenize_examples(
        load_examples("embedded:dolly", limit=2 * rows + 50), tokenizer, max_length=max_length
    )
    if len(data.examples) < rows:
        raise SystemExit(f"only {len(data.examples)} Dolly rows fit {max_length} tokens")
    return data.examples[:rows]


def _prepare(args: argparse.Namespace, work: Path) -> dict:
    teacher = load_model(DEFAULT_TEACHER)
    keep = _keep_layers(teacher.config.num_hidden_layers, args.layers)
    shrink_model(teacher, keep).save_pretrained(work / "student", safe_serialization=True)
    load_tokenizer(DEFAULT_TEACHER).save_pretrained(work / "student")
    return {"layers": keep}


def _build(args: argparse.Namespace, work: Path) -> dict:
    from spectrumkd.distillation.teacher_cache import build_teacher_cache

    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    teacher = load_model(DEFAULT_TEACHER)
    examples = _examples(tokenizer, args.rows, args.max_length)
    start, start_cpu = time.perf_counter(), time.process_time()
    folder = build_teacher_cache(
        teacher,
        examples,
        work / "cache",
        k=args.k,
        pad_token_id=tokenizer.pad_token_id,
        progress=False,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    size = sum(p.stat().st_size for p in folder.iterdir())
    (work / "cache_dir.txt").write_text(str(folder))
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "bytes": size,
        "tokens": sum(e.num_response_tokens for e in examples),
        "real_tokens": sum(len(e.input_ids) for e in examples),
        "peak_mib": status_mib("VmHWM"),
    }


def _epoch(engine: str, args: argparse.Namespace, work: Path, run: int) -> dict:
    from spectrumkd.distillation import trainer as kd_trainer
    from spectrumkd.distillation.signals import LiveTeacher
    from spectrumkd.distillation.teacher_cache import CachedTeacher

    tokenizer = load_tokenizer(work / "student")
    student = load_model(work / "student")
    examples = _examples(tokenizer, args.rows, args.max_length)
    if engine == "live":
        source = LiveTeacher(load_model(DEFAULT_TEACHER))
    else:  # the teacher is never loaded in this process
        source = CachedTeacher(
            Path((work / "cache_dir.txt").read_text()), student.config.vocab_size
        )
    config = kd_trainer.TrainConfig(
        mixed_precision=_mixed_precision(kd_trainer.TrainConfig, args.precision),
        objective="forward_kl",
        alpha=0.3,
        temperature=1.0,
        epochs=1,
        batch_size=args.batch_size,
        log_every=1,
        seed=0,
    )
    # The epoch proper runs from the first step's start to the end-of-epoch checkpoint; the
    # wrappers only note the time (train() looks both names up in its module at call time).
    marks: dict[str, float] = {}
    step, checkpoint = kd_trainer.accumulate_gradients, kd_trainer.save_checkpoint

    def first_step(*a: Any, **k: Any) -> Any:
        marks.setdefault("first_step", time.perf_counter())
        marks.setdefault("first_step_cpu", time.process_time())
        return step(*a, **k)

    def epoch_end(*a: Any, **k: Any) -> Any:
        marks.setdefault("epoch_end", time.perf_counter())
        marks.setdefault("epoch_end_cpu", time.process_time())
        return checkpoint(*a, **k)

    kd_trainer.accumulate_gradients, kd_trainer.save_checkpoint = first_step, epoch_end
    out = work / f"run-{engine}-{run}"
    start = time.perf_counter()
    try:
        kd_trainer.train(
            student, source, examples, config, out, pad_token_id=tokenizer.pad_token_id
        )
    finally:
        kd_trainer.accumulate_gradients, kd_trainer.save_checkpoint = step, checkpoint
    total = time.perf_counter() - start
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in metrics if "ce" in m and "step" in m]
    return {
        "seconds": marks["epoch_end"] - marks["first_step"],
        "cpu_seconds": marks["epoch_end_cpu"] - marks["first_step_cpu"],
        "train_seconds": total,
        "steps": len(metrics),
        "first_ce": metrics[0]["ce"],
        "kd_per_token": [m["kd"] for m in metrics],
        "peak_mib": status_mib("VmHWM"),
    }


def _mixed_precision(config_class: Any, precision: str) -> str:
    """``TrainConfig.mixed_precision``'s spelling of ``precision`` (``no`` before the precision
    setting took ``float32``)."""
    if precision == "bf16":
        return "bf16"
    for name in ("float32", "no"):
        try:
            config_class(mixed_precision=name)
        except ValueError:
            continue
        return name
    raise RuntimeError("TrainConfig takes neither float32 nor no for mixed_precision")


def _run(stage: str, args: argparse.Namespace, work: Path, run: int = 0) -> dict:
    names = ("rows", "layers", "k", "batch_size", "max_length", "threads", "precision")
    return run_worker(__file__, [stage, "--work", str(work), "--run", str(run)], args, names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6, help="student blocks (of the 30)")
    parser.add_argument("--k", type=int, default=64, help="cached top-k logits per position")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="epochs per teacher source")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per run (0: torch's default)"
    )
    parser.add_argument("--precision", choices=["bf16", "float32"], default="bf16")
    parser.add_argument("--worker", choices=["prepare", "build", "live", "cached"])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--run", type=int, default=0)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        stage = {"prepare": _prepare, "build": _build}.get(args.worker)
        if stage is not None:
            result = stage(args, args.work)
        else:
            result = _epoch(args.worker, args, args.work, args.run)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        layers = _run("prepare", args, work)["layers"]
        build = _run("build", args, work)
        runs: dict[str, list[dict]] = {"live": [], "cached": []}
        for repeat in range(args.repeats):
            # interleaved, order alternating, so a burst of load from other jobs hits both alike
            for engine in ("live", "cached") if repeat % 2 == 0 else ("cached", "live"):
                runs[engine].append(_run(engine, args, work, repeat))

    first = {r["first_ce"] for rs in runs.values() for r in rs}
    if max(first) - min(first) > 1e-4 * max(first):
        raise AssertionError(f"first-step CE differs between runs: {sorted(first)}")

    def median(engine: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[engine])

    def paired(key: str) -> list[float]:
        """live / cached per round (each pair ran back to back)."""
        return [
            live[key] / cached[key]
            for live, cached in zip(runs["live"], runs["cached"], strict=True)
        ]

    print(
        f"# {args.rows} Dolly rows <= {args.max_length} tokens ({build['real_tokens']:,} tokens, "
        f"{build['tokens']:,} response tokens), SmolLM2-135M-Instruct teacher -> {args.layers}-layer "
        f"student (blocks {layers}), top-{args.k} cache, forward KL, alpha 0.3, tau 1, batch "
        f"{args.batch_size}, {args.precision}, {runs['live'][0]['steps']} steps/epoch; median of "
        f"{args.repeats} interleaved rounds; torch {torch.__version__}, "
        f"{args.threads or torch.get_num_threads()} threads, {platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )
    print("| run | epoch CPU s | epoch wall s | whole train() wall s | process peak RSS MiB |")
    print("|---|---|---|---|---|")
    print(
        f"| cache build (one-off: teacher top-{args.k}, {build['bytes'] / 2**20:.1f} MiB on "
        f"disk) | {build['cpu_seconds']:.1f} | {build['seconds']:.1f} | - "
        f"| {build['peak_mib']:,.0f} |"
    )
    for engine, label in (("live", "epoch, live teacher"), ("cached", "epoch, cached teacher")):
        print(
            f"| {label} | {median(engine, 'cpu_seconds'):.1f} | {median(engine, 'seconds'):.1f} "
            f"| {median(engine, 'train_seconds'):.1f} | {median(engine, 'peak_mib'):,.0f} |"
        )
    cpu, wall = paired("cpu_seconds"), paired("seconds")
    saved = statistics.median(
        live["cpu_seconds"] - cached["cpu_seconds"]
        for live, cached in zip(runs["live"], runs["cached"], strict=True)
    )
    payback = (
        f"the build's CPU time is repaid after {build['cpu_seconds'] / saved:.1f} epochs"
        if saved > 0
        else "no CPU time saved per epoch"
    )
    print(
        f"\nlive/cached epoch time, paired median: {statistics.median(cpu):.2f}x in CPU time "
        f"(rounds: {', '.join(f'{r:.2f}' for r in cpu)}), {statistics.median(wall):.2f}x in wall "
        f"time (rounds: {', '.join(f'{r:.2f}' for r in wall)}); {payback}"
    )
    kd_live = statistics.mean(runs["live"][0]["kd_per_token"])
    kd_cached = statistics.mean(runs["cached"][0]["kd_per_token"])
    print(f"mean KD per token over the epoch: live {kd_live:.4f}, cached {kd_cached:.4f}")


if __name__ == "__main__":
    main()
