"""The curriculum plug-ins: a plain DataLoader loop and a real (tiny) transformers.Trainer run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_llama
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments

from spectrumkd.curation import SpectrumKD, SpectrumKDConfig
from spectrumkd.data import DataCollator, TokenizedExample
from spectrumkd.integrations import CurriculumCallback, CurriculumDataset, CurriculumSampler


def make_examples(n: int, vocab: int, seed: int = 0) -> list[TokenizedExample]:
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        ids = rng.integers(3, vocab, size=int(rng.integers(8, 20))).tolist()
        examples.append(
            TokenizedExample(id=f"row{i:03d}", input_ids=ids, labels=[-100] * 4 + ids[4:])
        )
    return examples


def make_plan(ids, epochs=4, warmup=1):
    difficulties = np.random.default_rng(1).lognormal(0, 1, len(ids))
    config = SpectrumKDConfig(
        lambda_a=0.2, lambda_b=0.1, epochs=epochs, warmup_epochs=warmup, tau_start=1.0, tau_end=2.5
    )
    return SpectrumKD(config).plan(ids, difficulties)


def test_sampler_serves_each_epochs_subset_in_a_plain_loop():
    examples = make_examples(30, 100)
    ids = [e.id for e in examples]
    plan = make_plan(ids)
    sampler = CurriculumSampler(ids, plan, seed=7)
    loader = DataLoader(
        examples, batch_size=4, sampler=sampler, collate_fn=lambda batch: [e.id for e in batch]
    )
    for epoch in range(plan.num_epochs):
        sampler.set_epoch(epoch)
        seen = [i for batch in loader for i in batch]
        assert sorted(seen) == sorted(plan.epoch(epoch + 1).ids)
        assert len(seen) == len(set(seen)) == plan.metadata["window_size"]
    first, again = list(sampler), list(sampler)
    assert first == again  # same (seed, epoch) -> same order, as every process of a DDP job needs
    with pytest.raises(ValueError, match="outside this spectrumkd plan's epochs 1..4"):
        sampler.set_epoch(4)


def test_plan_ids_missing_from_the_dataset_are_named():
    plan = make_plan([f"row{i:03d}" for i in range(20)])
    with pytest.raises(ValueError, match="not in the dataset"):
        CurriculumSampler([f"row{i:03d}" for i in range(19)], plan)


class TinyKDTrainer(Trainer):
    """Forward KL at the callback's temperature, the shape of any user's KD trainer."""

    def __init__(self, *args, teacher, curriculum_callback, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.curriculum_callback = teacher, curriculum_callback
        self.temperatures_used: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        tau = self.curriculum_callback.temperature
        self.temperatures_used.append(tau)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        with torch.no_grad():
            teacher_logits = self.teacher(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).logits
        mask = inputs["labels"] != -100
        log_q = F.log_softmax(outputs.logits[mask] / tau, -1)
        log_p = F.log_softmax(teacher_logits[mask] / tau, -1)
        loss = tau**2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        return (loss, outputs) if return_outputs else loss


def test_a_real_trainer_run_trains_each_epoch_on_the_planned_window(tmp_path):
    vocab = 100
    examples = make_examples(40, vocab)
    ids = [e.id for e in examples]
    plan = make_plan(ids, epochs=4, warmup=1)
    view = CurriculumDataset(examples, ids, plan)
    callback = CurriculumCallback(view)
    seen: dict[int, list[str]] = {}
    pad = DataCollator(pad_token_id=0)

    def collator(batch):
        seen.setdefault(callback.current.epoch, []).extend(e.id for e in batch)
        return pad(batch)

    student, teacher = (
        build_tiny_llama(vocab, num_layers=1, seed=1),
        build_tiny_llama(vocab, num_layers=2, seed=2),
    )
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=plan.num_epochs,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        logging_steps=1000,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = TinyKDTrainer(
        model=student,
        args=args,
        train_dataset=view,
        data_collator=collator,
        teacher=teacher,
        curriculum_callback=callback,
        callbacks=[callback],
    )
    before = [p.detach().clone() for p in student.parameters()]
    trainer.train()

    assert sorted(seen) == [1, 2, 3, 4]
    for epoch in range(1, 5):
        assert sorted(seen[epoch]) == sorted(plan.epoch(epoch).ids)
    assert (
        [t for _, t in callback.history]
        == [e.temperature for e in plan.epochs]
        == [1.0, 1.5, 2.0, 2.5]
    )
    steps_per_epoch = -(-plan.metadata["window_size"] // 4)
    assert trainer.temperatures_used == [
        t for e in plan.epochs for t in [e.temperature] * steps_per_epoch
    ]
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def test_trainer_with_a_different_epoch_count_is_refused(tmp_path):
    examples = make_examples(20, 50)
    ids = [e.id for e in examples]
    view = CurriculumDataset(examples, ids, make_plan(ids, epochs=4))
    args = TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=3, report_to=[], use_cpu=True, save_strategy="no"
    )
    trainer = Trainer(
        model=build_tiny_llama(50, num_layers=1),
        args=args,
        train_dataset=view,
        data_collator=DataCollator(pad_token_id=0),
        callbacks=[CurriculumCallback(view)],
    )
    with pytest.raises(
        ValueError, match="num_train_epochs=3.*has 4 epochs; set num_train_epochs=4"
    ):
        trainer.train()


def test_sampler_splits_an_epoch_across_ddp_ranks():
    ids = [f"row{i:03d}" for i in range(31)]
    plan = make_plan(ids)
    window = set(plan.epoch(2).ids)
    per_rank = -(-len(window) // 3)
    shares = []
    for rank in range(3):
        sampler = CurriculumSampler(ids, plan, seed=3, num_replicas=3, rank=rank)
        sampler.set_epoch(1)
        shares.append([ids[i] for i in sampler])
        assert len(shares[-1]) == len(sampler) == per_rank  # padded like DistributedSampler
    assert set().union(*map(set, shares)) == window
    assert 3 * per_rank > len(window)  # this case pads, and yet every example is served
    with pytest.raises(ValueError, match=r"rank=3 must be in \[0, num_replicas=3\)"):
        CurriculumSampler(ids, plan, num_replicas=3, rank=3)
