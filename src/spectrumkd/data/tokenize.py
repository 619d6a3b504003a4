"""Tokenise examples into (input_ids, labels) pairs and pad them into batches.

Prompt and response are tokenised separately and concatenated (the MiniLLM convention) so the
boundary between them is exact: the distillation losses and the difficulty scores are computed
over response tokens only, and a BPE merge across the boundary would shift that mask.
Over-long examples are dropped, never truncated, because a truncated response teaches the student
to stop mid-answer and distorts per-token difficulty statistics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from spectrumkd.batching import IGNORE_INDEX, collate, prompt_token_ids
from spectrumkd.data.loading import Example


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of prompt + response; ``labels`` is ``-100`` over the prompt."""

    id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def num_response_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.input_ids) - self.num_response_tokens


class TokenizedTorchDataset(Dataset):
    """Map-style torch dataset of ``{"input_ids", "labels"}`` dicts for ``transformers.Trainer``.

    Ids are kept beside the items rather than inside them because the Trainer only strips unused
    columns from ``datasets.Dataset``; a string in each item would reach the collator and model.
    """

    def __init__(self, examples: Sequence[TokenizedExample]) -> None:
        self._examples = list(examples)
        self.ids = [example.id for example in self._examples]

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        example = self._examples[index]
        return {"input_ids": list(example.input_ids), "labels": list(example.labels)}


@dataclass
class TokenizedDataset:
    """Kept examples plus the ``(id, reason)`` of every dropped one, so nothing vanishes silently."""

    examples: list[TokenizedExample]
    dropped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> TokenizedExample:
        return self.examples[index]

    @property
    def ids(self) -> list[str]:
        return [example.id for example in self.examples]

    def summary(self) -> str:
        """E.g. ``"868 kept, 132 dropped (longer than 256 tokens)"``."""
        text = f"{len(self.examples)} kept, {len(self.dropped)} dropped"
        if not self.dropped:
            return text
        reasons = Counter(reason for _, reason in self.dropped)
        if len(reasons) == 1:
            return f"{text} ({next(iter(reasons))})"
        parts = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        return f"{text} ({parts})"

    def as_torch_dataset(self) -> TokenizedTorchDataset:
        return TokenizedTorchDataset(self.examples)


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    max_length: int = 512,
    max_prompt_length: int | None = None,
    add_eos: bool = True,
) -> TokenizedDataset:
    """Tokenise every example; drop (and record) those that do not fit instead of truncating."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos_id is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer {name!r} has no eos token; set one or pass add_eos=False")
    if not examples:
        return TokenizedDataset(examples=[], dropped=[])

    prompt_ids = prompt_token_ids(tokenizer, [example.prompt for example in examples])
    response_ids = tokenizer([example.response for example in examples], add_special_tokens=False)[
        "input_ids"
    ]

    kept: list[TokenizedExample] = []
    dropped: list[tuple[str, str]] = []
    for example, prompt, response in zip(examples, prompt_ids, response_ids, strict=True):
        response = list(response) + ([eos_id] if add_eos else [])
        if not response:
            dropped.append((example.id, "no response tokens"))
        elif max_prompt_length is not None and len(prompt) > max_prompt_length:
            dropped.append((example.id, f"prompt longer than {max_prompt_length} tokens"))
        elif len(prompt) + len(response) > max_length:
            dropped.append((example.id, f"longer than {max_length} tokens"))
        else:
            kept.append(
                TokenizedExample(
                    id=example.id,
                    input_ids=list(prompt) + response,
                    labels=[IGNORE_INDEX] * len(prompt) + response,
                )
            )
    return TokenizedDataset(examples=kept, dropped=dropped)


@dataclass
class DataCollator:
    """Callable collator for ``transformers.Trainer`` or a ``DataLoader``.

    Accepts :class:`TokenizedExample` objects or mappings with ``input_ids`` and ``labels``
    (lists or tensors), as produced by :meth:`TokenizedDataset.as_torch_dataset`.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(
        self, features: Sequence[TokenizedExample | Mapping[str, Any]]
    ) -> dict[str, torch.Tensor]:
        batch = [_as_example(feature, index) for index, feature in enumerate(features)]
        return collate(batch, self.pad_token_id, self.pad_to_multiple_of)


def _as_example(feature: TokenizedExample | Mapping[str, Any], index: int) -> TokenizedExample:
    if isinstance(feature, TokenizedExample):
        return feature
    if not isinstance(feature, Mapping) or "input_ids" not in feature or "labels" not in feature:
        raise TypeError(
            f"feature {index}: expected a TokenizedExample or a mapping with 'input_ids' and 'labels'"
        )
    return TokenizedExample(
        id=str(feature.get("id", index)),
        input_ids=[int(token) for token in feature["input_ids"]],
        labels=[int(label) for label in feature["labels"]],
    )
