"""Trainer settings beyond the plain loop: on-policy GKD, chunked loss, LoRA, mid-epoch resume,
metric trackers."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from conftest import build_tiny_llama
from test_trainer import VOCAB, KilledTeacher, grads, make_examples

from spectrumkd.distillation.objectives import OBJECTIVES, get_objective
from spectrumkd.distillation.on_policy import (
    prompt_lengths,
    rows_to_sample,
    with_student_responses,
)
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.steps import (
    accumulate_gradients,
    collate_with_ids,
    full_step_losses,
    step_losses,
)
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.distillation.trainer import train

EOS = 2


def test_rows_to_sample_rounds_half_up_and_stays_in_range():
    assert [rows_to_sample(n, 0.5) for n in (1, 2, 3, 4, 8)] == [1, 1, 2, 2, 4]
    assert rows_to_sample(5, 0.0) == 0 and rows_to_sample(5, 1.0) == 5
    with pytest.raises(ValueError, match="on_policy_fraction=1.5"):
        rows_to_sample(4, 1.5)


def greedy_reference(model, prompt: list[int], steps: int) -> list[int]:
    """Argmax decoding by hand, one prompt alone (no padding), stopping after EOS."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([tokens])).logits[0, -1]
            tokens.append(int(logits.argmax()))
            if tokens[-1] == EOS:
                break
    return tokens[len(prompt) :]


def test_student_responses_replace_the_first_rows_and_keep_prompts():
    torch.manual_seed(0)
    model = build_tiny_llama(VOCAB, num_layers=1, seed=3)
    examples = make_examples(4, seed=4)
    batch = collate_with_ids(examples, 0)
    # Near-zero temperature: sampling becomes argmax, so an independent greedy loop on each
    # prompt alone must produce the same tokens (this also checks the left padding).
    new = with_student_responses(
        model, batch, 0.5, pad_token_id=0, eos_token_ids=(EOS,), temperature=1e-4, max_new_tokens=6
    )
    assert new["on_policy"].tolist() == [True, True, False, False]
    starts = prompt_lengths(batch["labels"], batch["attention_mask"])
    for row, example in enumerate(examples):
        length = int(new["attention_mask"][row].sum())
        tokens, labels = new["input_ids"][row, :length], new["labels"][row, :length]
        if row < 2:
            prompt = example.input_ids[: starts[row]]
            response = greedy_reference(model, prompt, 6)
            assert tokens.tolist() == prompt + response
            assert labels.tolist() == [-100] * len(prompt) + response
        else:  # untouched rows
            assert tokens.tolist() == example.input_ids and labels.tolist() == example.labels
        assert (new["labels"][row, length:] == -100).all()
    assert new["ids"] == batch["ids"]


def test_samples_are_cut_after_the_first_eos():
    # The decode loop behind on-policy sampling, driven by a model that says 5, 6, EOS, 7, 8.
    from test_generation import Scripted

    batch = collate_with_ids(make_examples(2), 0)
    new = with_student_responses(
        Scripted(VOCAB, [5, 6, EOS, 7, 8]),
        batch,
        1.0,
        pad_token_id=0,
        eos_token_ids=(EOS,),
        temperature=1.0,
        max_new_tokens=5,
    )
    for row in range(2):
        labels = new["labels"][row][new["labels"][row] != -100].tolist()
        assert labels == [5, 6, EOS]


def test_on_policy_rows_count_for_kd_but_not_for_ce():
    teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    batch = collate_with_ids(make_examples(4), 0)
    marked = {**batch, "on_policy": torch.tensor([True, False, True, False])}
    objective = get_objective("forward_kl")
    ce_marked, kd_marked = step_losses(student, teacher, marked, objective, 1.0)
    ce_all, kd_all = step_losses(student, teacher, batch, objective, 1.0)
    assert kd_marked.item() == pytest.approx(kd_all.item(), rel=1e-6)
    # Independent: the model's own labels= loss on the two ground-truth rows (a mean: x tokens).
    rows = batch["labels"][[1, 3]]
    with torch.no_grad():
        own = student(
            input_ids=batch["input_ids"][[1, 3]],
            attention_mask=batch["attention_mask"][[1, 3]],
            labels=rows,
        ).loss
    assert ce_marked.item() == pytest.approx(own.item() * int((rows[:, 1:] != -100).sum()), 1e-5)
    assert ce_marked.item() < ce_all.item()


