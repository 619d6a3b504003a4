"""Where a run's examples come from and how they are tokenised: one record shared by the CLI,
the jobs and the YAML run config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from spectrumkd.data.domains import (
    MIX_DOMAIN_FIELD,
    DomainSource,
    domain_sources,
    example_domains,
    field_map,
    load_mix,
)
from spectrumkd.data.loading import EMBEDDED_SOURCES, Example, FieldMap, load_examples
from spectrumkd.data.split import split_validation
from spectrumkd.data.tokenize import TokenizedDataset, tokenize_examples

Row = TypeVar("Row")


@dataclass(frozen=True)
class DataConfig:
    """The data of a run. ``source`` is one file, folder, hub name or ``embedded:dolly``; or
    ``mix`` lists several sources, each one domain (see :mod:`spectrumkd.data.domains`; YAML:
    ``mix: [{domain: maths, source: gsm8k/train.jsonl, fields: {instruction: question,
    response: answer}, template: math, limit: 300}, ...]``), whose entries default to the
    settings here. ``domain_field`` names the column holding each example's domain (a mix's
    is ``domain``, implicitly); with domains the validation split is stratified by domain."""

    source: str = EMBEDDED_SOURCES[0]
    fields: str | FieldMap | None = None  # a preset name or a role -> column mapping
    template: str = "instruction"
    split: str = "train"  # of a hub dataset or saved DatasetDict; of a file: a slice, train[600:]
    id_field: str | None = None
    limit: int | None = None
    max_length: int = 512
    max_prompt_length: int | None = None
    validation_ratio: float = 0.0  # a seeded share held out for checkpoint selection
    validation_seed: int = 0
    domain_field: str | None = None  # the column naming each example's domain
    mix: list[DomainSource] | None = None  # several sources, each one domain

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_ratio < 1.0:
            raise ValueError(f"data.validation_ratio={self.validation_ratio} must be in [0, 1)")
        object.__setattr__(self, "fields", field_map(self.fields, "data.fields"))
        if self.domain_field is not None and (
            not isinstance(self.domain_field, str) or not self.domain_field.strip()
        ):
            raise ValueError(
                f"data.domain_field={self.domain_field!r}: name the column holding each "
                "example's domain, e.g. category"
            )
        if self.mix is None:
            return
        if self.source != EMBEDDED_SOURCES[0]:
            raise ValueError(
                f"data.source={self.source!r} and data.mix both name the data; give the sources "
                "as mix entries (each with its domain) and drop data.source"
            )
        if self.domain_field is not None and self.domain_field != MIX_DOMAIN_FIELD:
            raise ValueError(
                f"data.domain_field={self.domain_field!r} with data.mix: a mix's domains are its "
                "entries' domain names; drop data.domain_field"
            )
        object.__setattr__(self, "mix", domain_sources(self.mix))

    @property
    def domain_column(self) -> str | None:
        """The meta column holding each example's domain: ``domain`` for a mix,
        ``domain_field`` otherwise; None when the data has no domains."""
        return MIX_DOMAIN_FIELD if self.mix is not None else self.domain_field

    def load(self, tokenizer: Any) -> TokenizedDataset:
        """Load, render and tokenise; over-long examples are dropped and listed, not truncated."""
        return self.tokenize(self.load_texts(tokenizer), tokenizer)

    def load_texts(self, tokenizer: Any = None) -> list[Example]:
        """The rendered (prompt, response) texts, before tokenisation; with domains, every
        example's domain is checked here (a row without one is refused)."""
        settings = {
            "fields": self.fields,
            "template": self.template,
            "tokenizer": tokenizer,
            "split": self.split,
            "id_field": self.id_field,
            "limit": self.limit,
        }
        if self.mix is not None:
            examples = load_mix(self.mix, **settings)
        else:
            examples = load_examples(self.source, **settings)
        self.domains(examples)
        return examples

    def domains(self, examples: Sequence[Example]) -> dict[str, str]:
        """``{id: domain}`` of ``examples``; empty when the data has no domains."""
        column = self.domain_column
        if column is None:
            return {}
        where = "data.mix" if self.mix is not None else self.source
        return example_domains(examples, column, where)

    def split_validation(
        self, rows: Sequence[Row], domains: Mapping[str, str]
    ) -> tuple[list[Row], list[Row]]:
        """(training, held out) of ``rows`` (anything with an ``id``) by ``validation_ratio``
        and ``validation_seed``: stratified by ``domains`` (``{id: domain}``, from
        :meth:`domains`) when it is not empty, else :func:`split_validation` as it is."""
        if not domains:
            return split_validation(rows, self.validation_ratio, self.validation_seed)
        return split_validation(
            rows,
            self.validation_ratio,
            self.validation_seed,
            domains=[domains[row.id] for row in rows],  # type: ignore[attr-defined]
        )

    def tokenize(self, examples: list[Example], tokenizer: Any) -> TokenizedDataset:
        return tokenize_examples(
            examples,
            tokenizer,
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
        )
