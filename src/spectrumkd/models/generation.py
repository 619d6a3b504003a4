"""Batched generation: a KV-cached decode loop, left padding, length-sorted batches, seeded sampling.

Why each choice:

- A hand-written decode loop (:func:`decode`) instead of ``model.generate``: ``generate`` keeps
  running every row of a batch until the last one finishes (finished rows are fed padding), so a
  batch whose answers end at 20 and 500 tokens pays 500 steps for every row. The loop prefills
  once, then decodes one token per step and drops a row from the batch *and* from the cache as
  soon as it ends (EOS, a stop string, or the token limit). The cache is transformers'
  ``DynamicCache`` with its full-attention layers preallocated
  (:mod:`spectrumkd.models.kv_cache`: no per-step concatenation). The logits processors
  (``TemperatureLogitsWarper``, ``TopPLogitsWarper``, ``KnownTokensOnly``) and
  ``StopStringCriteria`` are transformers' own; positions and the attention mask are built as
  ``generate`` builds them, so greedy float32 outputs equal ``generate``'s
  (tests/test_generation.py).
- Continuous batching: at most ``batch_size`` rows run at once, prompts are taken longest first,
  and once a quarter of the slots are free the next prompts are prefilled and merged into the
  running batch and its cache (so the batch stays full instead of shrinking to its slowest row).
  Each row gets the tokens it would get alone (float32 greedy, tested).
- ``precision`` (default ``auto``): bf16 on a CUDA GPU with bf16 or a CPU with AMX /
  AVX512-BF16, float32 elsewhere. Under bf16 the whole model is held in bf16 for the call
  (weights, activations, KV cache; no autocast, so no per-step conversions); fp16 runs under
  :func:`spectrumkd.models.precision.autocast`. The logits are cast to float32 before any
  processing, as ``generate`` does. bf16 changes outputs slightly (near-ties flip); ``float32``
  is the exact path.
- Sampling inverts the cumulative distribution at one uniform per row (:func:`draw`: the
  distribution of ``torch.multinomial``, at a twentieth of its cost on a 49k vocabulary).
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
- Sampling draws from a ``torch.Generator`` seeded from ``seed`` (``batch_seed(seed, 0)``): a
  run is reproducible for a given prompt list, batch size and precision, and the global RNG is
  left untouched. (On-policy sampling passes no generator and draws from the global RNG, which the
  trainer's checkpoints save.)
- The thread count is torch's (all cores by default); with ``workers`` > 1 the prompts are
  split between forked CPU processes that share torch's threads
  (:mod:`spectrumkd.models.decode_workers`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StopStringCriteria,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from spectrumkd.batching import left_pad, prompt_token_ids
from spectrumkd.models.decode_workers import auto_workers, decode_in_workers
from spectrumkd.models.kv_cache import merge_rows, mergeable, new_cache
from spectrumkd.models.pairing import missing_token_ids
from spectrumkd.models.precision import (
    autocast,
    autocast_dtype,
    resolve_precision,
    weights_held_in,
)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    stop: Sequence[str] = (),
    precision: str = "auto",
    workers: int | None = 1,
) -> list[str]:
    """Continue each prompt; temperature 0 is greedy. Returns the decoded continuations only
    (special tokens skipped, cut at the first EOS), in prompt order. A row also stops once it
    has produced one of the ``stop`` strings (the text up to it is returned, the string cut
    off): few-shot prompts otherwise run on into an invented next problem until the limit.
    ``precision`` is the compute precision of the forwards (``auto``, ``float32``, ``bf16``,
    ``fp16``; see :mod:`spectrumkd.models.precision`). ``batch_size`` rows run at once, freed
    slots refilled (64: the fastest of 16, 64 and 128 for SmolLM2 on the project's CPU,
    benchmarks/README.md). ``workers`` CPU processes decode a share of the prompts each
    (:mod:`spectrumkd.models.decode_workers`; None: two on a CPU where torch has two threads or
    more, else one); sampled outputs depend on it, as on the batch size."""
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
    if workers is None:
        workers = auto_workers(device, len(prompts))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and device.type != "cpu":
        raise ValueError(f"workers={workers} splits decoding over CPU cores; on {device} use 1")
    if not prompts:
        return []

    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    encoded = prompt_token_ids(tokenizer, list(prompts))
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt {empty[0]} encodes to no tokens; drop empty prompts")
    known = KnownTokensOnly(len(tokenizer), missing_token_ids(tokenizer))
    stop_list = [s for s in stop if s]
    stopping = StopStringCriteria(tokenizer, stop_list) if stop_list else None

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="generate", unit="prompt")

    def decode_share(share: list[Sequence[int]], index: int) -> list[list[int]]:
        generator = None
        if temperature > 0:  # one stream per share (the only one when workers is 1)
            generator = torch.Generator(device=device)
            generator.manual_seed(batch_seed(seed, index))
        return decode(
            model,
            share,
            pad_token_id=pad_id,
            eos_token_ids=eos_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            known=known,
            stopping=stopping,
            generator=generator,
            precision=precision,
            batch_size=batch_size,
            on_finish=bar.update if bar is not None and index == 0 else None,
        )

    try:
        if workers == 1:
            outputs = decode_share(encoded, 0)
        else:
            outputs = decode_in_workers(
                decode_share,
                encoded,
                workers,
                on_finish=bar.update if bar is not None else None,
            )
    finally:
        if bar is not None:
            bar.close()
    eos_set = set(eos_ids)
    return [
        _cut_at_stop(tokenizer.decode(_cut_at_eos(t, eos_set), skip_special_tokens=True), stop)
        for t in outputs
    ]


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
    batch_size: int | None = None,
    on_finish: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """The new token ids of each prompt (token ids, left-padded here): greedy at temperature 0,
    else sampled (temperature, then top-p) from ``generator`` (the global RNG when None). A row
    ends at its first EOS (kept as its last id), when ``stopping`` says so (e.g.
    ``StopStringCriteria``; it sees the padded prompt plus the new ids, as in ``generate``) or
    after ``max_new_tokens``; ended rows leave the batch and the KV cache. ``known`` masks
    logits before temperature (``KnownTokensOnly``).

    ``batch_size`` (None: every prompt in one batch) caps the rows that run at once: prompts
    are taken longest first, and once a quarter of the slots are free (or the batch is empty)
    the next prompts are prefilled together and join the running batch (continuous batching).
    ``on_finish(n)`` is called as ``n`` rows end."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    processors = LogitsProcessorList([known] if known is not None else [])
    if temperature > 0:
        if temperature != 1.0:  # dividing by 1 changes nothing and costs a pass over the logits
            processors.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
    loop = _Loop(
        model=model,
        forward=_forward_arguments(model),
        processors=processors,
        sampling=temperature > 0,
        generator=generator,
        eos=torch.tensor(sorted(set(int(t) for t in eos_token_ids)), device=device),
        stopping=stopping,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id,
        new_tokens=[[] for _ in prompts],
        on_finish=on_finish,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # stable: ties in order
    slots = len(prompts) if batch_size is None else batch_size
    refill_at = max(1, slots // 4)
    was_training = model.training
    model.eval()
    try:
        with _compute_in(precision, device, model):
            running: _Batch | None = None
            taken = 0
            while taken < len(order) or running is not None:
                free = slots - (0 if running is None else running.size)
                if taken < len(order) and (
                    running is None
                    or (free >= min(refill_at, len(order) - taken) and mergeable(running.cache))
                ):
                    group = order[taken : taken + free]
                    taken += len(group)
                    added = loop.prefill([prompts[i] for i in group], group, device)
                    if running is None:
                        running = added
                    elif added is not None:
                        running = running.merge(added, max_new_tokens, pad_token_id)
                    continue
                assert running is not None
                running = loop.step(running)
    finally:
        model.train(was_training)
    return loop.new_tokens


@dataclasses.dataclass
class _Batch:
    """The rows running together: their original indices, prompt + new ids (left-padded), the
    attention mask (cache columns plus the pending token), the pending token's position, the
    pending (sampled, not yet fed) token, the new tokens so far and their KV cache."""

    rows: torch.Tensor
    sequences: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    next_ids: torch.Tensor
    produced: torch.Tensor
    cache: Any

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    def select(self, keep: torch.Tensor) -> _Batch:
        self.cache.batch_select_indices(keep)
        return _Batch(
            self.rows[keep],
            self.sequences[keep],
            self.mask[keep],
            self.positions[keep],
            self.next_ids[keep],
            self.produced[keep],
            self.cache,
        )

    def merge(self, other: _Batch, room: int, pad_token_id: int) -> _Batch:
        """``other``'s rows appended to these (its cache merged into this one, in place)."""
        # The last mask column is the pending token of every row, in no cache yet.
        mask = merge_rows(self.cache, self.mask[:, :-1], other.cache, other.mask[:, :-1], room)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        width = max(self.sequences.shape[1], other.sequences.shape[1])
        return _Batch(
            torch.cat([self.rows, other.rows]),
            torch.cat([_left_pad_to(b.sequences, width, pad_token_id) for b in (self, other)]),
            mask,
            torch.cat([self.positions, other.positions]),
            torch.cat([self.next_ids, other.next_ids]),
            torch.cat([self.produced, other.produced]),
            self.cache,
        )


def _left_pad_to(sequences: torch.Tensor, width: int, pad_token_id: int) -> torch.Tensor:
    if sequences.shape[1] == width:
        return sequences
    pad = sequences.new_full((sequences.shape[0], width - sequences.shape[1]), pad_token_id)
    return torch.cat([pad, sequences], dim=-1)


@dataclasses.dataclass
class _Loop:
    """What every forward of one :func:`decode` call shares, and its two moves: prefill a group
    of prompts, decode one token for every running row."""

    model: Any
    forward: dict[str, Any]
    processors: LogitsProcessorList
    sampling: bool
    generator: torch.Generator | None
    eos: torch.Tensor
    stopping: StoppingCriteria | None
    max_new_tokens: int
    pad_token_id: int
    new_tokens: list[list[int]]
    on_finish: Callable[[int], None] | None

    def prefill(self, prompts: list[Sequence[int]], rows: list[int], device: Any) -> _Batch | None:
        input_ids, mask = left_pad(prompts, self.pad_token_id)
        input_ids, mask = input_ids.to(device), mask.to(device)
        # Positions as generate builds them: count of real tokens so far, 0 on padding.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        batch = _Batch(
            rows=torch.tensor(rows, device=device),
            sequences=input_ids,
            mask=mask,
            positions=positions,
            next_ids=input_ids,
            produced=torch.zeros(len(rows), dtype=torch.long, device=device),
            cache=new_cache(self.model, input_ids.shape[1] + self.max_new_tokens),
        )
        return self._advance(batch)

    def step(self, batch: _Batch) -> _Batch | None:
        batch.next_ids = batch.next_ids[:, None]
        return self._advance(batch)

    def _advance(self, batch: _Batch) -> _Batch | None:
        """One forward on the pending tokens; the rows that end leave (None: all did)."""
        outputs = self.model(
            input_ids=batch.next_ids,
            attention_mask=batch.mask,
            position_ids=batch.positions,
            use_cache=True,
            **{self.forward["cache"]: batch.cache},
            **({"logits_to_keep": 1} if self.forward["logits_to_keep"] else {}),
        )
        logits = outputs.logits[:, -1, :].float()
        scores = self.processors(batch.sequences, logits)
        if self.sampling:
            next_ids = draw(torch.softmax(scores, dim=-1), self.generator)
        else:
            next_ids = scores.argmax(dim=-1)
        batch.sequences = torch.cat([batch.sequences, next_ids[:, None]], dim=-1)
        for row, token in zip(batch.rows.tolist(), next_ids.tolist(), strict=True):
            self.new_tokens[row].append(token)
        batch.produced = batch.produced + 1
        done = torch.isin(next_ids, self.eos) | (batch.produced >= self.max_new_tokens)
        if self.stopping is not None:
            done |= self.stopping(batch.sequences, scores).to(done.device)
        batch.next_ids = next_ids
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.size, 1))], dim=-1)
        batch.positions = batch.positions[:, -1:] + 1
        ended = int(done.sum())
        if ended and self.on_finish is not None:
            self.on_finish(ended)
        if ended == batch.size:
            return None
        return batch.select((~done).nonzero().squeeze(1)) if ended else batch


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row of ``probs`` (rows of non-negative weights), drawn by inverting the
    cumulative sum at one uniform per row: the distribution of ``torch.multinomial(probs, 1)``
    (up to float32 rounding of the cumulative sum), at one random number per row instead of one
    per vocabulary entry (``multinomial`` draws an exponential for every entry: 222 ms for
    128 rows of 49,152, against 10 ms). An id of weight 0 is never drawn."""
    cdf = probs.cumsum(dim=-1)
    # 1 - U(0, 1) is in (0, 1]: the target is above 0, so the first id whose cumulative sum
    # reaches it has a positive weight.
    uniform = 1.0 - torch.rand(
        (probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype
    )
    ids = torch.searchsorted(cdf, uniform * cdf[:, -1:]).squeeze(1)
    return ids.clamp_(max=probs.shape[-1] - 1)


def _compute_in(precision: str, device: Any, model: torch.nn.Module) -> contextlib.ExitStack:
    """bf16: the whole model held in bf16 (every float32 parameter; buffers such as the rotary
    frequencies stay float32), no autocast: activations, the KV cache and attention in bf16,
    as a bf16 checkpoint is served, with no per-step conversions. fp16: autocast with the Linear
    weights held in fp16. float32: no cast. In every case the output head gets a contiguous
    input."""
    stack = contextlib.ExitStack()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module):
        # The prefill's last position is a strided slice of the hidden states; a bf16 linear
        # then runs as a batched matmul over a copy of the head's weight per row (6 s of a 7 s
        # 16-row prefill of SmolLM2); a contiguous input keeps it one matrix product.
        hook = head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(),))
        stack.callback(hook.remove)
    if precision == "bf16":
        stack.enter_context(weights_held_in(torch.bfloat16, model, every_parameter=True))
    elif precision != "float32":
        stack.enter_context(autocast(precision, device))
        stack.enter_context(weights_held_in(autocast_dtype(precision), model))
    return stack


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