def test_on_policy_gkd_trains_and_the_teacher_scores_student_samples(tmp_path):
    examples = make_examples(8)
    dataset_rows = {tuple(e.input_ids) for e in examples}
    seen: list[tuple[int, ...]] = []

    class RecordingTeacher(LiveTeacher):
        def record(self, batch) -> None:
            for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
                seen.append(tuple(row[mask.bool()].tolist()))

        def logits(self, batch):  # loss_impl full
            self.record(batch)
            return super().logits(batch)

        def hidden_states(self, batch):  # the chunked engine (loss_impl auto here)
            self.record(batch)
            return super().hidden_states(batch)

    config = TrainConfig(
        objective="jsd", on_policy_fraction=0.5, epochs=1, batch_size=4, max_new_tokens=4
    )
    assert config.alpha == 0.0  # the paper's on-policy default
    state = train(
        build_tiny_llama(VOCAB, num_layers=1, seed=2),
        RecordingTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1)),
        examples,
        config,
        tmp_path,
        eos_token_id=EOS,
        accelerator=Accelerator(cpu=True),
    )
    assert state["step"] == 2
    sampled = [row for row in seen if row not in dataset_rows]
    assert len(sampled) == 4  # half of each batch of 4, in both steps


def test_on_policy_needs_a_teacher_that_scores_new_sequences(tmp_path):
    class OfflineTeacher(LiveTeacher):
        scores_new_sequences = False

    with pytest.raises(ValueError, match="on-policy sampling needs a teacher"):
        train(
            build_tiny_llama(VOCAB, num_layers=1, seed=2),
            OfflineTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1)),
            make_examples(4),
            TrainConfig(on_policy_fraction=0.5),
            tmp_path,
            accelerator=Accelerator(cpu=True),
        )


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_chunked_loss_gives_the_gradients_of_the_full_logits_loss(name):
    examples = make_examples(6)
    teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    objective = get_objective(name)
    accelerator = Accelerator(cpu=True)
    results = []
    for chunk_size in (None, 7):
        student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
        group = [collate_with_ids(examples[:3], 0), collate_with_ids(examples[3:], 0)]
        sums = accumulate_gradients(
            accelerator, student, teacher, group, objective, 0.3, 2.0, chunk_size=chunk_size
        )
        results.append((sums, grads(student)))
    (full_sums, full_grads), (chunked_sums, chunked_grads) = results
    assert chunked_sums[2] == full_sums[2]
    assert chunked_sums[0] == pytest.approx(full_sums[0], rel=1e-5)
    assert chunked_sums[1] == pytest.approx(full_sums[1], rel=1e-5, abs=1e-7)
    for a, b in zip(full_grads, chunked_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_lora_trains_only_adapters_and_saves_a_merged_student(tmp_path):
    from transformers import AutoModelForCausalLM

    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    train(
        student,
        LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1)),
        make_examples(8),
        TrainConfig(epochs=2, batch_size=4, learning_rate=1e-2, lora_rank=4),
        tmp_path,
        accelerator=Accelerator(cpu=True),
    )
    # peft wraps the student in place: its base weights are frozen and unchanged.
    for name, value in student.state_dict().items():
        if "lora_" not in name:
            base = name.replace(".base_layer", "")
            torch.testing.assert_close(value, initial[base], rtol=0, atol=0)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not any("lora" in k for k in saved.state_dict())
    batch = collate_with_ids(make_examples(2, seed=7), 0)
    student.eval()  # LoRA dropout off
    with torch.no_grad():
        merged = saved(input_ids=batch["input_ids"]).logits
        adapted = student(input_ids=batch["input_ids"]).logits
        base = build_tiny_llama(VOCAB, num_layers=1, seed=2)(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(merged, base, atol=1e-4)  # the adapters learned something


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    # On-policy sampling draws from the RNG, so the RNG state must survive the resume exactly.
    examples = make_examples(16)
    config = TrainConfig(
        epochs=2,
        batch_size=4,
        learning_rate=1e-3,
        save_every_steps=1,
        on_policy_fraction=0.5,
        max_new_tokens=3,
        seed=3,
    )
    teacher_model = build_tiny_llama(VOCAB, num_layers=2, seed=1)

    def run(teacher, folder, student):
        return train(
            student,
            teacher,
            examples,
            config,
            tmp_path / folder,
            eos_token_id=EOS,
            accelerator=Accelerator(cpu=True),
        )

    clean = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    run(LiveTeacher(teacher_model), "clean", clean)
    with pytest.raises(KeyboardInterrupt):  # 4 steps per epoch: die in step 2 of epoch 1
        run(KilledTeacher(teacher_model, die_at=2), "killed", build_tiny_llama(VOCAB, 1, seed=2))
    saved = json.loads((tmp_path / "killed" / "checkpoint" / "trainer_state.json").read_text())
    assert (saved["epoch"], saved["step"], saved["step_in_epoch"]) == (0, 1, 1)
    resumed = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    state = run(LiveTeacher(teacher_model), "killed", resumed)
    assert (state["epoch"], state["step"]) == (2, 8)
    for a, b in zip(clean.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tensorboard_receives_the_logged_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(
        build_tiny_llama(VOCAB, num_layers=1, seed=2),
        LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1)),
        make_examples(8),
        TrainConfig(epochs=1, batch_size=2, log_every=1, report_to="tensorboard"),
        tmp_path,
    )
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    folders = {path.parent for path in tmp_path.rglob("events.out.tfevents.*")}
    accumulators = [EventAccumulator(str(folder)).Reload() for folder in folders]
    with_ce = [a for a in accumulators if "ce" in a.Tags()["scalars"]]
    assert len(with_ce) == 1, f"expected one TensorBoard run with 'ce' among {folders}"
    ce = [(e.step, e.value) for e in with_ce[0].Scalars("ce")]
    assert [step for step, _ in ce] == [row["step"] for row in logged]
    for (_, value), row in zip(ce, logged, strict=True):
        assert value == pytest.approx(row["ce"], rel=1e-6)


