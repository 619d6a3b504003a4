"""The distillation loop: loss normalisation under accumulation, learning, curriculum, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import build_tiny_llama

from spectrumkd.curation import SpectrumKD, SpectrumKDConfig
from spectrumkd.data import TokenizedExample
from spectrumkd.distillation.objectives import OBJECTIVES, get_objective
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.steps import accumulate_gradients, collate_with_ids, step_losses
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.distillation.trainer import train

VOCAB = 96


def make_examples(n: int, seed: int = 0) -> list[TokenizedExample]:
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        length = int(rng.integers(8, 24))
        prompt = int(rng.integers(2, length - 3))  # uneven response lengths on purpose
        ids = rng.integers(3, VOCAB, size=length).tolist()
        examples.append(TokenizedExample(f"ex{i:03d}", ids, [-100] * prompt + ids[prompt:]))
    return examples


def grads(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def test_one_batch_of_8_and_two_accumulated_batches_of_4_give_equal_gradients():
    examples = make_examples(8)
    # Short responses in the first half, long ones in the second: the halves' token counts differ.
    examples = [
        TokenizedExample(e.id, e.input_ids, [-100] * (len(e.input_ids) - 2) + e.input_ids[-2:])
        for e in examples[:4]
    ] + examples[4:]
    teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    objective = get_objective("forward_kl")
    accelerator = Accelerator(cpu=True)

    whole = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    accumulate_gradients(
        accelerator, whole, teacher, [collate_with_ids(examples, 0)], objective, 0.3, 2.0
    )
    split = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    halves = [collate_with_ids(examples[:4], 0), collate_with_ids(examples[4:], 0)]
    accumulate_gradients(accelerator, split, teacher, halves, objective, 0.3, 2.0)
    for a, b in zip(grads(whole), grads(split), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

    # The naive alternative, a mean per micro-batch averaged over micro-batches, differs here
    # (the halves hold different numbers of response tokens): the test can tell them apart.
    naive = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    for half in halves:
        ce, kd = step_losses(naive, teacher, half, objective, 2.0)
        tokens = int((half["labels"][:, 1:] != -100).sum())
        ((0.3 * ce + 0.7 * 4.0 * kd) / tokens / 2).backward()
    assert any(
        not torch.allclose(a, b, rtol=1e-3) for a, b in zip(grads(whole), grads(naive), strict=True)
    )


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_each_objective_reduces_its_own_loss_on_a_tiny_model(name, tmp_path):
    examples = make_examples(16)
    teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    objective = get_objective(name)
    batch = collate_with_ids(examples, 0)

    def kd_per_token() -> float:
        with torch.no_grad():
            _, kd = step_losses(student, teacher, batch, objective, 1.0)
        return kd.item() / int((batch["labels"][:, 1:] != -100).sum())

    before = kd_per_token()
    config = TrainConfig(
        objective=name, alpha=0.0, epochs=4, batch_size=8, learning_rate=3e-3, log_every=1
    )
    train(student, teacher, examples, config, tmp_path, accelerator=Accelerator(cpu=True))
    after = kd_per_token()
    assert after < 0.8 * before, f"{name}: {before:.4f} -> {after:.4f}"


def test_a_curriculum_plan_drives_the_subsets_and_temperatures(tmp_path, monkeypatch):
    import spectrumkd.distillation.steps as steps_module

    examples = make_examples(20)
    ids = [e.id for e in examples]
    plan = SpectrumKD(SpectrumKDConfig(lambda_a=0.2, lambda_b=0.1, epochs=3, warmup_epochs=1)).plan(
        ids, np.arange(20.0)
    )
    seen: dict[float, set[str]] = {}
    real_step_losses = steps_module.step_losses

    def recording_step_losses(student, teacher, batch, objective, temperature, **options):
        seen.setdefault(temperature, set()).update(batch["ids"])
        return real_step_losses(student, teacher, batch, objective, temperature, **options)

    monkeypatch.setattr(steps_module, "step_losses", recording_step_losses)
    teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    train(
        student,
        teacher,
        examples,
        TrainConfig(batch_size=4),
        tmp_path,
        plan=plan,
        accelerator=Accelerator(cpu=True),
    )
    assert list(seen) == [e.temperature for e in plan.epochs] == [1.0, 1.5, 2.0]
    for epoch in plan.epochs:  # each epoch trained on exactly its window (Excluded never seen)
        assert seen[epoch.temperature] == set(epoch.ids)


class KilledTeacher(LiveTeacher):
    """Dies at the n-th teacher call, as a killed process would (after a checkpoint)."""

    def __init__(self, model, die_at: int) -> None:
        super().__init__(model)
        self.calls, self.die_at = 0, die_at

    def _call(self) -> None:
        self.calls += 1
        if self.calls == self.die_at:
            raise KeyboardInterrupt("killed")

    def logits(self, batch):  # full logits (validation; loss_impl full)
        self._call()
        return super().logits(batch)

    def hidden_states(self, batch):  # the chunked engine (loss_impl auto with a live teacher)
        self._call()
        return super().hidden_states(batch)


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    examples = make_examples(12)
    config = TrainConfig(epochs=3, batch_size=4, learning_rate=1e-3, warmup_ratio=0.2, seed=5)
    teacher_model = build_tiny_llama(VOCAB, num_layers=2, seed=1)

    clean = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    train(
        clean,
        LiveTeacher(teacher_model),
        examples,
        config,
        tmp_path / "clean",
        accelerator=Accelerator(cpu=True),
    )

    killed = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    with pytest.raises(KeyboardInterrupt):  # epoch 1 is 3 steps; die in epoch 2
        train(
            killed,
            KilledTeacher(teacher_model, die_at=5),
            examples,
            config,
            tmp_path / "killed",
            accelerator=Accelerator(cpu=True),
        )
    resumed = build_tiny_llama(VOCAB, num_layers=1, seed=2)  # a fresh process starts from scratch
    state = train(
        resumed,
        LiveTeacher(teacher_model),
        examples,
        config,
        tmp_path / "killed",
        accelerator=Accelerator(cpu=True),
    )
    assert state["epoch"] == 3 and state["step"] == 9
    other = TrainConfig(epochs=3, batch_size=4, learning_rate=2e-3, warmup_ratio=0.2, seed=5)
    with pytest.raises(
        ValueError, match=r"checkpoint of a different run \(learning_rate changed\)"
    ):
        train(
            resumed,
            LiveTeacher(teacher_model),
            examples,
            other,
            tmp_path / "killed",
            accelerator=Accelerator(cpu=True),
        )
    for a, b in zip(clean.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_invalid_training_settings_are_refused():
    with pytest.raises(ValueError, match="alpha=1.5 must be in"):
        TrainConfig(alpha=1.5)
    with pytest.raises(ValueError, match="mixed_precision='fp8'"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ValueError, match="forward_kld"):
        TrainConfig(objective="forward_kld")


TWO_PROCESS_SCRIPT = """
import os
import sys
import time
import torch
import accelerate.accelerator
from accelerate import Accelerator
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[3])
from conftest import build_tiny_llama
from test_trainer import VOCAB, make_examples
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation import TrainConfig, train

