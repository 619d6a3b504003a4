"""One KD training step: spectrumkd's trainer against TRL's GKDTrainer, same models, data, objective.

Usage: python benchmarks/bench_kd_step.py [--layers 8] [--batch-size 4] [--warmup 1] [--steps 4]
    [--repeats 2] [--max-length 256] [--threads 0]

Three trainers, each run in a fresh subprocess, interleaved round by round, order alternating:
spectrumkd's ``train()`` with ``loss_impl="full"`` (the default) and with ``loss_impl="chunked"``
(the memory-bounded fused head + loss), and TRL's ``GKDTrainer``. Identical settings:

- teacher: SmolLM2-135M-Instruct (the embedded GGUF), fp32; student: ``shrink_model`` of it,
  ``--layers`` blocks evenly spaced (first and last kept); the same initial weights on both sides.
- data: the first embedded Dolly rows that fit ``--max-length`` tokens, prompt-masked labels,
  served in the same order to both (the order our ``CurriculumSampler`` gives epoch 1 with seed 0;
  TRL reads that list sequentially), in batches of ``--batch-size``, right-padded.
- objective: off-policy forward KL at temperature 1 with no CE term. TRL: ``GKDConfig(lmbda=0,
  beta=0, seq_kd=False)``; its ``generalized_jsd_loss`` at beta 0 is ``F.kl_div(log q, log p,
  log_target=True)`` = KL(p || q) per token over ``labels != -100``, divided by the response tokens
  (``num_items_in_batch``). spectrumkd: ``TrainConfig(objective="forward_kl", alpha=0.0,
  temperature=1.0)`` = tau^2 KL(p || q) summed / response tokens. The script checks that every
  step's loss agrees (relative 1e-3), which also shows both ran the same updates. (GKD's loss
  never reads ``GKDConfig.temperature``, which is only its sampling temperature.)
- optimiser: torch AdamW (TRL ``optim="adamw_torch"``), lr 5e-5, no weight decay, linear decay,
  no warm-up, gradient clipping at 1.0, fp32 (TRL ``bf16=False``), no gradient checkpointing
  (SFTConfig's default is on; ours has none), no gradient accumulation.

Each side's ``train()`` runs unmodified; a thin wrapper notes the time and peak RSS when each step
begins (``accumulate_gradients`` for ours, ``training_step`` for TRL) and stops the run when step
``warmup + steps`` begins, so the N timed steps are the intervals between step starts (forward,
backward, clipping, optimiser, scheduler, next batch) and no checkpoint or final save is counted.
Speed is given in process CPU time (the ratio to trust on a machine shared with other jobs; run
with ``--threads 1`` there, so that no thread spins waiting for a descheduled sibling) and in
wall time. Peak memory is the growth of VmHWM from just before the trainer is built (models and
data loaded) to that moment; it includes the teacher's weights becoming resident (they are mmapped
safetensors until a forward pass reads them), the same for all three. Prints a Markdown table for
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from typing import Any

import torch
from _common import reset_peak, run_worker, status_mib
from transformers import PreTrainedModel

from spectrumkd.data import DataCollator, load_examples, tokenize_examples
from spectrumkd.data.tokenize import IGNORE_INDEX, TokenizedExample
from spectrumkd.distillation.trainer import TrainConfig
from spectrumkd.models import DEFAULT_TEACHER, load_model, load_tokenizer, shrink_model

LEARNING_RATE = 5e-5
ENGINES = ("spectrumkd", "spectrumkd-chunked", "trl")
LABELS = {
    "spectrumkd": "spectrumkd `train()`, loss_impl full",
    "spectrumkd-chunked": "spectrumkd `train()`, loss_impl chunked (1,024-token chunks)",
    "trl": "TRL `GKDTrainer` (lmbda 0, beta 0)",
}


class _Done(Exception):
    """Raised from inside a trainer once the timed steps are over."""


def _keep_layers(total: int, keep: int) -> list[int]:
    """``keep`` block indices evenly spaced over ``total``, first and last included."""
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


class _Recorder:
    """Time, peak RSS and batch size at the start of every step; stops the run after the last."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at = stop_at
        self.starts: list[float] = []
        self.cpu: list[float] = []  # process CPU seconds: far less sensitive to other jobs
        self.peaks: list[float] = []
        self.tokens: list[tuple[int, int]] = []  # (real tokens, response tokens) per step
        self.losses: list[float] = []  # KD per response token, before the step's update

    def step_begins(self, batch: dict) -> None:
        self.starts.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.peaks.append(status_mib("VmHWM"))
        if len(self.starts) > self.stop_at:
            raise _Done
        response = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        self.tokens.append((int(batch["attention_mask"].sum()), response))


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


