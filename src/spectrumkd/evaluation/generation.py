"""Batched generation with ``model.generate``: left padding, length-sorted batches, seeded sampling.

Why each choice:

- Prompts are sorted by token length (longest first, ties in input order) and cut into batches,
  so a batch wastes little padding and the batch plan depends only on the prompts and
  ``batch_size``. Results come back in the caller's order.
- Left padding: generation appends on the right, so every row's last prompt token must sit in
  the last column. With the attention mask, ``generate`` gives padded rows the positions an
  unpadded row would have, so greedy outputs match one-prompt-at-a-time generation up to
  floating-point ties (exact on CPU float32 in the tests; bf16 on a GPU can differ in rare ties).
- Every decoding knob that changes the distribution is passed explicitly (``top_k=0``,
  ``repetition_penalty=1.0``, ...): ``generate`` otherwise fills unset ones from the model's own
  ``generation_config`` (many checkpoints ship ``top_k=50`` or a repetition penalty), and the
  protocol is plain sampling at the given temperature.
- Ids no token has are masked out (``KnownTokensOnly``): the rows a padded embedding adds past
  ``len(tokenizer)`` (Qwen2.5 pads 151,665 tokens to 151,936 or 152,064 rows) and holes in the
  tokenizer's id range. An untrained or distilled model can still rank such a row first; it
  would decode to nothing and, when sampling for distillation, reach a teacher that has no row
  for it.
- Sampling draws from torch's global RNG (``generate`` takes no generator), so each batch is
  seeded from ``(seed, batch index)`` inside ``torch.random.fork_rng``: a run is reproducible
  for a given prompt list and batch size, and the caller's RNG state is left untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from spectrumkd.models.pairing import missing_token_ids


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    stop: Sequence[str] = (),
) -> list[str]:
    """Continue each prompt; temperature 0 is greedy. Returns the decoded continuations only
    (special tokens skipped, cut at the first EOS), in prompt order. A row also stops once it
    has produced one of the ``stop`` strings (the text up to it is returned, the string cut
    off): few-shot prompts otherwise run on into an invented next problem until the limit."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []

    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    encoded = prompt_token_ids(tokenizer, list(prompts))
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt {empty[0]} encodes to no tokens; drop empty prompts")
    batches = length_sorted_batches([len(ids) for ids in encoded], batch_size)
    device = next(model.parameters()).device
    sampling = temperature > 0
    decoding: dict[str, Any] = {
        "do_sample": sampling,
        "num_beams": 1,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "min_new_tokens": 0,
        "max_new_tokens": max_new_tokens,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
        "logits_processor": LogitsProcessorList(
            [KnownTokensOnly(len(tokenizer), missing_token_ids(tokenizer))]
        ),
    }
    if stop:
        decoding.update(stop_strings=list(stop), tokenizer=tokenizer)
    if sampling:  # greedy ignores these, and transformers warns when they are passed with it
        decoding.update(temperature=temperature, top_k=0, top_p=top_p, typical_p=1.0)

    results: list[str] = [""] * len(prompts)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="generate", unit="prompt")
    was_training = model.training
    model.eval()
    try:
        for batch_index, batch in enumerate(batches):
            input_ids, attention_mask = left_pad([encoded[i] for i in batch], pad_id)
            with torch.random.fork_rng(devices=_rng_devices(device)), torch.inference_mode():
                if sampling:
                    torch.manual_seed(batch_seed(seed, batch_index))
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    **decoding,
                )
            width = input_ids.shape[1]
            for row, index in enumerate(batch):
                tokens = _cut_at_eos(output[row, width:].tolist(), set(eos_ids))
                results[index] = _cut_at_stop(
                    tokenizer.decode(tokens, skip_special_tokens=True), stop
                )
            if bar is not None:
                bar.update(len(batch))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return results


class KnownTokensOnly(LogitsProcessor):
    """A ``generate`` logits processor that rules out ids no token has: every id at or above
    ``vocab_size`` (the rows a padded embedding adds) and the ``missing_ids`` below it."""

    def __init__(self, vocab_size: int, missing_ids: Sequence[int] = ()) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = vocab_size
        self.missing_ids = tuple(missing_ids)
        self._masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        width = scores.shape[-1]
        if width <= self.vocab_size and not self.missing_ids:
            return scores
        key = (width, scores.device)
        if key not in self._masks:  # the width is only known here: it is the model's rows
            mask = torch.zeros(width, dtype=torch.bool)
            mask[self.vocab_size :] = True
            mask[[i for i in self.missing_ids if i < width]] = True
            self._masks[key] = mask.to(scores.device)
        return scores.masked_fill(self._masks[key], float("-inf"))


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus any the model's generation config names (chat models often
    end turns with a token other than the tokenizer's EOS)."""
    ids: list[int] = []
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates.extend(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    for token in candidates:
        if token is not None and int(token) not in ids:
            ids.append(int(token))
    if not ids:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no eos token and the model's generation config names none; "
            "set tokenizer.eos_token so generation can stop"
        )
    return ids


def prompt_token_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Prompt token ids exactly as the data stage builds them (scoring, training, quality), so a
    model is evaluated on the token sequence it was trained to continue."""
    from spectrumkd.data.tokenize import _batch_prompt_ids

    return _batch_prompt_ids(tokenizer, prompts)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted longest first (ties in input order), cut into batches of ``batch_size``.
    Longest first: a batch that does not fit in memory fails at the start, not hours in."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each row right-aligned."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            input_ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            attention_mask[index, width - len(row) :] = 1
    return input_ids, attention_mask


def batch_seed(seed: int, batch_index: int) -> int:
    """A well-mixed 63-bit seed for one batch of one run (neighbouring seeds share no stream)."""
    state = np.random.SeedSequence([int(seed), int(batch_index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _cut_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    # generate fills finished rows with padding; a pad id that is not a special token would
    # otherwise survive decoding, and an EOS that is not marked special would be printed.
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:index]
    return tokens