out, batch_size = sys.argv[1], int(sys.argv[2])
if os.environ.get("RANK") == os.environ.get("SLOW_RANK"):
    # A loaded machine: this rank reaches save_state's writes (after it made the folder) late.
    real_save = accelerate.accelerator.save_accelerator_state

    def slow_save(*args, **kwargs):
        time.sleep(2)
        return real_save(*args, **kwargs)

    accelerate.accelerator.save_accelerator_state = slow_save
accelerator = Accelerator(cpu=True)
student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
config = TrainConfig(epochs=2, batch_size=batch_size, learning_rate=1e-3, seed=3)
train(student, teacher, make_examples(16), config, out, accelerator=accelerator)
if accelerator.is_main_process:
    state = accelerator.unwrap_model(student).state_dict()
    save_file({k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}, out + "/weights.safetensors")
"""


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """Rank 1 is slowed before it writes its part of each checkpoint (its RNG state): the
    checkpoint swap must wait for it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    tests_dir = str(Path(__file__).parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([tests_dir, *sys.path]),
        "OMP_NUM_THREADS": "1",
    }
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # accelerate 1.x: --cpu alone starts one process; this is torchrun (gloo on CPU)
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29533",
    ]
    subprocess.run(
        [*launch, "--num_processes", "2", str(script), str(tmp_path / "two"), "4", tests_dir],
        env={**env, "SLOW_RANK": "1"},
        check=True,
        timeout=300,
    )
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "8", tests_dir],
        env=env,
        check=True,
        timeout=300,
    )
    # The last checkpoint holds every rank's RNG state (a resume of rank 1 needs its own).
    checkpoint = tmp_path / "two" / "checkpoint"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
    two, one = (
        load_file(tmp_path / "two" / "weights.safetensors"),
        load_file(tmp_path / "one" / "weights.safetensors"),
    )
    initial = build_tiny_llama(VOCAB, num_layers=1, seed=2).state_dict()
    for name, tensor in one.items():
        assert (
            not torch.equal(tensor, initial[name]) or "norm" in name
        )  # training moved the weights
        # Adam divides by sqrt(v): for a near-zero gradient a last-bit difference in the all-reduced
        # sum moves the step visibly, so compare at 1e-4 (the weights are of order 0.02)
        torch.testing.assert_close(two[name], tensor, rtol=1e-3, atol=1e-4)