def _run_ours(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    examples: list[TokenizedExample],
    pad_id: int,
    args: argparse.Namespace,
    recorder: _Recorder,
    loss_impl: str,
) -> None:
    from spectrumkd.distillation import trainer as kd_trainer
    from spectrumkd.distillation.signals import LiveTeacher

    config = _our_config(args, loss_impl)
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
            kd_trainer.train(
                student, LiveTeacher(teacher), examples, config, out, pad_token_id=pad_id
            )
    except _Done:
        pass
    finally:
        kd_trainer.accumulate_gradients = original


def _our_config(args: argparse.Namespace, loss_impl: str = "full") -> TrainConfig:
    return TrainConfig(
        loss_impl=loss_impl,
        objective="forward_kl",
        alpha=0.0,
        temperature=1.0,
        epochs=1,
        batch_size=args.batch_size,
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        lr_schedule="linear",
        max_grad_norm=1.0,
        log_every=10**9,
        seed=0,
    )


def _run_trl(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: Any,
    examples: list[TokenizedExample],
    args: argparse.Namespace,
    recorder: _Recorder,
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
            bf16=False,
            fp16=False,
            activation_checkpointing=False,  # TRL's base config turns it on; ours has none
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
            logging_steps=10**9,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=0,
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


def worker(engine: str, args: argparse.Namespace) -> None:
    """One run in this fresh process; prints one JSON line."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    teacher = load_model(DEFAULT_TEACHER)
    total_layers = teacher.config.num_hidden_layers
    student = shrink_model(teacher, _keep_layers(total_layers, args.layers))
    needed = (args.warmup + args.steps + 1) * args.batch_size
    data = tokenize_examples(
        load_examples("embedded:dolly", limit=2 * needed + 50),
        tokenizer,
        max_length=args.max_length,
    )
    if len(data.examples) < needed:
        raise SystemExit(f"only {len(data.examples)} Dolly rows fit; {needed} needed")
    examples = data.examples[:needed]
    recorder = _Recorder(stop_at=args.warmup + args.steps)

    base = status_mib("VmRSS")
    reset_peak()
    if engine in ENGINES[:2]:
        loss_impl = "full" if engine == "spectrumkd" else "chunked"
        _run_ours(student, teacher, examples, tokenizer.pad_token_id, args, recorder, loss_impl)
    else:
        ordered = _ordered_examples(examples, _our_config(args))
        _run_trl(student, teacher, tokenizer, ordered, args, recorder)
    if len(recorder.starts) != args.warmup + args.steps + 1:
        raise RuntimeError(f"{engine} ran {len(recorder.starts)} steps, not the planned number")

    timed = slice(args.warmup, args.warmup + args.steps)
    seconds = recorder.starts[args.warmup + args.steps] - recorder.starts[args.warmup]
    cpu_seconds = recorder.cpu[args.warmup + args.steps] - recorder.cpu[args.warmup]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "real_tokens": sum(t[0] for t in recorder.tokens[timed]),
                "response_tokens": sum(t[1] for t in recorder.tokens[timed]),
                "step_tokens": recorder.tokens,
                "losses": recorder.losses,
                "peak_growth_mib": recorder.peaks[-1] - base,
                "peak_mib": recorder.peaks[-1],
                "layers": _keep_layers(total_layers, args.layers),
            }
        )
    )


def _run(engine: str, args: argparse.Namespace) -> dict:
    names = ("layers", "batch_size", "warmup", "steps", "max_length", "threads")
    return run_worker(__file__, [engine], args, names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8, help="student blocks (of the 30)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per trainer")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per run (0: torch's default)"
    )
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args)
        return

    runs: dict[str, list[dict]] = {e: [] for e in ENGINES}
    for repeat in range(args.repeats):
        # interleaved, order alternating, so a burst of load from other jobs hits all alike
        for engine in ENGINES if repeat % 2 == 0 else ENGINES[::-1]:
            runs[engine].append(_run(engine, args))

    trl = runs["trl"][0]
    worst = 0.0
    for engine in ENGINES[:2]:
        ours = runs[engine][0]
        if ours["step_tokens"] != trl["step_tokens"]:
            raise AssertionError(f"{engine} and TRL did not see the same batches")
        for a, b in zip(ours["losses"], trl["losses"], strict=True):
            worst = max(worst, abs(a - b) / abs(b))
        if worst > 1e-3:
            raise AssertionError(f"{engine} losses {ours['losses']} vs TRL {trl['losses']}")

    def rate(run: dict, clock: str, key: str = "real_tokens") -> float:
        return run[key] / run[clock]

    import transformers
    import trl as trl_package

    print(
        f"# SmolLM2-135M-Instruct teacher (30 layers) -> {args.layers}-layer student "
        f"(blocks {trl['layers']}), Dolly rows <= {args.max_length} tokens, batch "
        f"{args.batch_size}, forward KL, tau 1, fp32, AdamW; {args.warmup} warm-up + "
        f"{args.steps} timed steps per run, median of {args.repeats} interleaved rounds; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl_package.__version__}, {args.threads or torch.get_num_threads()} threads, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        "| trainer | CPU s/step | real tokens per CPU s | speed vs TRL, CPU time | wall s/step "
        "| speed vs TRL, wall | peak RSS growth MiB | process peak RSS MiB | memory vs TRL |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    trl_growth = statistics.median(r["peak_growth_mib"] for r in runs["trl"])
    for engine in ENGINES:
        rs = runs[engine]
        # speed ratios paired by round: each run against the TRL run of the same round
        speed = {
            clock: statistics.median(
                rate(r, clock) / rate(t, clock) for r, t in zip(rs, runs["trl"], strict=True)
            )
            for clock in ("cpu_seconds", "seconds")
        }
        growth = statistics.median(r["peak_growth_mib"] for r in rs)
        print(
            f"| {LABELS[engine]} | {statistics.median(r['cpu_seconds'] / args.steps for r in rs):.2f} "
            f"| {statistics.median(rate(r, 'cpu_seconds') for r in rs):,.0f} "
            f"| {speed['cpu_seconds']:.2f}x "
            f"| {statistics.median(r['seconds'] / args.steps for r in rs):.2f} "
            f"| {speed['seconds']:.2f}x "
            f"| {growth:,.0f} | {statistics.median(r['peak_mib'] for r in rs):,.0f} "
            f"| {growth / trl_growth:.2f} |"
        )
    for engine in ENGINES[:2]:
        for clock in ("cpu_seconds", "seconds"):
            ratios = [
                rate(r, clock) / rate(t, clock)
                for r, t in zip(runs[engine], runs["trl"], strict=True)
            ]
            print(
                f"\n{engine}/TRL speed per round ({clock}): "
                f"{', '.join(f'{x:.2f}' for x in ratios)}",
                end="",
            )
    print(
        f"\nlargest relative per-step loss difference from TRL: {worst:.1e}; KD/token per step: "
        f"{', '.join(f'{x:.4f}' for x in trl['losses'])}"
    )


if __name__ == "__main__":
    main()
