"""Batched generation: a KV-cached decode loop, left padding, length-sorted batches, seeded sampling.

Why each choice:

- A hand-written decode loop (:func:`decode`) instead of ``model.generate``: ``generate`` keeps
  running every row of a batch until the last one finishes (finished rows are fed padding), so a
  batch whose answers end at 20 and 500 tokens pays 500 steps for every row. The loop prefills
  once into a transformers ``DynamicCache``, then decodes one token per step and drops a row from
  the batch *and* from the cache (``DynamicCache.batch_select_indices``) as soon as it ends (EOS,
  a stop string, or the token limit). Everything else is transformers' own: the cache, the
  logits processors (``TemperatureLogitsWarper``, ``TopPLogitsWarper``, ``KnownTokensOnly``) and
  ``StopStringCriteria``; positions and the attention mask are built as ``generate`` builds
  them, so greedy float32 outputs equal ``generate``'s (tests/test_generation.py).
- ``precision`` (default ``auto``): the forwards run under
  :func:`spectrumkd.models.precision.autocast` (bf16 on a CUDA GPU with bf16 or a CPU with AMX /
  AVX512-BF16, float32 elsewhere); the logits are cast to float32 before any processing, as
  ``generate`` does. bf16 changes outputs slightly (near-ties flip); ``float32`` is the exact path.

- Prompts are sorted by token length (longest first, ties in input order) and cut into batches,
  so a batch wastes little padding and the batch plan depends only on the prompts and
  ``batch_size``. Results come back in the caller's order.
- Left padding: generation appends on the right, so every row's last prompt token must sit in
  the last column. Positions come from the attention mask (as in ``generate``), so padded rows
  get the positions an unpadded row would have, and greedy outputs match one-prompt-at-a-time
  generation up to floating-point ties (exact on CPU float32 in the tests; bf16 can differ in
  rare ties).
- Only temperature, top-p and the known-token mask shape the distribution: the model's own
  ``generation_config`` (many checkpoints ship ``top_k=50`` or a repetition penalty) is not
  read, and the protocol is plain sampling at the given temperature.
- Ids no token has are masked out (``KnownTokensOnly``): the rows a padded embedding adds past
  ``len(tokenizer)`` (Qwen2.5 pads 151,665 tokens to 151,936 or 152,064 rows) and holes in the
  tokenizer's id range. An untrained or distilled model can still rank such a row first; it
  would decode to nothing and, when sampling for distillation, reach a teacher that has no row
  for it.
- Sampling draws from a ``torch.Generator`` seeded from ``(seed, batch index)``: a run is
  reproducible for a given prompt list, batch size and precision, and the global RNG is left
  untouched. (On-policy sampling passes no generator and draws from the global RNG, which the
  trainer's checkpoints save.)
- The thread count is torch's (all cores by default); nothing here pins it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers import (
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StopStringCriteria,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from spectrumkd.batching import left_pad, length_sorted_batches, prompt_token_ids
from spectrumkd.models.pairing import missing_token_ids
from spectrumkd.models.precision import autocast, autocast_dtype, resolve_precision


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
    precision: str = "auto",
) -> list[str]:
    """Continue each prompt; temperature 0 is greedy. Returns the decoded continuations only
    (special tokens skipped, cut at the first EOS), in prompt order. A row also stops once it
    has produced one of the ``stop`` strings (the text up to it is returned, the string cut
    off): few-shot prompts otherwise run on into an invented next problem until the limit.
    ``precision`` is the compute precision of the forwards (``auto``, ``float32``, ``bf16``,
    ``fp16``; see :mod:`spectrumkd.models.precision`)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    if not prompts:
        return []

    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    encoded = prompt_token_ids(tokenizer, list(prompts))
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt {empty[0]} encodes to no tokens; drop empty prompts")
    batches = length_sorted_batches([len(ids) for ids in encoded], batch_size)
    known = KnownTokensOnly(len(tokenizer), missing_token_ids(tokenizer))
    stop_list = [s for s in stop if s]
    stopping = StopStringCriteria(tokenizer, stop_list) if stop_list else None

    results: list[str] = [""] * len(prompts)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="generate", unit="prompt")
    try:
        for batch_index, batch in enumerate(batches):
            generator = None
            if temperature > 0:
                generator = torch.Generator(device=device)
                generator.manual_seed(batch_seed(seed, batch_index))
            outputs = decode(
                model,
                [encoded[i] for i in batch],
                pad_token_id=pad_id,
                eos_token_ids=eos_ids,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                known=known,
                stopping=stopping,
                generator=generator,
                precision=precision,
            )
            for index, tokens in zip(batch, outputs, strict=True):
                tokens = _cut_at_eos(tokens, set(eos_ids))
                results[index] = _cut_at_stop(
                    tokenizer.decode(tokens, skip_special_tokens=True), stop
                )
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return results