def kd_per_token(model, teacher, examples, temperature: float) -> float:
    batch = collate_with_ids(examples, 0)
    with torch.no_grad():
        _, kd = step_losses(model, teacher, batch, get_objective("forward_kl"), temperature)
    return kd.item() / int((batch["labels"][:, 1:] != -100).sum())


def test_validation_each_epoch_keeps_the_best_checkpoint(tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    examples, validation = make_examples(12), make_examples(6, seed=9)
    teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    config = TrainConfig(
        epochs=3, batch_size=4, learning_rate=3e-3, temperature=2.0, select_metric="val_kd"
    )
    state = train(
        build_tiny_llama(VOCAB, num_layers=1, seed=2),
        teacher,
        examples,
        config,
        tmp_path,
        validation=validation,
        accelerator=Accelerator(cpu=True),
    )
    rows = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "val_kd" in line
    ]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    best = min(rows, key=lambda r: r["val_kd"])
    assert state["best"] == {"epoch": best["epoch"], "metric": "val_kd", "value": best["val_kd"]}
    # Independent check: the saved model reproduces the recorded validation KD, at the
    # evaluation temperature 1, and beside it at the training temperature.
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "best")
    assert kd_per_token(saved, teacher, validation, 1.0) == pytest.approx(best["val_kd"], rel=1e-5)
    assert kd_per_token(saved, teacher, validation, 2.0) == pytest.approx(
        best["val_kd_train_tau"], rel=1e-5
    )


def test_validation_kd_is_at_temperature_1_whatever_the_epoch_temperature(tmp_path, monkeypatch):
    """Selection on val_kd compares epochs of a rising temperature at one temperature."""
    import json

    import spectrumkd.distillation.trainer as trainer_module

    examples, validation = make_examples(20), make_examples(6, seed=9)
    plan = SpectrumKD(SpectrumKDConfig(lambda_a=0.2, lambda_b=0.1, epochs=3, warmup_epochs=1)).plan(
        [e.id for e in examples], np.arange(20.0)
    )
    assert [e.temperature for e in plan.epochs] == [1.0, 1.5, 2.0]
    teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    saved_kd = {}  # each epoch's student, measured independently when it is validated
    real_evaluate = trainer_module.evaluate

    def measuring_evaluate(accelerator, student, *args, **options):
        epoch = len(saved_kd) + 1
        model = accelerator.unwrap_model(student)
        saved_kd[epoch] = {
            tau: kd_per_token(model, teacher, validation, tau) for tau in (1.0, 1.5, 2.0)
        }
        return real_evaluate(accelerator, student, *args, **options)

    monkeypatch.setattr(trainer_module, "evaluate", measuring_evaluate)
    state = train(
        build_tiny_llama(VOCAB, num_layers=1, seed=2),
        teacher,
        examples,
        TrainConfig(batch_size=4, learning_rate=3e-3),
        tmp_path,
        plan=plan,
        validation=validation,
        accelerator=Accelerator(cpu=True),
    )
    rows = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "val_kd" in line
    ]
    for row, epoch in zip(rows, plan.epochs, strict=True):
        measured = saved_kd[epoch.epoch]
        assert row["val_kd"] == pytest.approx(measured[1.0], rel=1e-5)
        if epoch.temperature == 1.0:
            assert "val_kd_train_tau" not in row
        else:
            assert row["val_kd_train_tau"] == pytest.approx(measured[epoch.temperature], rel=1e-5)
    best = min(rows, key=lambda r: r["val_kd"])
    assert state["best"]["epoch"] == best["epoch"] and state["best"]["value"] == best["val_kd"]


def test_every_saved_student_folder_loads_with_its_tokenizer(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train(
        build_tiny_llama(len(tiny_tokenizer), num_layers=1, seed=2),
        LiveTeacher(build_tiny_llama(len(tiny_tokenizer), num_layers=2, seed=1)),
        make_examples(8),
        TrainConfig(epochs=2, batch_size=4, learning_rate=1e-3),
        tmp_path,
        validation=make_examples(4, seed=9),
        tokenizer=tiny_tokenizer,
        accelerator=Accelerator(cpu=True),
    )
    for folder in ("best", "final"):
        loaded = AutoTokenizer.from_pretrained(tmp_path / folder)
        assert loaded.get_vocab() == tiny_tokenizer.get_vocab()
        model = AutoModelForCausalLM.from_pretrained(tmp_path / folder)
        assert model.config.vocab_size == len(tiny_tokenizer)
