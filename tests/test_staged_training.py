"""Staged training (POCL, SRD, Baby Step, One-Pass): where a plan restarts, the optimiser and the
LR schedule start afresh and the weights carry over, in the trainer and across a resume."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import test_integrations as integration_tests
import torch
from accelerate import Accelerator
from conftest import build_tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st
from test_trainer import VOCAB, KilledTeacher, make_examples
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import TrainingArguments

from spectrumkd.curation.plan import CurriculumPlan, EpochPlan
from spectrumkd.data import DataCollator
from spectrumkd.distillation.objectives import get_objective
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.stages import epoch_optimizer_steps
from spectrumkd.distillation.steps import collate_with_ids, step_losses
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.distillation.trainer import train
from spectrumkd.integrations import CurriculumCallback, CurriculumDataset, CurriculumSampler

EXAMPLES = make_examples(16)
IDS = [e.id for e in EXAMPLES]
CONFIG = TrainConfig(batch_size=4, learning_rate=1e-3, warmup_ratio=0.25, seed=5, log_every=1)


@functools.cache
def teacher_model() -> torch.nn.Module:
    return build_tiny_llama(VOCAB, num_layers=2, seed=1)


def fresh_student() -> torch.nn.Module:
    return build_tiny_llama(VOCAB, num_layers=1, seed=2)


def staged_plan(
    stages: Sequence[tuple[int, int, float, float]], restart: bool = True
) -> CurriculumPlan:
    """Baby-step stages: (examples, epochs, temperature, kd weight) each, on the first
    ``examples`` ids; the first epoch of every later stage restarts (unless ``restart`` is off)."""
    epochs = []
    for stage, (size, count, temperature, kd_weight) in enumerate(stages, start=1):
        for index in range(count):
            epochs.append(
                EpochPlan(
                    len(epochs) + 1,
                    IDS[:size],
                    temperature,
                    kd_weight=kd_weight,
                    stage=stage,
                    restart=restart and stage > 1 and index == 0,
                )
            )
    return CurriculumPlan(strategy="test", epochs=tuple(epochs))


# Stage 1: 2 epochs of 8 examples (4 steps); stage 2: 2 epochs of 16 examples (8 steps).
TWO_STAGES = ((8, 2, 1.0, 0.7), (16, 2, 1.5, 0.9))


def run(folder: Path, plan: CurriculumPlan, config: TrainConfig = CONFIG, **options):
    student = options.pop("student", None) or fresh_student()
    teacher = options.pop("teacher", None) or LiveTeacher(teacher_model())
    state = train(
        student,
        teacher,
        EXAMPLES,
        config,
        folder,
        plan=plan,
        accelerator=Accelerator(cpu=True),
        **options,
    )
    return state, student


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> None:
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


def metric_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@contextmanager
def optimiser_steps_observed():
    """Every AdamW step of the block as (optimiser state entries, lr, weights, gradients), taken
    just before the step: what the step starts from and the learning rate it uses."""
    seen: list[dict] = []

    def before_step(optimizer, args, kwargs):
        if not isinstance(optimizer, torch.optim.AdamW):
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        seen.append(
            {
                "state_entries": len(optimizer.state),
                "lr": optimizer.param_groups[0]["lr"],
                "weights": [p.detach().clone() for p in params],
                "grads": [p.grad.detach().clone() for p in params],
            }
        )

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        yield seen
    finally:
        handle.remove()


def linear_lr(base: float, step: int, steps: int, warmup_ratio: float) -> float:
    """The linear-with-warm-up schedule at 0-based ``step`` of ``steps``, written out."""
    warmup = int(warmup_ratio * steps)
    if step < warmup:
        return base * step / warmup
    return base * max(0.0, (steps - step) / (steps - warmup))


def test_two_stages_in_one_run_equal_each_stage_trained_by_its_own_run(tmp_path):
    """The independent reference: stage 2 run by a second train() call from stage 1's weights
    has a fresh optimiser and schedule by construction."""
    _, staged = run(tmp_path / "staged", staged_plan(TWO_STAGES))

    first, second = (staged_plan(TWO_STAGES).stage_epochs(s) for s in (1, 2))
    _, alone = run(tmp_path / "stage1", CurriculumPlan("test", first))
    renumbered = tuple(replace(e, epoch=i, restart=False) for i, e in enumerate(second, 1))
    # The sampler shuffles by seed + 0-based epoch: the seed moves by stage 1's epochs so that
    # the second run serves stage 2 in the order the staged run does.
    later = replace(CONFIG, seed=CONFIG.seed + len(first))
    run(tmp_path / "stage2", CurriculumPlan("test", renumbered), later, student=alone)
    assert_same_weights(staged, alone, atol=1e-6)

    # Carrying the optimiser and the schedule on through stage 2 ends elsewhere.
    _, carried_on = run(tmp_path / "carried", staged_plan(TWO_STAGES, restart=False))
    assert (
        max(
            (a - b).abs().max()
            for a, b in zip(staged.parameters(), carried_on.parameters(), strict=True)
        )
        > 1e-4
    )


def test_each_restarted_stage_starts_with_an_empty_optimiser_and_the_schedules_first_lr(tmp_path):
    with optimiser_steps_observed() as steps:
        state, _ = run(tmp_path, staged_plan(TWO_STAGES))
    stage_steps = [4, 8]
    starts = [0, 4]
    assert len(steps) == sum(stage_steps) == state["step"]
    assert [i for i, s in enumerate(steps) if s["state_entries"] == 0] == starts
    expected = [
        linear_lr(CONFIG.learning_rate, t, n, CONFIG.warmup_ratio)
        for n in stage_steps
        for t in range(n)
    ]
    assert [s["lr"] for s in steps] == pytest.approx(expected, abs=1e-12)
    assert expected[4] == 0.0 and expected[5] == pytest.approx(5e-4)  # warm-up within stage 2

    rows = metric_rows(tmp_path)  # a row's lr is the one of the next step, as the schedule runs
    after = [
        linear_lr(CONFIG.learning_rate, t + 1, n, CONFIG.warmup_ratio)
        for n in stage_steps
        for t in range(n)
    ]
    assert [r["lr"] for r in rows] == pytest.approx(after, abs=1e-12)
    assert [r["stage"] for r in rows] == [1] * 4 + [2] * 8
    assert state["stage"] == 2


def test_a_plan_without_stages_logs_no_stage_and_trains_one_schedule(tmp_path):
    plan = staged_plan(((8, 3, 1.0, 0.7),))
    with optimiser_steps_observed() as steps:
        state, _ = run(tmp_path, plan)
    assert [s["state_entries"] == 0 for s in steps] == [True] + [False] * 5
    assert [s["lr"] for s in steps] == pytest.approx(
        [linear_lr(CONFIG.learning_rate, t, 6, CONFIG.warmup_ratio) for t in range(6)]
    )
    assert all("stage" not in row for row in metric_rows(tmp_path))
    assert state["stage"] == 1


def test_optimiser_steps_per_stage_follow_the_stage_sizes(tmp_path):
    plan = staged_plan([(4 * k, 1, 1.0 + k / 4, 0.6 + k / 10) for k in (1, 2, 3, 4)])
    with optimiser_steps_observed() as steps:
        state, _ = run(tmp_path, plan, validation=make_examples(4, seed=9))
    rows = metric_rows(tmp_path)
    training = [row for row in rows if "ce" in row]
    per_stage = [sum(1 for row in training if row["stage"] == s) for s in (1, 2, 3, 4)]
    assert per_stage == [1, 2, 3, 4]
    validated = [(row["epoch"], row["stage"]) for row in rows if "val_kd" in row]
    assert validated == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert [i for i, s in enumerate(steps) if s["state_entries"] == 0] == [0, 1, 3, 6]
    assert state["step"] == 10 and state["stage"] == 4


@pytest.mark.parametrize(
    ("die_at", "save_every_steps", "saved"),
    [
        (5, 0, (2, 4, 0)),  # at the stage boundary: the end of stage 1's last epoch
        (7, 1, (2, 6, 2)),  # mid-stage 2, mid-epoch (two steps into epoch 3)
        (9, 0, (3, 8, 0)),  # mid-stage 2, between its two epochs
    ],
)
def test_a_run_killed_in_stage_2_resumes_to_the_uninterrupted_weights(
    tmp_path, die_at, save_every_steps, saved
):
    config = replace(CONFIG, save_every_steps=save_every_steps)
    plan = staged_plan(TWO_STAGES)
    clean_state, clean = run(tmp_path / "clean", plan, config)

    teacher = KilledTeacher(teacher_model(), die_at=die_at)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", plan, config, teacher=teacher)
    checkpoint = json.loads((tmp_path / "killed/checkpoint/trainer_state.json").read_text())
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["step_in_epoch"]) == saved

    state, resumed = run(tmp_path / "killed", plan, config)
    assert (
        (state["epoch"], state["step"], state["stage"])
        == (4, 12, 2)
        == (
            clean_state["epoch"],
            clean_state["step"],
            clean_state["stage"],
        )
    )
    assert_same_weights(clean, resumed)
    clean_rows, resumed_rows = metric_rows(tmp_path / "clean"), metric_rows(tmp_path / "killed")
    assert [(r["step"], r["stage"]) for r in resumed_rows] == [
        (r["step"], r["stage"]) for r in clean_rows
    ]
    for a, b in zip(clean_rows, resumed_rows, strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def test_each_stages_temperature_and_kd_weight_reach_the_loss(tmp_path):
    """The gradient each optimiser step applies is that of alpha * CE + (1 - alpha) * tau^2 * KD
    at its stage's tau and alpha = 1 - kd_weight, recomputed here from the weights it started
    from; the logged CE and KD are those sums per token."""
    plan = staged_plan(((4, 1, 1.0, 0.7), (4, 1, 2.5, 0.9)))
    config = replace(CONFIG, max_grad_norm=None)  # the hook then sees the loss's own gradient
    with optimiser_steps_observed() as steps:
        run(tmp_path, plan, config)
    rows = metric_rows(tmp_path)
    assert len(steps) == len(rows) == 2
    sampler = CurriculumSampler(IDS, plan, seed=config.seed)
    by_id = {e.id: e for e in EXAMPLES}
    for epoch, step, row in zip(plan.epochs, steps, rows, strict=True):
        sampler.set_epoch(epoch.epoch - 1)
        batch = collate_with_ids([by_id[IDS[i]] for i in sampler], 0)
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        alpha = 1.0 - epoch.kd_weight
        expected, ce, kd = step_gradient(step["weights"], batch, epoch.temperature, alpha)
        for got, want in zip(step["grads"], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert (row["temperature"], row["alpha"], row["stage"]) == (
            epoch.temperature,
            pytest.approx(alpha),
            epoch.stage,
        )
        assert (row["ce"], row["kd"]) == pytest.approx((ce / tokens, kd / tokens), rel=1e-5)
        # The other stage's temperature and KD weight would have given another gradient.
        other = next(e for e in plan.epochs if e is not epoch)
        elsewhere, _, _ = step_gradient(
            step["weights"], batch, other.temperature, 1.0 - other.kd_weight
        )
        assert any(
            not torch.allclose(a, b, rtol=1e-3)
            for a, b in zip(step["grads"], elsewhere, strict=True)
        )


def step_gradient(weights, batch: dict, temperature: float, alpha: float):
    """The gradient of one step's loss, (alpha * CE + (1 - alpha) * tau^2 * KD) / response
    tokens, for a student with ``weights``; also the CE and KD sums."""
    student = fresh_student()
    with torch.no_grad():
        for param, value in zip(student.parameters(), weights, strict=True):
            param.copy_(value)
    teacher = LiveTeacher(teacher_model())
    objective = get_objective(CONFIG.objective)
    ce, kd = step_losses(student, teacher, batch, objective, temperature)
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    ((alpha * ce + (1 - alpha) * temperature**2 * kd) / tokens).backward()
    return [p.grad.clone() for p in student.parameters()], ce.item(), kd.item()


@st.composite
def plans(draw) -> CurriculumPlan:
    sizes = draw(st.lists(st.integers(1, 40), min_size=1, max_size=12))
    restarts = draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
    stage, epochs = 1, []
    for epoch, (size, restart) in enumerate(zip(sizes, restarts, strict=True), start=1):
        restart = restart and epoch > 1
        stage += restart
        epochs.append(
            EpochPlan(epoch, [f"r{i}" for i in range(size)], 1.0, stage=stage, restart=restart)
        )
    return CurriculumPlan("drawn", tuple(epochs))


@settings(max_examples=200, deadline=None)
@given(plans())
def test_spans_cut_the_plan_at_its_restarts_and_nowhere_else(plan):
    spans = {tuple(plan.span_epochs(e.epoch)) for e in plan.epochs}
    covered = sorted(e for span in spans for e in span)
    assert covered == list(range(1, plan.num_epochs + 1))  # a partition of the epochs
    for span in spans:
        assert span[0] == 1 or plan.epoch(span[0]).restart
        assert not any(plan.epoch(e).restart for e in span[1:])
        assert len({plan.epoch(e).stage for e in span}) == 1
    assert len(spans) == 1 + sum(e.restart for e in plan.epochs)


@settings(max_examples=200, deadline=None)
@given(plans(), st.integers(1, 8), st.integers(1, 4), st.integers(1, 3))
def test_optimiser_steps_per_epoch_count_the_batches_a_loader_serves(
    plan, batch_size, grad_accum, processes
):
    counted = epoch_optimizer_steps(plan, batch_size, grad_accum, processes)
    for epoch, steps in zip(plan.epochs, counted, strict=True):
        # The loader's batches dealt round the processes (accelerate's even batches give every
        # process the longest share), then a process's micro-batches grouped into steps.
        ids = list(epoch.ids)
        batches = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
        longest_share = max(len(batches[rank::processes]) for rank in range(processes))
        assert steps == len(range(0, longest_share, grad_accum))


# A real transformers.Trainer: CurriculumDataset needs a constant epoch size, so the staged plan
# here is One-Pass shaped (disjoint buckets of 8 examples, two epochs each).
HF_VOCAB = 100


def one_pass_plan(ids: Sequence[str]) -> CurriculumPlan:
    return CurriculumPlan(
        "one_pass",
        (
            EpochPlan(1, ids[:8], 1.0, kd_weight=0.7, stage=1),
            EpochPlan(2, ids[:8], 1.0, kd_weight=0.7, stage=1),
            EpochPlan(3, ids[8:16], 2.0, kd_weight=0.9, stage=2, restart=True),
            EpochPlan(4, ids[8:16], 2.0, kd_weight=0.9, stage=2),
        ),
    )


def hf_run(folder: Path, *, save_steps: int = 0, resume_from: str | None = None, **arguments):
    """A tiny KD run of transformers.Trainer over the One-Pass plan (2 steps an epoch, 4 a
    stage), seen at every optimiser step; returns the callback, the student and the steps."""
    examples = integration_tests.make_examples(16, HF_VOCAB)
    ids = [e.id for e in examples]
    plan = one_pass_plan(ids)
    view = CurriculumDataset(examples, ids, plan)
    callback = CurriculumCallback(view)
    student = build_tiny_llama(HF_VOCAB, num_layers=1, seed=1)
    options = {
        "output_dir": str(folder),
        "num_train_epochs": plan.num_epochs,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0.25,
        "optim": "adamw_torch",
        "save_strategy": "steps" if save_steps else "no",
        "save_steps": save_steps or 500,
        "report_to": [],
        "logging_steps": 1000,
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 3,
        **arguments,
    }
    trainer = integration_tests.TinyKDTrainer(
        model=student,
        args=TrainingArguments(**options),
        train_dataset=view,
        eval_dataset=examples[:4],  # read only by a run that asks for evaluation
        data_collator=DataCollator(pad_token_id=0),
        teacher=build_tiny_llama(HF_VOCAB, num_layers=2, seed=2),
        curriculum_callback=callback,
        callbacks=[callback],
    )
    with optimiser_steps_observed() as steps:
        trainer.train(resume_from_checkpoint=resume_from)
    return callback, student, steps, trainer


def cosine_min_lr(base: float, step: int, steps: int, warmup_ratio: float, min_lr: float) -> float:
    """Cosine decay to ``min_lr`` after a linear warm-up, at 0-based ``step`` of ``steps``."""
    warmup = int(warmup_ratio * steps)
    if step < warmup:
        return base * step / warmup
    progress = (step - warmup) / (steps - warmup)
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    ("schedule", "schedule_options", "lr_at"),
    [
        ("linear", {}, lambda t: linear_lr(1e-3, t, 4, 0.25)),
        ("cosine_with_min_lr", {"min_lr": 1e-4}, lambda t: cosine_min_lr(1e-3, t, 4, 0.25, 1e-4)),
    ],
)
def test_the_callback_restarts_the_optimiser_and_the_schedule_inside_a_transformers_trainer(
    tmp_path, schedule, schedule_options, lr_at
):
    callback, _, steps, trainer = hf_run(
        tmp_path, lr_scheduler_type=schedule, lr_scheduler_kwargs=schedule_options
    )
    assert len(steps) == 8 and callback.restarts == [4]
    assert [i for i, s in enumerate(steps) if s["state_entries"] == 0] == [0, 4]
    expected = [lr_at(t) for _ in range(2) for t in range(4)]
    assert [s["lr"] for s in steps] == pytest.approx(expected, abs=1e-12)
    assert trainer.temperatures_used == [1.0] * 4 + [2.0] * 4
    assert [t for _, t in callback.history] == [1.0, 1.0, 2.0, 2.0]


def test_the_callback_refuses_a_schedule_it_cannot_restart(tmp_path):
    with pytest.raises(
        ValueError, match="restarts the LR schedule.*set lr_scheduler_type to linear"
    ):
        hf_run(tmp_path, lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="epoch")


@pytest.mark.parametrize("checkpoint", ["checkpoint-4", "checkpoint-5"])
def test_a_transformers_trainer_resumed_in_stage_2_keeps_the_stage_schedule(tmp_path, checkpoint):
    """checkpoint-4 is the stage boundary, checkpoint-5 one step into stage 2."""
    _, clean, clean_steps, _ = hf_run(tmp_path, save_steps=1)
    resumed_from = int(checkpoint.split("-")[1])
    callback, resumed, steps, _ = hf_run(tmp_path, resume_from=str(tmp_path / checkpoint))
    assert len(steps) == 8 - resumed_from
    assert [s["lr"] for s in steps] == pytest.approx(
        [s["lr"] for s in clean_steps[resumed_from:]], abs=1e-12
    )
    assert [s["state_entries"] == 0 for s in steps] == [
        s["state_entries"] == 0 for s in clean_steps[resumed_from:]
    ]
    assert callback.restarts == ([4] if resumed_from == 4 else [])
    assert_same_weights(clean, resumed, atol=1e-6)
