"""One KD training step: spectrumkd's trainer (float32 and bf16) against TRL's GKDTrainer.

Usage: python benchmarks/bench_kd_step.py [--layers 6] [--batch-size 8] [--warmup 1] [--steps 3]
    [--repeats 2] [--max-length 256] [--k 64] [--threads 1] [--engines trl,fp32,...]
    [--profile-engine bf16] [--no-profile]

Each trainer runs in a fresh subprocess, interleaved round by round, order alternating (engines:
``ENGINES``; by default TRL's ``GKDTrainer`` at its defaults and spectrumkd's ``train()`` in float32
with full logits and in bf16 with full logits, with the chunked engine and from the top-``--k``
teacher cache). Identical settings:

- teacher: SmolLM2-135M-Instruct (the embedded GGUF), float32 weights; student: ``shrink_model``
  of it, ``--layers`` blocks evenly spaced (first and last kept); the same initial weights.
- data: the first embedded Dolly rows that fit ``--max-length`` tokens, prompt-masked labels,
  served in the same order to all (the order our ``CurriculumSampler`` gives epoch 1 with seed 0;
  TRL reads that list sequentially), in batches of ``--batch-size``, right-padded.
- objective: off-policy forward KL at temperature 1, no CE term. TRL: ``GKDConfig(lmbda=0,
  beta=0, seq_kd=False)`` (its ``generalized_jsd_loss`` at beta 0 is KL(p || q) per response
  token); spectrumkd: ``TrainConfig(objective="forward_kl", alpha=0.0, temperature=1.0)``.
- optimiser: torch AdamW, lr 5e-5, no weight decay, linear decay, no warm-up, clipping at 1.0,
  no gradient accumulation, activation checkpointing off on both sides (TRL's config turns it on
  by default; that would only slow TRL down).
- precision: TRL at its default, which with the installed TRL is ``bf16=True`` (``BaseConfig``:
  ``bf16 = not fp16`` when unset), i.e. accelerate's bf16 autocast on this CPU; ours with
  ``TrainConfig(mixed_precision=...)`` bf16 or no (float32). Weights and optimiser state stay
  float32 everywhere.
- the cached runs read a top-``--k`` teacher cache (format 2: top-k logits and the tail's mass)
  built once per benchmark run in its own process (not timed); their processes never hold the
  teacher's weights. Their loss differs from the live teacher's by the cache's approximation.

Each side's ``train()`` runs unmodified; a thin wrapper notes the time and peak RSS when each step
begins (``accumulate_gradients`` for ours, ``training_step`` for TRL) and stops the run when step
``warmup + steps`` begins, so the timed steps are the intervals between step starts (forward,
backward, clipping, optimiser, scheduler, next batch). Speed is real (non-padding) tokens per
second of process CPU time (the figure to trust on a shared machine; run with ``--threads 1``)
and of wall time. Peak memory is the growth of VmHWM from just before the trainer is built
(models and data loaded) to the last step's start; it includes the teacher's weights becoming
resident (mmapped safetensors until a forward pass reads them). The first step's loss of every
live-teacher run must agree with the float32 run's (relative 1e-3 for float32, 3e-2 for bf16).

Then, unless ``--no-profile``: a ``torch.profiler`` table (top ops by self CPU time) of one step
of ``--profile-engine`` in its own process, and the achieved FLOP/s of that engine's timed steps
against the machine's bf16 matmul peak measured here (a 4,096-square bf16 matmul on one thread).
Counted FLOPs: 6 x student matmul parameters x tokens (forward + backward) + 2 x teacher matmul
parameters x tokens (forward), where matmul parameters are the Linear weights of the blocks and
the LM head (embedding lookups and attention's score/value products are not counted) and tokens
are the padded positions the models run over (the chunked engine projects only response
positions through the heads, so for it this overcounts). Prints Markdown for
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    matmul_params,
    matmul_peak_flops,
    profile_table,
    reset_peak,
    run_worker,
    status_mib,
)
from transformers import PreTrainedModel

from spectrumkd.batching import IGNORE_INDEX
from spectrumkd.data import DataCollator, load_examples, tokenize_examples
from spectrumkd.data.tokenize import TokenizedExample
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.models import DEFAULT_TEACHER, load_model, load_tokenizer, shrink_model

LEARNING_RATE = 5e-5
# name -> (trainer, precision, loss_impl, teacher source); "trl" runs at TRL's defaults (bf16
# autocast wherever bf16 is supported: BaseConfig sets bf16 = not fp16), "trl-fp32" as before.
ENGINES: dict[str, tuple[str, str, str, str]] = {
    "trl": ("trl", "bf16", "full", "live"),
    "fp32": ("ours", "float32", "full", "live"),
    "bf16": ("ours", "bf16", "full", "live"),
    "bf16-chunked": ("ours", "bf16", "chunked", "live"),
    "bf16-cached": ("ours", "bf16", "full", "cache"),
    # the cache through the chunked engine (chunked_topk_kd_loss): loss_impl auto's choice since
    # it reads a cache
    "bf16-cached-chunked": ("ours", "bf16", "chunked", "cache"),
    "trl-fp32": ("trl", "float32", "full", "live"),
    "fp32-chunked": ("ours", "float32", "chunked", "live"),
    "fp32-cached": ("ours", "float32", "full", "cache"),
    # trials: the trainer's AdamW made fused=True (a one-argument change in trainer.py that
    # this benchmark applies by patching torch.optim.AdamW in its own process)
    "bf16+fused-adamw": ("ours", "bf16", "full", "live"),
    "bf16-cached+fused-adamw": ("ours", "bf16", "full", "cache"),
    # the chunked engine at its chunk size before it became automatic (160 tokens here)
    "bf16-chunked-1024": ("ours", "bf16", "chunked", "live"),
}
CHUNK_SIZES = {"bf16-chunked-1024": 1024}  # else 0: TrainConfig's automatic size
DEFAULT_ENGINES = ("trl", "fp32", "bf16", "bf16-chunked", "bf16-cached")
LABELS = {
    "trl": "TRL `GKDTrainer`, its defaults (bf16 autocast)",
    "trl-fp32": "TRL `GKDTrainer`, `bf16=False`",
    "fp32": "spectrumkd `train()`, float32, full logits",
    "bf16": "spectrumkd `train()`, bf16, full logits",
    "bf16-chunked": "spectrumkd `train()`, bf16, chunked engine",
    "bf16-cached": "spectrumkd `train()`, bf16, teacher cache, full logits",
    "bf16-cached-chunked": "spectrumkd `train()`, bf16, teacher cache, chunked engine",
    "fp32-chunked": "spectrumkd `train()`, float32, chunked engine",
    "fp32-cached": "spectrumkd `train()`, float32, teacher cache",
    "bf16+fused-adamw": "spectrumkd `train()`, bf16, full logits, fused AdamW (trial)",
    "bf16-chunked-1024": "spectrumkd `train()`, bf16, chunked engine, 1,024-token chunks",
    "bf16-cached+fused-adamw": "spectrumkd `train()`, bf16, teacher cache, fused AdamW (trial)",
}


class _FusedAdamW(torch.optim.AdamW):
    """torch's AdamW with ``fused=True``: one kernel per parameter group instead of a loop of
    element-wise ops per tensor (on the CPU too, torch >= 2.4)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "fused": True})


