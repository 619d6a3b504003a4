"""Plug a curriculum into trainers people already run."""

from spectrumkd.integrations.hf_trainer import CurriculumCallback
from spectrumkd.integrations.sampler import CurriculumDataset, CurriculumSampler

__all__ = ["CurriculumCallback", "CurriculumDataset", "CurriculumSampler"]
