"""Serve each epoch's subset of a curriculum to a PyTorch training loop.

Two shapes of the same mechanism, because trainers differ in what they let a user replace:

- :class:`CurriculumSampler` for loops that own their ``DataLoader`` (pass ``sampler=``);
- :class:`CurriculumDataset`, a view of the dataset whose items are the current epoch's subset,
  for trainers that build their own sampler (``transformers.Trainer``, TRL trainers).

Both take epochs 0-based in ``set_epoch`` (the PyTorch / accelerate convention) and read plan
epoch ``epoch + 1`` (the paper's 1-based numbering).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from spectrumkd.curation.plan import CurriculumPlan, EpochPlan


def _positions(dataset_ids: Sequence[str], plan: CurriculumPlan) -> dict[str, int]:
    position = {}
    for index, id_ in enumerate(dataset_ids):
        if id_ in position:
            raise ValueError(f"example id {id_!r} appears twice in the dataset; ids must be unique")
        position[id_] = index
    _check_ids(position, plan)
    return position


def _check_ids(position: dict[str, int], plan: CurriculumPlan) -> None:
    for epoch in plan.epochs:
        missing = next((i for i in epoch.ids if i not in position), None)
        if missing is not None:
            raise ValueError(
                f"the {plan.strategy} plan's epoch {epoch.epoch} names id {missing!r}, which is not in the dataset; "
                "score and curate the same (tokenised, length-filtered) dataset you train on"
            )


class CurriculumSampler(Sampler[int]):
    """Yields dataset indices of the current epoch's examples, shuffled by (seed, epoch).

    In a plain DDP loop pass ``num_replicas`` and ``rank``: each process then takes every
    ``num_replicas``-th index of the shared shuffled order, padded like ``DistributedSampler``
    so all processes run the same number of steps. Leave them unset under ``accelerate``, which
    shards the batches of a prepared DataLoader itself.
    """

    def __init__(
        self,
        dataset_ids: Sequence[str],
        plan: CurriculumPlan,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.plan = plan
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas, self.rank = num_replicas, rank
        self._position = _positions(dataset_ids, plan)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.plan.epoch(epoch + 1)  # validates the range
        self.epoch = epoch

    def use_plan(self, plan: CurriculumPlan) -> None:
        """Serve ``plan`` from now on: a dynamic plan's update (DDK) decided an epoch afresh."""
        if plan.num_epochs != self.plan.num_epochs:
            raise ValueError(
                f"an updated plan must keep the {self.plan.num_epochs} epochs of the one it "
                f"replaces, not {plan.num_epochs}"
            )
        _check_ids(self._position, plan)
        self.plan = plan

    @property
    def current(self) -> EpochPlan:
        return self.plan.epoch(self.epoch + 1)

    def __len__(self) -> int:
        return -(-len(self.current.ids) // self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        indices = [self._position[i] for i in self.current.ids]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(indices), generator=generator).tolist()
            indices = [indices[i] for i in order]
        if self.num_replicas > 1:
            padded = len(self) * self.num_replicas
            indices = (indices * -(-padded // len(indices)))[:padded]
            indices = indices[self.rank :: self.num_replicas]
        return iter(indices)


class CurriculumDataset(Dataset):
    """A fixed-size view: item ``i`` is the ``i``-th example of the current epoch's subset.

    Trainers compute their step counts from ``len(dataset)`` once, so every epoch of the plan
    must have the same size (true of SpectrumKD's window); other plans are refused here.
    """

    def __init__(
        self, dataset: Sequence[Any], dataset_ids: Sequence[str], plan: CurriculumPlan
    ) -> None:
        if len(dataset) != len(dataset_ids):
            raise ValueError(
                f"dataset has {len(dataset)} rows but {len(dataset_ids)} ids were given"
            )
        if plan.is_dynamic:
            raise ValueError(
                f"the {plan.strategy} plan is updated from the student during training, which a "
                "Trainer's dataset view cannot follow: run it with spectrumkd distill (or train())"
            )
        sizes = {len(e.ids) for e in plan.epochs}
        if len(sizes) != 1:
            raise ValueError(
                f"the {plan.strategy} plan changes the subset size between epochs ({min(sizes)}..{max(sizes)}); "
                "a Trainer needs a constant epoch size: use CurriculumSampler in your own loop instead"
            )
        self.dataset = dataset
        self.plan = plan
        self._position = _positions(dataset_ids, plan)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.plan.epoch(epoch + 1)
        self.epoch = epoch

    @property
    def current(self) -> EpochPlan:
        return self.plan.epoch(self.epoch + 1)

    def __len__(self) -> int:
        return len(self.current.ids)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self._position[self.current.ids[index]]]