class _Done(Exception):
    """Raised from inside a trainer once the timed steps are over."""


def _keep_layers(total: int, keep: int) -> list[int]:
    """``keep`` block indices evenly spaced over ``total``, first and last included."""
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


class _Recorder:
    """Time, peak RSS and batch size at the start of every step; stops the run after the last.

    With ``profile_step`` set, a ``torch.profiler`` records that step (start to next start)."""

    def __init__(self, stop_at: int, profile_step: int | None = None) -> None:
        self.stop_at = stop_at
        self.starts: list[float] = []
        self.cpu: list[float] = []  # process CPU seconds: far less sensitive to other jobs
        self.peaks: list[float] = []
        self.tokens: list[tuple[int, int, int]] = []  # (real, response, padded) tokens per step
        self.losses: list[float] = []  # KD per response token, before the step's update
        self.profile_step = profile_step
        self.profiler: torch.profiler.profile | None = None

    def step_begins(self, batch: dict) -> None:
        step = len(self.starts)
        if self.profiler is not None:
            self.profiler.stop()
        self.starts.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.peaks.append(status_mib("VmHWM"))
        if len(self.starts) > self.stop_at:
            raise _Done
        response = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        self.tokens.append(
            (int(batch["attention_mask"].sum()), response, batch["attention_mask"].numel())
        )
        if step == self.profile_step:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.start()