@torch.inference_mode()
def decode(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    known: LogitsProcessor | None = None,
    stopping: StoppingCriteria | None = None,
    generator: torch.Generator | None = None,
    precision: str = "auto",
) -> list[list[int]]:
    """The new token ids of each prompt (token ids, one batch, left-padded here): greedy at
    temperature 0, else sampled (temperature, then top-p) from ``generator`` (the global RNG
    when None). A row ends at its first EOS (kept as its last id), when ``stopping`` says so
    (e.g. ``StopStringCriteria``; it sees the padded prompt plus the new ids, as in
    ``generate``) or after ``max_new_tokens``; ended rows leave the batch and the KV cache.
    ``known`` masks logits before temperature (``KnownTokensOnly``)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        return []
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    processors = LogitsProcessorList([known] if known is not None else [])
    sampling = temperature > 0
    if sampling:
        processors.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
    eos = torch.tensor(sorted(set(int(t) for t in eos_token_ids)), device=device)

    input_ids, attention_mask = left_pad(prompts, pad_token_id)
    sequences = input_ids.to(device)  # prompt + new ids of the rows still running
    attention_mask = attention_mask.to(device)
    # Positions as generate builds them: count of real tokens so far, 0 on padding.
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    rows = torch.arange(len(prompts), device=device)  # original row of each running row
    new_tokens: list[list[int]] = [[] for _ in prompts]
    cache = _new_cache(model)
    forward = _forward_arguments(model)
    step_input = sequences
    was_training = model.training
    model.eval()
    try:
        with autocast(precision, device), _linear_weights_in(autocast_dtype(precision), model):
            for step in range(max_new_tokens):
                outputs = model(
                    input_ids=step_input,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=True,
                    **{forward["cache"]: cache},
                    **({"logits_to_keep": 1} if forward["logits_to_keep"] else {}),
                )
                logits = outputs.logits[:, -1, :].float()
                scores = processors(sequences, logits)
                if sampling:
                    probs = torch.softmax(scores, dim=-1)
                    next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                else:
                    next_ids = scores.argmax(dim=-1)
                sequences = torch.cat([sequences, next_ids[:, None]], dim=-1)
                for row, token in zip(rows.tolist(), next_ids.tolist(), strict=True):
                    new_tokens[row].append(token)
                done = torch.isin(next_ids, eos)
                if stopping is not None:
                    done |= stopping(sequences, scores).to(done.device)
                if step + 1 == max_new_tokens:
                    break
                if bool(done.any()):
                    keep = (~done).nonzero().squeeze(1)
                    if keep.numel() == 0:
                        break
                    cache.batch_select_indices(keep)
                    rows, sequences, next_ids = rows[keep], sequences[keep], next_ids[keep]
                    attention_mask, position_ids = attention_mask[keep], position_ids[keep]
                ones = attention_mask.new_ones((attention_mask.shape[0], 1))
                attention_mask = torch.cat([attention_mask, ones], dim=-1)
                position_ids = position_ids[:, -1:] + 1
                step_input = next_ids[:, None]
    finally:
        model.train(was_training)
    return new_tokens


@contextlib.contextmanager
def _linear_weights_in(dtype: torch.dtype | None, model: torch.nn.Module) -> Iterator[None]:
    """Every float32 ``nn.Linear`` weight and bias held in ``dtype`` for the duration (the
    originals are put back after, untouched). Autocast casts them to ``dtype`` at each call
    anyway, and it caches casts only when autograd records (not under ``inference_mode``): in a
    decode loop that re-cast the whole model every step, 58% of a bf16 CPU decode step. The
    products are the same bits; one cast per call instead of one per token."""
    if dtype is None:
        yield
        return
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    try:
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            for name in ("weight", "bias"):
                original = module._parameters.get(name)
                if original is not None and original.dtype == torch.float32:
                    cast = torch.nn.Parameter(original.detach().to(dtype), requires_grad=False)
                    module._parameters[name] = cast
                    swapped.append((module, name, original))
        yield
    finally:
        for module, name, original in reversed(swapped):
            module._parameters[name] = original


def _new_cache(model: Any) -> DynamicCache:
    try:
        return DynamicCache(config=model.config)  # sliding-window layers need the config
    except TypeError:  # transformers before 4.56 take no config
        return DynamicCache()


def _forward_arguments(model: Any) -> dict[str, Any]:
    """The cache keyword of ``model.forward`` (``cache`` since transformers 5.2x, before that
    ``past_key_values``) and whether it takes ``logits_to_keep`` (prefill then computes the
    logits of the last position only, as ``generate`` does)."""
    parameters = inspect.signature(model.forward).parameters
    return {
        "cache": "cache" if "cache" in parameters else "past_key_values",
        "logits_to_keep": "logits_to_keep" in parameters,
    }


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


def batch_seed(seed: int, batch_index: int) -> int:
    """A well-mixed 63-bit seed for one batch of one run (neighbouring seeds share no stream)."""
    state = np.random.SeedSequence([int(seed), int(batch_index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def _cut_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    # An EOS that is not marked special would otherwise be printed.
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:index]
    return tokens
