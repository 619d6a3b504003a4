"""Where a run's examples come from and how they are tokenised: one record shared by the CLI,
the jobs and the YAML run config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spectrumkd.data.loading import Example, FieldMap, load_examples
from spectrumkd.data.tokenize import TokenizedDataset, tokenize_examples


@dataclass(frozen=True)
class DataConfig:
    source: str = "embedded:dolly"
    fields: str | FieldMap | None = None  # a preset name or a role -> column mapping
    template: str = "instruction"
    split: str = "train"
    id_field: str | None = None
    limit: int | None = None
    max_length: int = 512
    max_prompt_length: int | None = None
    validation_ratio: float = 0.0  # a seeded share held out for checkpoint selection
    validation_seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_ratio < 1.0:
            raise ValueError(f"data.validation_ratio={self.validation_ratio} must be in [0, 1)")

    def load(self, tokenizer: Any) -> TokenizedDataset:
        """Load, render and tokenise; over-long examples are dropped and listed, not truncated."""
        return self.tokenize(self.load_texts(tokenizer), tokenizer)

    def load_texts(self, tokenizer: Any = None) -> list[Example]:
        """The rendered (prompt, response) texts, before tokenisation."""
        return load_examples(
            self.source,
            fields=self.fields,
            template=self.template,
            tokenizer=tokenizer,
            split=self.split,
            id_field=self.id_field,
            limit=self.limit,
        )

    def tokenize(self, examples: list[Example], tokenizer: Any) -> TokenizedDataset:
        return tokenize_examples(
            examples,
            tokenizer,
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
        )