def _ordered_examples(
    examples: list[TokenizedExample], config: TrainConfig
) -> list[TokenizedExample]:
    """The examples in the order our trainer's sampler serves epoch 1 (TRL reads them in order)."""
    from spectrumkd.distillation.trainer import baseline_plan
    from spectrumkd.integrations import CurriculumSampler

    ids = [e.id for e in examples]
    sampler = CurriculumSampler(ids, baseline_plan(ids, config), seed=config.seed)
    sampler.set_epoch(0)
    return [examples[i] for i in sampler]


def _mixed_precision(precision: str) -> str:
    """``TrainConfig.mixed_precision``'s spelling of ``precision`` (``no`` before the precision
    setting took ``float32``)."""
    if precision == "bf16":
        return "bf16"
    for name in ("float32", "no"):
        try:
            TrainConfig(mixed_precision=name)
        except ValueError:
            continue
        return name
    raise RuntimeError("TrainConfig takes neither float32 nor no for mixed_precision")


def _our_config(
    args: argparse.Namespace,
    precision: str = "float32",
    loss_impl: str = "full",
    chunk_size: int = 0,
):
    return TrainConfig(
        loss_impl=loss_impl,
        chunk_size=chunk_size,
        objective="forward_kl",
        alpha=0.0,
        temperature=1.0,
        epochs=1,
        batch_size=args.batch_size,
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        lr_schedule="linear",
        max_grad_norm=1.0,
        mixed_precision=_mixed_precision(precision),
        log_every=10**9,
        seed=0,
    )


def _run_ours(
    student: PreTrainedModel,
    source: Any,
    examples: list[TokenizedExample],
    pad_id: int,
    config: TrainConfig,
    recorder: _Recorder,
) -> None:
    from spectrumkd.distillation import trainer as kd_trainer

    original = kd_trainer.accumulate_gradients

    def timed(
        accelerator: Any, student: Any, teacher: Any, group: list[dict], *rest: Any, **options: Any
    ) -> tuple[float, float, int]:
        recorder.step_begins(group[0])
        ce_total, kd_total, local = original(accelerator, student, teacher, group, *rest, **options)
        recorder.losses.append(kd_total / max(local, 1))
        return ce_total, kd_total, local

    # train() looks the function up in its module at call time: the wrapper only observes.
    kd_trainer.accumulate_gradients = timed
    try:
        with tempfile.TemporaryDirectory() as out:
            kd_trainer.train(student, source, examples, config, out, pad_token_id=pad_id)
    except _Done:
        pass
    finally:
        kd_trainer.accumulate_gradients = original


