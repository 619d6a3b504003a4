"""On-policy GKD with a student whose padded vocabulary is larger than the teacher's (issue 12,
item 13): the student must sample only ids both models and the tokenizer share."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from conftest import build_tiny_llama
from test_trainer import make_examples

from spectrumkd.distillation.objectives import get_objective
from spectrumkd.distillation.on_policy import (
    sample_responses,
    sampling_vocabulary,
    with_student_responses,
)
from spectrumkd.distillation.signals import LiveTeacher
from spectrumkd.distillation.steps import collate_with_ids, step_losses
from spectrumkd.distillation.train_config import TrainConfig
from spectrumkd.distillation.trainer import train
from spectrumkd.models.generation import generate
from spectrumkd.models.pairing import VocabAlignment, check_pair, missing_token_ids

EOS = 2
PADDED_ROWS = 32


def favour_padded_rows(model: torch.nn.Module, vocab: int, favoured: list[int]) -> None:
    """Give ``model`` an output head with a huge bias on its padded rows past ``vocab`` (and on
    the ``favoured`` ids), so an unmasked sampler picks them almost surely."""
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[vocab:] = 1e3
        head.bias[favoured] = 1e3
    model.set_output_embeddings(head)


def padded_pair(vocab: int, favoured: list[int] = ()) -> tuple[torch.nn.Module, torch.nn.Module]:
    teacher = build_tiny_llama(vocab, num_layers=1, seed=1)
    student = build_tiny_llama(vocab + PADDED_ROWS, num_layers=1, seed=2)
    favour_padded_rows(student, vocab, list(favoured))
    return teacher, student


def test_padded_student_samples_only_the_shared_vocabulary(tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    teacher_model, student = padded_pair(vocab)
    alignment = check_pair(tiny_tokenizer, tiny_tokenizer, teacher_model.config, student.config)
    assert (alignment.vocab_size, alignment.student_vocab_size) == (vocab, vocab + PADDED_ROWS)
    teacher = LiveTeacher(teacher_model, alignment)
    batch = collate_with_ids(make_examples(4, seed=3), 0)
    options = {"pad_token_id": 0, "eos_token_ids": (EOS,), "temperature": 1.0}

    torch.manual_seed(0)
    unmasked = with_student_responses(student, batch, 1.0, max_new_tokens=6, **options)
    assert int(unmasked["input_ids"].max()) >= vocab  # the head really favours padded rows
    with pytest.raises(IndexError):  # what on-policy training hit before the fix
        teacher.logits(unmasked)

    torch.manual_seed(0)
    new = with_student_responses(
        student,
        batch,
        1.0,
        max_new_tokens=6,
        vocab=sampling_vocabulary(student, teacher),
        **options,
    )
    sampled = new["labels"][new["labels"] != -100]
    assert len(sampled) > 0 and int(sampled.max()) < vocab
    ce, kd = step_losses(student, teacher, new, get_objective("forward_kl"), 1.0)
    assert torch.isfinite(ce) and torch.isfinite(kd)


def test_ids_the_tokenizer_lacks_are_never_sampled():
    vocab = 96
    missing = (5, 7)
    _, student = padded_pair(vocab, favoured=list(missing))
    alignment = VocabAlignment(vocab, vocab, vocab + PADDED_ROWS, missing_ids=missing)
    torch.manual_seed(0)
    samples = sample_responses(
        student,
        [[3, 4, 9], [10, 11]],
        pad_token_id=0,
        eos_token_ids=(EOS,),
        temperature=1.0,
        max_new_tokens=8,
        vocab=alignment,
    )
    tokens = {token for sample in samples for token in sample}
    assert tokens and not tokens & set(missing) and max(tokens) < vocab


def test_sampling_vocabulary_without_an_alignment_uses_the_rows_both_models_have():
    teacher_model, student = padded_pair(96)
    vocab = sampling_vocabulary(student, LiveTeacher(teacher_model))
    assert (vocab.vocab_size, vocab.student_vocab_size, vocab.missing_ids) == (96, 128, ())
    aligned = VocabAlignment(90, 96, 128, missing_ids=(4,))
    assert sampling_vocabulary(student, LiveTeacher(teacher_model, aligned)) is aligned


def test_missing_token_ids_are_the_holes_below_the_tokenizer_length(tiny_tokenizer):
    assert missing_token_ids(tiny_tokenizer) == ()

    class Holey:
        def __len__(self) -> int:
            return 6

        def get_vocab(self) -> dict[str, int]:
            return {"a": 0, "b": 1, "d": 3, "e": 4, "f": 5, "x": 9}

    assert missing_token_ids(Holey()) == (2,)


def test_evaluation_generation_never_emits_padded_rows(tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    _, padded = padded_pair(vocab)
    # The same model without the padded rows: masking them must give exactly its outputs.
    twin = build_tiny_llama(vocab, num_layers=1, seed=2)
    twin.load_state_dict(
        {
            name: value[:vocab]
            if name in ("model.embed_tokens.weight", "lm_head.weight")
            else value
            for name, value in padded.state_dict().items()
            if name != "lm_head.bias"
        },
        strict=False,
    )
    favour_padded_rows(twin, vocab, [])
    prompts = ["Tell me about llamas.", "What is two plus two?"]
    outputs = generate(padded, tiny_tokenizer, prompts, max_new_tokens=6)
    assert outputs == generate(twin, tiny_tokenizer, prompts, max_new_tokens=6)
    assert all(outputs)  # real text: the padded rows, which decode to nothing, were never picked


def test_on_policy_training_of_a_padded_student_runs(tmp_path, tiny_tokenizer):
    vocab = 96
    teacher_model, student = padded_pair(vocab)
    alignment = VocabAlignment(vocab, vocab, vocab + PADDED_ROWS)
    config = TrainConfig(
        objective="jsd", on_policy_fraction=1.0, epochs=1, batch_size=2, max_new_tokens=4
    )
    state = train(
        student,
        LiveTeacher(teacher_model, alignment),
        make_examples(4),
        config,
        tmp_path,
        eos_token_id=EOS,
        accelerator=Accelerator(cpu=True),
    )
    assert state["step"] == 2


def test_samples_end_after_their_first_eos_and_follow_the_global_rng():
    """The KV-cached loop behind on-policy sampling: a row is cut after its first EOS (kept, it
    is a label), it gets no forward after it, and the draws come from the global torch RNG
    (the trainer's checkpoints save it), so a seed repeats them."""
    from test_generation import Scripted

    model = Scripted(96, [5, 6, EOS, 7, 8])
    samples = sample_responses(
        model,
        [[3, 4, 9], [10, 11]],
        pad_token_id=0,
        eos_token_ids=(EOS,),
        temperature=1.0,
        max_new_tokens=5,
    )
    assert samples == [[5, 6, EOS], [5, 6, EOS]] and model.batch_sizes == [2, 2, 2]

    student = build_tiny_llama(96, num_layers=1, seed=4)
    options = {"pad_token_id": 0, "eos_token_ids": (EOS,), "temperature": 1.0, "max_new_tokens": 6}
    prompts = [[3, 4, 9], [10, 11], [12]]
    torch.manual_seed(7)
    first = sample_responses(student, prompts, **options)
    torch.manual_seed(7)
    assert sample_responses(student, prompts, **options) == first
    torch.manual_seed(8)
    assert sample_responses(student, prompts, **options) != first
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_responses(student, prompts, **{**options, "temperature": 0.0})


@pytest.mark.parametrize(("mixed_precision", "expected"), [("no", "no"), ("bf16", "bf16")])
def test_on_policy_samples_in_the_runs_precision(tmp_path, monkeypatch, mixed_precision, expected):
    """A float32 run samples in float32 too (sampling defaults to auto, bf16 on an AMX CPU)."""
    import spectrumkd.distillation.steps as steps_module

    seen = []
    sample = steps_module.with_student_responses

    def recording(*args, **kwargs):
        seen.append(kwargs["precision"])
        return sample(*args, **kwargs)

    monkeypatch.setattr(steps_module, "with_student_responses", recording)
    vocab = 96
    teacher_model, student = padded_pair(vocab)
    config = TrainConfig(
        objective="jsd",
        on_policy_fraction=1.0,
        epochs=1,
        batch_size=2,
        max_new_tokens=3,
        mixed_precision=mixed_precision,
    )
    train(
        student,
        LiveTeacher(teacher_model, VocabAlignment(vocab, vocab, vocab + PADDED_ROWS)),
        make_examples(4),
        config,
        tmp_path,
        eos_token_id=EOS,
    )
    assert seen and set(seen) == {expected}