def test_new_settings_are_validated():
    with pytest.raises(ValueError, match="loss_impl='fused'"):
        TrainConfig(loss_impl="fused")
    with pytest.raises(ValueError, match="report_to='mlflow'"):
        TrainConfig(report_to="mlflow")
    with pytest.raises(ValueError, match="sampling_temperature=0"):
        TrainConfig(sampling_temperature=0)
    with pytest.raises(ValueError, match="set alpha=0"):
        TrainConfig(loss_impl="chunked", on_policy_fraction=0.5, alpha=0.3)
    with pytest.raises(ValueError, match="val_rouge='beam'"):
        TrainConfig(val_rouge="beam")
    with pytest.raises(ValueError, match="select_metric=val_rouge needs val_rouge"):
        TrainConfig(select_metric="val_rouge")
    assert TrainConfig().alpha == 0.3 and TrainConfig(on_policy_fraction=0.5).alpha == 0.0


def cached_teacher_and_batch(folder) -> tuple:
    """A float32 top-8 cache of a tiny teacher on 6 examples, and their batch."""
    from spectrumkd.distillation.teacher_cache import CachedTeacher, build_teacher_cache
    from spectrumkd.scoring import ScoringSettings

    examples = make_examples(6)
    teacher = build_tiny_llama(VOCAB, num_layers=2, seed=1)
    cache = build_teacher_cache(
        teacher, examples, folder, k=8, settings=ScoringSettings(precision="float32")
    )
    return CachedTeacher(cache, VOCAB), collate_with_ids(examples, 0)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_a_cached_teacher_step_reads_the_top_k_and_equals_the_dense_step(tmp_path, name):
    """With the offline cache the step runs the objective over the top k and the tail bucket
    (no [B, T, V] tensor of -inf); its losses and gradients are those of kd_loss on the cache's
    dense logits and tail, to float rounding."""
    from spectrumkd.distillation.objectives import kd_loss

    cached, batch = cached_teacher_and_batch(tmp_path)
    objective = get_objective(name)

    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    ce, (kd,) = full_step_losses(student, cached, batch, objective, (1.5,))
    (0.3 * ce + 0.7 * kd).backward()
    top_k_grads = grads(student)

    dense = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    logits = dense(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    tail = cached.tail_logsumexp(batch, 1.5)[:, :-1]
    dense_kd, _ = kd_loss(
        logits[:, :-1], cached.logits(batch)[:, :-1], labels, objective, 1.5, tail
    )
    dense_ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="sum"
    )
    (0.3 * dense_ce + 0.7 * dense_kd).backward()
    torch.testing.assert_close(kd, dense_kd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce, dense_ce, rtol=1e-6, atol=1e-6)
    for a, b in zip(top_k_grads, grads(dense), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
def test_a_cached_teacher_step_through_the_chunked_engine_equals_the_top_k_step(tmp_path, name):
    """loss_impl chunked (what auto takes) with a cached teacher: the student's logits chunk by
    chunk against the cache's top k and tail, the same losses and gradients as the top-k step
    over full logits, to float rounding."""
    cached, batch = cached_teacher_and_batch(tmp_path)
    objective = get_objective(name)
    results = []
    for chunk_size in (None, 16):
        student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
        ce, kd = step_losses(student, cached, batch, objective, 1.5, chunk_size=chunk_size)
        (0.3 * ce + 0.7 * kd).backward()
        results.append((ce, kd, grads(student)))
    (ce_full, kd_full, grads_full), (ce, kd, grads_chunked) = results
    torch.testing.assert_close(kd, kd_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce, ce_full, rtol=1e-6, atol=1e-5)
    for a, b in zip(grads_chunked, grads_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_with_alpha_zero_the_ce_is_logged_but_left_out_of_the_graph(chunk_size):
    teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    batch = collate_with_ids(make_examples(4), 0)
    objective = get_objective("forward_kl")
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    ce, kd = step_losses(student, teacher, batch, objective, 1.0, chunk_size=chunk_size)
    assert ce.requires_grad
    kd.backward()
    kd_only = grads(student)

    other = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    ce0, kd0 = step_losses(other, teacher, batch, objective, 1.0, chunk_size=chunk_size, alpha=0.0)
    assert not ce0.requires_grad and kd0.requires_grad
    torch.testing.assert_close(ce0, ce.detach(), rtol=1e-6, atol=1e-6)
    (0.0 * ce0 + kd0).backward()
    for a, b in zip(grads(other), kd_only, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_the_ce_over_response_rows_is_the_ce_over_every_position():
    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    batch = collate_with_ids(make_examples(6), 0)
    teacher = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    ce, _ = step_losses(student, teacher, batch, get_objective("forward_kl"), 1.0)
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        reference = torch.nn.functional.cross_entropy(
            logits.logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="sum"
        )
    torch.testing.assert_close(ce.detach(), reference, rtol=1e-6, atol=1e-5)


def test_loss_impl_auto_takes_the_chunked_engine_only_where_it_applies():
    from spectrumkd.distillation.steps import resolve_loss_impl

    student = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    live = LiveTeacher(build_tiny_llama(VOCAB, num_layers=2, seed=1))
    assert TrainConfig().loss_impl == "auto"
    assert resolve_loss_impl(TrainConfig(), student, live) == "chunked"
    for explicit in ("full", "chunked"):
        assert resolve_loss_impl(TrainConfig(loss_impl=explicit), student, live) == explicit

    class Signal:  # a signal of dense logits alone: neither hidden states nor a top k
        def logits(self, batch):
            raise AssertionError("not called")

    assert resolve_loss_impl(TrainConfig(), student, Signal()) == "full"

    class Cache(Signal):  # a teacher cache, read as its top k and tail
        vocab_size = VOCAB

        def __init__(self, width: int) -> None:
            self.teacher_vocab_size = width

        def top_k(self, batch, temperature):
            raise AssertionError("not called")

    assert resolve_loss_impl(TrainConfig(), student, Cache(VOCAB)) == "chunked"
    # a cache wider than the student's vocabulary is read densely (its extra ids dropped)
    assert resolve_loss_impl(TrainConfig(), student, Cache(VOCAB + 8)) == "full"
    # The engine would take the CE of the student's own samples.
    on_policy = TrainConfig(on_policy_fraction=0.5, alpha=0.3)
    assert resolve_loss_impl(on_policy, student, live) == "full"
    assert resolve_loss_impl(TrainConfig(on_policy_fraction=0.5), student, live) == "chunked"
    biased = build_tiny_llama(VOCAB, num_layers=1, seed=2)
    biased.lm_head = torch.nn.Linear(biased.lm_head.in_features, VOCAB, bias=True)
    assert resolve_loss_impl(TrainConfig(), biased, live) == "full"
    assert resolve_loss_impl(TrainConfig(), student, live, sharded=True) == "full"  # FSDP