def _run_trl(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: Any,
    examples: list[TokenizedExample],
    args: argparse.Namespace,
    recorder: _Recorder,
    precision: str,
) -> None:
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class TimedGKDTrainer(GKDTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            recorder.step_begins(inputs)
            loss = super().training_step(model, inputs, num_items_in_batch)
            recorder.losses.append(float(loss))
            return loss

    dataset = Dataset.from_list(
        [{"input_ids": list(e.input_ids), "labels": list(e.labels)} for e in examples]
    )
    # TRL's own default for bf16 (None: BaseConfig makes it ``not fp16``), or explicitly off.
    precision_args = {} if precision == "bf16" else {"bf16": False, "fp16": False}
    with tempfile.TemporaryDirectory() as out:
        config = GKDConfig(
            output_dir=out,
            lmbda=0.0,  # never generate: off-policy, on the dataset's responses
            beta=0.0,  # forward KL (generalized_jsd_loss's beta == 0 branch)
            seq_kd=False,
            temperature=1.0,
            per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1,
            num_train_epochs=1,
            learning_rate=LEARNING_RATE,
            weight_decay=0.0,
            lr_scheduler_type="linear",
            warmup_steps=0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            activation_checkpointing=False,  # TRL's base config turns it on; ours has none
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
            logging_steps=10**9,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=0,
            **precision_args,
        )
        if config.bf16 != (precision == "bf16"):
            raise RuntimeError(
                f"TRL's bf16 is {config.bf16}; the {precision} run expects otherwise"
            )
        trainer = TimedGKDTrainer(
            model=student,
            teacher_model=teacher,
            args=config,
            data_collator=DataCollator(tokenizer.pad_token_id),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        if trainer.args.activation_checkpointing or student.is_gradient_checkpointing:
            raise RuntimeError("TRL enabled activation checkpointing; the comparison needs it off")
        with contextlib.suppress(_Done):
            trainer.train()


def _data(tokenizer: Any, args: argparse.Namespace) -> list[TokenizedExample]:
    needed = (args.warmup + args.steps + 1) * args.batch_size
    data = tokenize_examples(
        load_examples("embedded:dolly", limit=2 * needed + 50),
        tokenizer,
        max_length=args.max_length,
    )
    if len(data.examples) < needed:
        raise SystemExit(f"only {len(data.examples)} Dolly rows fit; {needed} needed")
    return data.examples[:needed]


def build_cache(args: argparse.Namespace) -> dict:
    """The top-k teacher cache of the benchmark's examples (its own process, not timed)."""
    from spectrumkd.distillation.teacher_cache import build_teacher_cache

    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    folder = build_teacher_cache(
        load_model(DEFAULT_TEACHER),
        _data(tokenizer, args),
        args.cache_root,
        k=args.k,
        pad_token_id=tokenizer.pad_token_id,
        progress=False,
    )
    return {"folder": str(folder)}


def worker(engine: str, args: argparse.Namespace) -> None:
    """One run in this fresh process; prints one JSON line."""
    trainer, precision, loss_impl, source_kind = ENGINES[engine]
    torch.manual_seed(0)
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    teacher = load_model(DEFAULT_TEACHER)
    total_layers = teacher.config.num_hidden_layers
    student = shrink_model(teacher, _keep_layers(total_layers, args.layers))
    examples = _data(tokenizer, args)
    teacher_params = matmul_params(teacher)
    student_params = matmul_params(student)
    profile_step = args.warmup if args.profile else None
    stop_at = args.warmup + 1 if args.profile else args.warmup + args.steps
    recorder = _Recorder(stop_at=stop_at, profile_step=profile_step)

    source: Any = None
    if trainer == "ours":
        from spectrumkd.distillation.signals import LiveTeacher
        from spectrumkd.distillation.teacher_cache import CachedTeacher

        if source_kind == "cache":
            source = CachedTeacher(args.cache_dir, student.config.vocab_size)
            del teacher  # never resident in a cached run (shrink_model copied what it kept)
            gc.collect()
        else:
            source = LiveTeacher(teacher)
    base = status_mib("VmRSS")
    reset_peak()
    if engine.endswith("+fused-adamw"):
        torch.optim.AdamW = _FusedAdamW  # this process only: train() looks it up when called
    if trainer == "ours":
        config = _our_config(args, precision, loss_impl, CHUNK_SIZES.get(engine, 0))
        _run_ours(student, source, examples, tokenizer.pad_token_id, config, recorder)
    else:
        ordered = _ordered_examples(examples, _our_config(args))
        _run_trl(student, teacher, tokenizer, ordered, args, recorder, precision)
    if len(recorder.starts) != stop_at + 1:
        raise RuntimeError(f"{engine} ran {len(recorder.starts)} steps, not the planned number")

    first, last = args.warmup, stop_at
    timed = slice(first, last)
    result = {
        "seconds": recorder.starts[last] - recorder.starts[first],
        "cpu_seconds": recorder.cpu[last] - recorder.cpu[first],
        "real_tokens": sum(t[0] for t in recorder.tokens[timed]),
        "response_tokens": sum(t[1] for t in recorder.tokens[timed]),
        "padded_tokens": sum(t[2] for t in recorder.tokens[timed]),
        "step_tokens": [t[:2] for t in recorder.tokens],
        "losses": recorder.losses,
        "peak_growth_mib": recorder.peaks[-1] - base,
        "peak_mib": recorder.peaks[-1],
        "layers": _keep_layers(total_layers, args.layers),
        "student_matmul_params": student_params,
        "teacher_matmul_params": teacher_params,
    }
    if recorder.profiler is not None:
        result["profile"] = profile_table(recorder.profiler, rows=args.profile_rows)
    print(json.dumps(result))


WORKER_ARGS = ("layers", "batch_size", "warmup", "steps", "max_length", "threads", "k")


def _run(engine: str, args: argparse.Namespace, extra: list[str] | None = None) -> dict:
    return run_worker(__file__, [engine, *(extra or [])], args, WORKER_ARGS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6, help="student blocks (of the 30)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per trainer")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--k", type=int, default=64, help="top-k of the cached runs' cache")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per run (0: torch's default)"
    )
    parser.add_argument(
        "--engines", default=",".join(DEFAULT_ENGINES), help=f"of {', '.join(ENGINES)}"
    )
    parser.add_argument("--profile-engine", default="bf16", choices=list(ENGINES))
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--no-profile", action="store_true", help="skip the profile and FLOP/s")
    parser.add_argument("--worker", choices=[*ENGINES, "build", "peak"], help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.worker == "build":
            print(json.dumps(build_cache(args)))
        elif args.worker == "peak":
            print(json.dumps({d: matmul_peak_flops(d) for d in ("bfloat16", "float32")}))
        else:
            worker(args.worker, args)
        return

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    reference = "fp32" if "fp32" in engines else engines[0]
    baseline = "trl" if "trl" in engines else reference
    with tempfile.TemporaryDirectory() as tmp:
        cache: list[str] = []
        needs_cache = any(ENGINES[e][3] == "cache" for e in [*engines, args.profile_engine])
        if needs_cache:
            folder = _run("build", args, ["--cache-root", tmp])["folder"]
            cache = ["--cache-dir", folder]
        runs: dict[str, list[dict]] = {e: [] for e in engines}
        for repeat in range(args.repeats):
            # interleaved, order alternating, so a burst of load from other jobs hits all alike
            for engine in engines if repeat % 2 == 0 else engines[::-1]:
                runs[engine].append(_run(engine, args, cache))
        profile = None
        if not args.no_profile:
            profile = _run(args.profile_engine, args, [*cache, "--profile"])
            peak = _run("peak", args)

    ref = runs[reference][0]
    worst: dict[str, float] = {}
    for engine in engines:
        run = runs[engine][0]
        if run["step_tokens"] != ref["step_tokens"]:
            raise AssertionError(f"{engine} and {reference} did not see the same batches")
        # the first step's loss, before any update: same weights, same batch
        worst[engine] = abs(run["losses"][0] - ref["losses"][0]) / abs(ref["losses"][0])
        live = ENGINES[engine][3] == "live"
        tolerance = 1e-3 if ENGINES[engine][1] == ENGINES[reference][1] == "float32" else 3e-2
        if live and ENGINES[reference][3] == "live" and worst[engine] > tolerance:
            raise AssertionError(f"{engine} loss {run['losses']} vs {reference} {ref['losses']}")

    def rate(run: dict, clock: str) -> float:
        return run["real_tokens"] / run[clock]

    def paired(engine: str, other: str, clock: str) -> list[float]:
        """Speed of ``engine`` over ``other``, each run against the other's run of its round."""
        return [
            rate(r, clock) / rate(o, clock) for r, o in zip(runs[engine], runs[other], strict=True)
        ]

    import transformers
    import trl as trl_package

    print(
        f"# SmolLM2-135M-Instruct teacher (30 layers) -> {args.layers}-layer student "
        f"(blocks {ref['layers']}), Dolly rows <= {args.max_length} tokens, batch "
        f"{args.batch_size}, forward KL, tau 1, AdamW; cache top-{args.k}; {args.warmup} warm-up "
        f"+ {args.steps} timed steps per run, median of {args.repeats} interleaved rounds; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl_package.__version__}, {args.threads or torch.get_num_threads()} threads, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    print(
        f"| trainer | CPU s/step | real tokens per CPU s | vs {baseline}, CPU | vs {reference}, "
        f"CPU | wall s/step | vs {baseline}, wall | peak RSS growth MiB | memory vs {baseline} "
        "| first-step loss rel. diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base_growth = statistics.median(r["peak_growth_mib"] for r in runs[baseline])
    med = statistics.median
    for engine in engines:
        rs = runs[engine]
        growth = med(r["peak_growth_mib"] for r in rs)
        print(
            f"| {LABELS[engine]} | {med(r['cpu_seconds'] / args.steps for r in rs):.2f} "
            f"| {med(rate(r, 'cpu_seconds') for r in rs):,.0f} "
            f"| {med(paired(engine, baseline, 'cpu_seconds')):.2f}x "
            f"| {med(paired(engine, reference, 'cpu_seconds')):.2f}x "
            f"| {med(r['seconds'] / args.steps for r in rs):.2f} "
            f"| {med(paired(engine, baseline, 'seconds')):.2f}x "
            f"| {growth:,.0f} | {growth / base_growth:.2f} | {worst[engine]:.1e} |"
        )
    print()
    for engine in engines:
        cpu = ", ".join(f"{x:.2f}" for x in paired(engine, baseline, "cpu_seconds"))
        print(f"- {engine} / {baseline} per round (CPU time): {cpu}")
    print(
        f"- KD per response token, {reference}, per step: "
        f"{', '.join(f'{x:.4f}' for x in ref['losses'])}"
    )
    if profile is None:
        return
    steps = args.profile_engine
    timed = runs.get(steps) or [profile]
    flops_per_token = 6 * ref["student_matmul_params"] + 2 * ref["teacher_matmul_params"]
    if ENGINES[steps][3] == "cache":
        flops_per_token = 6 * ref["student_matmul_params"]  # no teacher forward
    achieved = med(flops_per_token * r["padded_tokens"] / r["cpu_seconds"] for r in timed)
    print(f"\n## Where the time goes: {LABELS[steps]}, one step (torch.profiler, self CPU time)\n")
    print("```\n" + profile["profile"] + "\n```")
    print(
        f"\nFLOPs counted per padded token: 6 x {ref['student_matmul_params'] / 1e6:.1f} M "
        f"(student) + 2 x {ref['teacher_matmul_params'] / 1e6:.1f} M (teacher)"
        f"{' (no teacher: cached)' if ENGINES[steps][3] == 'cache' else ''} = "
        f"{flops_per_token / 1e9:.2f} GFLOP; achieved {achieved / 1e9:.1f} GFLOP/s per CPU "
        f"second; measured matmul peak on one thread: bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s, "
        f"float32 {peak['float32'] / 1e9:.0f} GFLOP/s; the step reaches "
        f"{achieved / peak['bfloat16']:.1%} of the bf16 peak"
    )


if __name__ == "__main__":
    main()
