"""Checking that a teacher and a student can be distilled white-box.

White-box KD compares the two models' next-token distributions position by position, so both
must read the same token ids and predict over the same vocabulary. Models of one family often pad
their embedding matrices to different sizes (Qwen2.5 ships 151,936 and 152,064 rows for one
151,665-token tokenizer); the rows past the tokenizer's vocabulary are never produced by it, so
both models' logits are trimmed to ``len(tokenizer)`` before they are compared. For the same
reason a model that generates for the pair (on-policy sampling) must never emit those ids: the
other model has no row for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_SPECIAL_TOKENS = ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id")


class IncompatibleModelsError(ValueError):
    """The teacher and the student cannot be paired for white-box KD (one-line message)."""


@dataclass(frozen=True)
class VocabAlignment:
    """The shared support of a teacher's and a student's next-token distributions."""

    vocab_size: int
    teacher_vocab_size: int
    student_vocab_size: int
    # Ids below ``vocab_size`` that no token of the tokenizer has (holes in its id range).
    missing_ids: tuple[int, ...] = ()

    @property
    def needs_trim(self) -> bool:
        return (
            self.vocab_size != self.teacher_vocab_size or self.vocab_size != self.student_vocab_size
        )

    def trim(self, logits: torch.Tensor) -> torch.Tensor:
        """Keep the first ``vocab_size`` logits of the last dimension.

        Logits of padded embedding rows beyond the tokenizer's vocabulary are dropped so both
        distributions live on the same support.
        """
        if logits.shape[-1] < self.vocab_size:
            raise ValueError(
                f"logits have {logits.shape[-1]} entries in their last dimension, fewer than the "
                f"shared vocabulary of {self.vocab_size}"
            )
        if logits.shape[-1] == self.vocab_size:
            return logits
        return logits[..., : self.vocab_size]


def vocab_rows(config) -> int:
    """The rows of a model's embedding (its config's ``vocab_size``); a model is accepted too."""
    config = getattr(config, "config", config)
    size = getattr(config, "vocab_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "vocab_size", None)
    if size is None:
        raise ValueError(f"{type(config).__name__} has no vocab_size")
    return int(size)


def missing_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids below ``len(tokenizer)`` that no token has: a model may have rows for them, but they
    decode to nothing and the tokenizer never produces them."""
    return tuple(sorted(set(range(len(tokenizer))) - set(tokenizer.get_vocab().values())))


def _special_ids(tokenizer) -> dict[str, int]:
    return {
        name: getattr(tokenizer, name)
        for name in _SPECIAL_TOKENS
        if getattr(tokenizer, name, None) is not None
    }


def check_pair(
    teacher_tokenizer, student_tokenizer, teacher_config, student_config
) -> VocabAlignment:
    """Check that the teacher and student share a tokenizer and align their vocabularies.

    ``teacher_config`` / ``student_config`` are the models' configs (the models themselves are
    accepted too). Raises :class:`IncompatibleModelsError` when the tokenizers differ or a model's
    embedding matrix is smaller than the tokenizer's vocabulary.
    """
    teacher_len, student_len = len(teacher_tokenizer), len(student_tokenizer)
    teacher_vocab = teacher_tokenizer.get_vocab()
    student_vocab = student_tokenizer.get_vocab()
    if teacher_len != student_len or teacher_vocab != student_vocab:
        differing = len(set(teacher_vocab.items()) ^ set(student_vocab.items()))
        raise IncompatibleModelsError(
            f"the teacher's tokenizer ({teacher_len} tokens) and the student's ({student_len} "
            f"tokens) differ ({differing} token/id pairs not shared); white-box KD needs a shared "
            f"tokenizer: pick a student from the teacher's family, or derive one from the teacher "
            f"with `spectrumkd shrink`"
        )
    teacher_special, student_special = (
        _special_ids(teacher_tokenizer),
        _special_ids(student_tokenizer),
    )
    clashes = [
        f"{name} {teacher_special[name]} vs {student_special[name]}"
        for name in _SPECIAL_TOKENS
        if name in teacher_special
        and name in student_special
        and teacher_special[name] != student_special[name]
        # pad is only a filler, but bos/eos/unk change what the models read and must emit
        and name != "pad_token_id"
    ]
    for name in ("bos_token_id", "eos_token_id"):
        if (name in teacher_special) != (name in student_special):
            clashes.append(f"{name} set on only one side")
    if clashes:
        raise IncompatibleModelsError(
            f"the teacher's and the student's tokenizers share a vocabulary but not their special "
            f"tokens ({'; '.join(clashes)}); white-box KD needs a shared tokenizer"
        )
    teacher_rows, student_rows = vocab_rows(teacher_config), vocab_rows(student_config)
    if teacher_len > teacher_rows or teacher_len > student_rows:
        raise IncompatibleModelsError(
            f"the tokenizer has {teacher_len} tokens but the teacher's embedding has "
            f"{teacher_rows} rows and the student's {student_rows}; both need at least one row "
            f"per token"
        )
    return VocabAlignment(
        vocab_size=teacher_len,
        teacher_vocab_size=teacher_rows,
        student_vocab_size=student_rows,
        missing_ids=missing_token_ids(teacher_tokenizer),
    )
