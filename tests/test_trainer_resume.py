"""Kill-and-resume of the trainer: the checkpoint swap, its recovery and the metrics log."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import build_tiny_llama
from test_trainer import VOCAB, KilledTeacher, make_examples

import spectrumkd.distillation.checkpoints as checkpoints_module
import spectrumkd.distillation.trainer as trainer_module
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.distillation.trainer import train


@functools.cache
def teacher_model() -> torch.nn.Module:
    return build_tiny_llama(VOCAB, num_layers=2, seed=1)


class CountingTeacher(LiveTeacher):
    def __init__(self, model) -> None:
        super().__init__(model)
        self.calls = 0

    def logits(self, batch):  # loss_impl full
        self.calls += 1
        return super().logits(batch)

    def hidden_states(self, batch):  # the chunked engine (loss_impl auto with a live teacher)
        self.calls += 1
        return super().hidden_states(batch)


def run(folder: Path, config: TrainConfig, teacher=None, **options) -> tuple[dict, torch.nn.Module]:
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)  # each run starts as a fresh process
    state = train(
        student,
        teacher or LiveTeacher(teacher_model()),
        make_examples(12),
        config,
        folder,
        accelerator=Accelerator(cpu=True),
        **options,
    )
    return state, student


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def metric_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


CONFIG = TrainConfig(epochs=3, batch_size=4, learning_rate=1e-3, warmup_ratio=0.2, seed=5)


class StagedSwapKill:
    """Raises at the instant the staged checkpoint is about to be renamed into place for the
    ``nth`` time: the previous checkpoint is already gone and the new one only staged."""

    def __init__(self, monkeypatch, nth: int) -> None:
        self.nth, self.seen, self.old_checkpoint_present = nth, 0, None
        real = Path.rename

        def rename(path: Path, target):
            if path.name == f".{checkpoints_module.CHECKPOINT}.tmp":
                self.seen += 1
                if self.seen == self.nth:
                    self.old_checkpoint_present = Path(target).exists()
                    raise KeyboardInterrupt("killed during the checkpoint swap")
            return real(path, target)

        monkeypatch.setattr(Path, "rename", rename)


def test_a_kill_between_removing_the_checkpoint_and_renaming_the_new_one_resumes_from_it(
    tmp_path, monkeypatch
):
    _, clean = run(tmp_path / "clean", CONFIG)

    with monkeypatch.context() as patch:
        kill = StagedSwapKill(patch, nth=2)  # the end-of-epoch-2 checkpoint (step 6)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "killed", CONFIG)
    assert kill.old_checkpoint_present is False  # killed between the removal and the rename
    assert not (tmp_path / "killed" / "checkpoint").exists()

    teacher = CountingTeacher(teacher_model())
    state, resumed = run(tmp_path / "killed", CONFIG, teacher)
    assert (state["epoch"], state["step"]) == (3, 9)
    assert teacher.calls == 3  # epoch 3 only: the staged epoch-2 checkpoint was adopted
    assert_same_weights(clean, resumed)
    assert sorted(p.name for p in (tmp_path / "killed").iterdir() if p.name.startswith(".")) == []


def test_an_incomplete_staged_checkpoint_is_discarded(tmp_path, monkeypatch):
    """A kill inside save_state leaves a staging folder without the state file: the previous
    checkpoint is the one to resume from."""
    _, clean = run(tmp_path / "clean", CONFIG)
    real = Accelerator.save_state
    calls = []

    def dies_after_writing(self, output_dir=None, **options):
        calls.append(output_dir)
        result = real(self, output_dir, **options)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed after save_state, before the state file")
        return result

    with monkeypatch.context() as patch:
        patch.setattr(Accelerator, "save_state", dies_after_writing)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "killed", CONFIG)
    staging = tmp_path / "killed" / f".{checkpoints_module.CHECKPOINT}.tmp"
    assert (staging / "model.safetensors").exists()  # everything but the state file was written
    assert not (staging / checkpoints_module.STATE_FILE).exists()

    teacher = CountingTeacher(teacher_model())
    state, resumed = run(tmp_path / "killed", CONFIG, teacher)
    assert (state["epoch"], state["step"]) == (3, 9)
    assert teacher.calls == 6  # epochs 2 and 3: resumed from the epoch-1 checkpoint
    assert_same_weights(clean, resumed)
    assert not staging.exists()


def test_a_half_swapped_model_folder_is_restored(tmp_path):
    """A kill between moving best/ aside and renaming its successor in leaves the old one."""
    best = tmp_path / "best"
    best.mkdir()
    (best / "model.safetensors").write_text("old")
    staging = tmp_path / ".best.tmp"
    staging.mkdir()
    (staging / "model.safetensors").write_text("half-written")
    best.rename(tmp_path / ".best.old")  # the first step of the swap, then the kill

    checkpoints_module.recover_folder(best)
    assert (best / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


@pytest.mark.parametrize(
    ("kill", "save_every_steps"),
    [
        ("teacher call 7 (epoch 2's last step; step 5 logged, last checkpoint at step 4)", 2),
        ("the epoch-2 checkpoint, after epoch 2's validation row (last checkpoint at step 6)", 3),
    ],
)
def test_a_resumed_run_logs_every_step_once(tmp_path, monkeypatch, kill, save_every_steps):
    config = TrainConfig(
        epochs=3,
        batch_size=4,
        learning_rate=1e-3,
        seed=5,
        log_every=1,
        save_every_steps=save_every_steps,
    )
    validation = make_examples(4, seed=9)
    run(tmp_path / "clean", config, validation=validation)

    with monkeypatch.context() as patch:
        if kill.startswith("teacher"):
            teacher = KilledTeacher(teacher_model(), die_at=3 + 1 + 3)  # + epoch 1's validation
        else:
            teacher = None
            real, calls = trainer_module.save_checkpoint, []

            def dies_at_the_fourth(*args):
                calls.append(args)
                if len(calls) == 4:  # steps 3, epoch 1, step 6, then epoch 2's end
                    raise KeyboardInterrupt("killed before the epoch-2 checkpoint")
                return real(*args)

            patch.setattr(trainer_module, "save_checkpoint", dies_at_the_fourth)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "killed", config, teacher, validation=validation)
    run(tmp_path / "killed", config, validation=validation)

    clean, resumed = metric_rows(tmp_path / "clean"), metric_rows(tmp_path / "killed")
    assert [(r["epoch"], r["step"], sorted(r)) for r in resumed] == [
        (r["epoch"], r["step"], sorted(r)) for r in clean
    ]
    for a, b in zip(clean, resumed, strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def test_a_restart_without_a_checkpoint_drops_the_rows_of_the_killed_attempt(tmp_path):
    config = TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3, seed=5, log_every=1)
    with pytest.raises(KeyboardInterrupt):  # dies in step 3, before the first checkpoint
        run(tmp_path, config, KilledTeacher(teacher_model(), die_at=3))
    assert [row["step"] for row in metric_rows(tmp_path)] == [1, 2]
    run(tmp_path, config)
    assert [row["step"] for row in metric_rows(tmp_path)] == [1, 2, 3]


def test_a_metric_row_torn_by_the_kill_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "step": 1, "ce": 2.0}\n{"epoch": 1, "step": 2, "c')
    checkpoints_module.drop_rows_past(path, epoch=0, step=1)
    assert path.read_text() == '{"epoch": 1, "step": 1, "ce": 2.0}\n'


def test_a_checkpoint_whose_best_val_kd_predates_temperature_1_does_not_compete(tmp_path):
    """Checkpoints written when val_kd was measured at each epoch's temperature hold a best value
    at another temperature: a resumed run must not compare its tau-1 values with it."""
    config = TrainConfig(epochs=3, batch_size=4, learning_rate=1e-3, seed=5, temperature=2.0)
    validation = make_examples(4, seed=9)
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 3, after epoch 2's checkpoint
        run(
            tmp_path, config, KilledTeacher(teacher_model(), 2 * (3 + 1) + 1), validation=validation
        )
    state_file = tmp_path / checkpoints_module.CHECKPOINT / checkpoints_module.STATE_FILE
    saved = json.loads(state_file.read_text())
    assert saved["best"]["metric"] == "val_kd"
    saved.pop("val_kd_temperature", None)  # as an older trainer wrote it, with a tau-2 value
    saved["best"]["value"] = 1e-9
    state_file.write_text(json.dumps(saved))

    state, _ = run(tmp_path, config, validation=validation)
    assert state["best"]["epoch"] == 3 and state["best"]["value"] > 1e-9


def test_a_torn_line_completed_by_a_later_append_does_not_block_resume(tmp_path):
    """A kill mid-append, then an older trainer appending the next row to the same line: the
    line no longer parses; the resume drops it with the rows past the checkpoint."""
    from spectrumkd.distillation.checkpoints import drop_rows_past

    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"epoch": 1, "step": 1, "ce": 1.0}\n'
        '{"epoch": 1, "step": 2, "ce"{"epoch": 1, "step": 2, "ce": 0.9}\n'
        '{"epoch": 1, "step": 3, "ce": 0.8}\n'
    )
    drop_rows_past(path, epoch=0, step=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"epoch": 1, "step": 1, "ce": 1.0}]


def test_a_checkpoint_of_another_curriculum_plan_is_refused_in_one_line(tmp_path):
    from spectrumkd.curation.plan import CurriculumPlan, EpochPlan

    ids = [e.id for e in make_examples(12)]

    def plan(temperature: float) -> CurriculumPlan:
        return CurriculumPlan("test", tuple(EpochPlan(e, ids[:8], temperature) for e in (1, 2, 3)))

    run(tmp_path, CONFIG, plan=plan(1.0))
    run(tmp_path, CONFIG, plan=plan(1.0))  # the same plan: the finished run is taken as it is
    with pytest.raises(ValueError) as caught:
        run(tmp_path, CONFIG, plan=plan(1.5))
    message = str(caught.value)
    assert "holds a checkpoint of a different run (curriculum plan changed)" in message
    assert "\n" not in message


def test_a_checkpoint_written_before_plans_had_a_digest_still_resumes(tmp_path):
    state, _ = run(tmp_path, CONFIG)
    saved = tmp_path / "checkpoint" / "trainer_state.json"
    values = json.loads(saved.read_text())
    del values["plan"]
    saved.write_text(json.dumps(values))
    again, _ = run(tmp_path, CONFIG)
    assert again["step"] == state["step"]


def test_a_checkpoint_resumes_across_loss_impl_defaults_that_leave_its_loss_as_it_was(tmp_path):
    """loss_impl and chunk_size count by the loss path they resolve to: a checkpoint of the
    full-logits path written before ``auto`` and the automatic chunk size existed (its state
    without ``loss_path``, loss_impl full, chunk_size 1024) continues under loss_impl full at
    any chunk size and under ``auto`` (which would chunk with a live teacher: it keeps the run on
    the path it started on), and is refused in one line under an explicit ``chunked``."""
    config = TrainConfig(epochs=1, batch_size=4, loss_impl="full")
    finished, student = run(tmp_path, config)
    state_file = tmp_path / "checkpoint" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["loss_path"] is None
    del state["loss_path"]
    state["config"].update(loss_impl="full", chunk_size=1024)
    state_file.write_text(json.dumps(state))

    again, resumed = run(tmp_path, TrainConfig(epochs=1, batch_size=4, loss_impl="full"))
    assert again["step"] == finished["step"]  # nothing trained again
    assert_same_weights(resumed, student)
    kept, resumed = run(tmp_path, TrainConfig(epochs=1, batch_size=4))
    assert kept["step"] == finished["step"] and kept["loss_path"] is None
    assert_same_weights(resumed, student)
    with pytest.raises(
        ValueError,
        match="full logits in the checkpoint, chunks of 16 tokens now; loss_impl: full continues it",
    ):
        run(tmp_path, TrainConfig(epochs=1, batch_size=4, loss_impl="chunked", chunk_size=16))


def test_a_finished_runs_checkpoint_keeps_no_optimiser_moments_and_still_resumes(tmp_path):
    """The last checkpoint of a finished run drops AdamW's moments (the run steps no more); a
    rerun loads it, trains nothing and hands back the trained student."""
    config = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-3, seed=5)
    folder = tmp_path / "run"
    killed = KilledTeacher(teacher_model(), die_at=5)  # in epoch 2 (3 steps an epoch)
    with pytest.raises(KeyboardInterrupt):
        run(folder, config, teacher=killed)
    moments = torch.load(folder / "checkpoint" / "optimizer.bin", weights_only=False)["state"]
    assert moments and all("exp_avg" in entry for entry in moments.values())  # mid-run: kept
    state, trained = run(folder, config)
    assert state["epoch"] == 2
    finished = torch.load(folder / "checkpoint" / "optimizer.bin", weights_only=False)
    assert finished["state"] == {} and finished["param_groups"]  # the groups load as before
    counting = CountingTeacher(teacher_model())
    again, reloaded = run(folder, config, teacher=counting)
    assert counting.calls == 0 and again["step"] == state["step"]
    assert_same_weights(trained, reloaded)


def test_a_run_resumed_under_auto_trains_on_the_loss_path_it_started_on(tmp_path):
    """A run checkpointed on full logits and resumed under ``auto`` (which now chunks with a
    live teacher) finishes on full logits: the weights of an uninterrupted full-logits run."""
    full = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-3, seed=5, loss_impl="full")
    _, uninterrupted = run(tmp_path / "whole", full)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", full, teacher=KilledTeacher(teacher_model(), die_at=5))
    auto = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-3, seed=5)
    state, resumed = run(tmp_path / "resumed", auto)
    assert state["loss_path"] is None
    assert_same_weights(resumed, uninterrupted)


@pytest.mark.parametrize("best_is_last", [True, False])
def test_final_links_to_best_when_the_last_epoch_is_the_kept_one(
    tmp_path, monkeypatch, best_is_last
):
    """``final/`` is hard links to ``best/``'s files when the last epoch is the kept one (the
    same weights, one copy on disk), and a saved student of its own otherwise; either way it
    loads as the trained student."""
    from transformers import AutoModelForCausalLM

    if not best_is_last:  # only the first epoch is ever an improvement
        monkeypatch.setattr(trainer_module, "improves_on", lambda best, *args: best is None)
    examples = make_examples(12)
    config = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-3, seed=5)
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    state = train(
        student, LiveTeacher(teacher_model()), examples[:8], config, tmp_path,
        validation=examples[8:], accelerator=Accelerator(cpu=True),
    )  # fmt: skip
    assert state["best"]["epoch"] == (2 if best_is_last else 1)
    weights = "model.safetensors"
    linked = (tmp_path / "final" / weights).stat().st_ino == (
        tmp_path / "best" / weights
    ).stat().st_ino
    assert linked == best_is_last
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert_same_weights(final, student)


def test_an_auto_checkpoint_that_predates_the_loss_path_record_is_refused_until_told(tmp_path):
    """A checkpoint of loss_impl auto without ``loss_path`` (written before the state recorded
    it) does not say which path auto took: resuming under auto is refused in one line naming
    the settings that continue it; an explicit loss_impl is taken at its word."""
    config = TrainConfig(epochs=1, batch_size=4, loss_impl="full")
    finished, student = run(tmp_path, config)
    state_file = tmp_path / "checkpoint" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["loss_path"]
    state["config"]["loss_impl"] = "auto"
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="predates the record of the path it took; set loss_impl"):
        run(tmp_path, TrainConfig(epochs=1, batch_size=4))
    again, resumed = run(tmp_path, config)
    assert again["step"] == finished["step"] and again["loss_path"] is None
    assert_same_weights(resumed, student)


def test_the_trainer_hands_freed_memory_back_every_ten_steps_and_at_each_epoch_end(
    tmp_path, monkeypatch
):
    calls = []
    monkeypatch.setattr(trainer_module, "release_freed_memory", lambda: calls.append(1))
    state, _ = run(tmp_path, TrainConfig(epochs=8, batch_size=4))  # 3 steps an epoch
    assert state["step"] == 24
    assert len(calls) == 24 // trainer_module.RELEASE_EVERY_STEPS + 8
