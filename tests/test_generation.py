"""The KV-cached decode loop of spectrumkd.models.generation against ``model.generate``.

float32 greedy must equal ``generate`` token for token (rows of different prompt lengths, rows
that end early at EOS); seeded sampling must equal ``generate``'s while no row has ended (same
processors, same RNG stream) and repeat for a seed; finished rows must get no more forwards;
bf16 autocast must stay close to float32.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_llama
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from spectrumkd.batching import left_pad
from spectrumkd.models.generation import KnownTokensOnly, decode, draw, generate

VOCAB = 96
PROMPTS = [
    [5, 17, 33, 2, 9, 41, 8],
    [12, 3],
    [7, 7, 60, 21, 5],
    [44],
    [30, 31, 32, 33, 34, 35, 36, 37, 38],
    [19, 25, 4],
]


@pytest.fixture(scope="module")
def model():
    """A tiny random Llama whose greedy continuations differ from row to row."""
    model = build_tiny_llama(VOCAB, num_layers=2, seed=3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4.0)
    return model.eval()


def hf_generate(model, prompts, eos, **options) -> list[list[int]]:
    """``model.generate`` on left-padded prompts, each row cut after its first EOS."""
    input_ids, attention_mask = left_pad(prompts, 0)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            eos_token_id=list(eos),
            pad_token_id=0,
            top_k=0,
            repetition_penalty=1.0,
            **options,
        )
    rows = []
    for row in output[:, input_ids.shape[1] :].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def early_eos(model, steps: int = 12) -> int:
    """A token that some (not all) rows' greedy continuations produce early: as EOS, it makes
    rows of one batch end at different steps."""
    free = hf_generate(model, PROMPTS, eos=(VOCAB - 1,), do_sample=False, max_new_tokens=steps)
    counts: dict[int, int] = {}
    for row in free:
        for token in set(row[: steps // 2]):
            counts[token] = counts.get(token, 0) + 1
    candidates = [t for t, c in counts.items() if 1 <= c < len(PROMPTS) and t != VOCAB - 1]
    assert candidates, "no token ends some rows early; pick another seed"
    return max(candidates, key=lambda t: (counts[t], -t))


def test_greedy_float32_equals_generate_and_finished_rows_get_no_work(model):
    eos = (early_eos(model),)
    expected = hf_generate(model, PROMPTS, eos, do_sample=False, max_new_tokens=12)
    assert any(len(r) < 12 for r in expected) and any(len(r) == 12 for r in expected)

    seen: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        got = decode(
            model,
            PROMPTS,
            pad_token_id=0,
            eos_token_ids=eos,
            max_new_tokens=12,
            precision="float32",
        )
    finally:
        hook.remove()
    assert got == expected
    # One forward per step; each forward computes exactly the rows still running, so the rows
    # forwarded add up to the tokens produced, and the batch shrinks as rows end.
    assert len(seen) == max(len(r) for r in got)
    assert sum(seen) == sum(len(r) for r in got) < len(PROMPTS) * 12
    assert seen == sorted(seen, reverse=True) and seen[0] == len(PROMPTS) > seen[-1]


def test_seeded_sampling_equals_an_uncached_one_row_loop_on_transformers_processors(model):
    """Sampling draws one uniform per running row and step (rows longest prompt first) and
    inverts the cumulative distribution (``draw``). The reference recomputes each row alone,
    without cache or padding, through transformers' own processors (known-token mask,
    temperature, top-p), and inverts at the same uniforms: the same ids."""
    never = (VOCAB + 10,)  # an EOS no row can produce: every row runs to the limit
    known = KnownTokensOnly(VOCAB - 6, missing_ids=(3, 8))
    steps = 10
    processors = LogitsProcessorList([known, TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.9)])
    generator = torch.Generator().manual_seed(123)
    uniforms = [1.0 - torch.rand((len(PROMPTS), 1), generator=generator) for _ in range(steps)]
    order = sorted(range(len(PROMPTS)), key=lambda i: -len(PROMPTS[i]))
    expected: list[list[int]] = [[] for _ in PROMPTS]
    with torch.no_grad():
        for slot, index in enumerate(order):
            ids = list(PROMPTS[index])
            for step in range(steps):
                logits = model(input_ids=torch.tensor([ids])).logits[:, -1, :].float()
                probs = torch.softmax(processors(torch.tensor([ids]), logits), dim=-1)
                cdf = probs.cumsum(-1)
                target = uniforms[step][slot : slot + 1] * cdf[:, -1:]
                token = int((cdf < target).sum())
                ids.append(token)
                expected[index].append(token)

    def sample(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return decode(
            model,
            PROMPTS,
            pad_token_id=0,
            eos_token_ids=never,
            max_new_tokens=steps,
            temperature=0.7,
            top_p=0.9,
            known=known,
            generator=generator,
            precision="float32",
        )

    first = sample(123)
    assert first == expected
    assert sample(123) == first and sample(124) != first
    flat = [t for row in first for t in row]
    assert len(set(flat)) > 10  # really sampled, not one token
    assert all(t < VOCAB - 6 and t not in (3, 8) for t in flat)


def test_draw_follows_the_probabilities_and_never_draws_a_zero():
    """``draw``'s frequencies against the probabilities themselves (within 5 standard errors),
    rows of different shapes, zero-weight ids never drawn, unnormalised weights accepted."""
    probs = torch.tensor(
        [
            [0.0, 0.5, 0.0, 0.3, 0.2, 0.0],
            [0.05, 0.0, 0.0, 0.0, 0.0, 0.95],
            [1.0, 1.0, 1.0, 1.0, 0.0, 0.0],  # weights, not normalised
        ]
    )
    n = 40_000
    generator = torch.Generator().manual_seed(7)
    draws = torch.stack([draw(probs, generator) for _ in range(n)])  # [n, rows]
    expected = probs / probs.sum(-1, keepdim=True)
    for row in range(probs.shape[0]):
        counts = torch.bincount(draws[:, row], minlength=probs.shape[1]).double() / n
        p = expected[row].double()
        assert torch.all(counts[p == 0] == 0)
        assert torch.all((counts - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12)


def test_continuous_batching_gives_each_row_its_own_tokens_and_no_work_after_the_end(model):
    """At most two rows at a time, a freed slot refilled with the next prompt (its prefill
    merged into the running cache): every row's greedy float32 tokens are those of ``generate``
    on that prompt alone, and each forward computes only rows still running."""
    eos = (early_eos(model),)
    alone = [hf_generate(model, [p], eos, do_sample=False, max_new_tokens=12)[0] for p in PROMPTS]
    assert len({len(r) for r in alone}) > 1  # rows end at different steps
    seen: list[tuple[int, int]] = []
    finished: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        got = decode(
            model,
            PROMPTS,
            pad_token_id=0,
            eos_token_ids=eos,
            max_new_tokens=12,
            precision="float32",
            batch_size=2,
            on_finish=finished.append,
        )
    finally:
        hook.remove()
    assert got == alone
    assert sum(finished) == len(PROMPTS)
    assert max(rows for rows, _ in seen) == 2
    assert sum(rows for rows, _ in seen) == sum(len(r) for r in got)  # one token per row forward
    prefills = [rows for rows, width in seen if width > 1]
    assert prefills[0] == 2 and len(prefills) > len(PROMPTS) // 2  # refilled, not batch by batch
    two_row_steps = [rows for rows, width in seen if width == 1 and rows == 2]
    assert len(two_row_steps) > max(len(r) for r in got)  # merged rows decode together


def test_bf16_greedy_stays_close_to_float32(model):
    """bf16 (the whole model held in bf16: weights, activations, KV cache) rounds everything to
    8 bits of mantissa, so near-ties may flip and a row then goes its own way; on this model the
    first two tokens of every row agree, and at least 75% of tokens overall."""
    options = {"pad_token_id": 0, "eos_token_ids": (VOCAB + 10,), "max_new_tokens": 8}
    exact = decode(model, PROMPTS, precision="float32", **options)
    half = decode(model, PROMPTS, precision="bf16", **options)
    assert [r[:2] for r in half] == [r[:2] for r in exact]
    same = sum(a == b for x, y in zip(exact, half, strict=True) for a, b in zip(x, y, strict=True))
    assert same >= 0.75 * sum(len(r) for r in exact)


def test_precision_is_checked_in_one_line(model):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        decode(
            model, PROMPTS, pad_token_id=0, eos_token_ids=(1,), max_new_tokens=2, precision="fp16"
        )


class Scripted(torch.nn.Module):
    """A 'model' whose forward makes ``script[step]`` the only likely next token, whatever the
    prompt: a decode loop driven through the same calls as a real causal LM."""

    def __init__(self, vocab_size: int, script: list[int]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = LlamaConfig(vocab_size=vocab_size, num_hidden_layers=1)
        self.generation_config = GenerationConfig()
        self.vocab_size, self.script = vocab_size, script
        self.cache, self.step, self.batch_sizes = None, 0, []

    def forward(self, input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep):
        if cache is not self.cache:  # a new decode call
            self.cache, self.step = cache, 0
        self.batch_sizes.append(input_ids.shape[0])
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab_size)
        logits[:, :, self.script[self.step]] = 100.0
        self.step += 1
        return type("Output", (), {"logits": logits})()


def test_generate_stops_at_eos_and_returns_only_the_continuation(tiny_tokenizer):
    a, b = (tiny_tokenizer.convert_tokens_to_ids(t) for t in ("A", "B"))
    eos = tiny_tokenizer.eos_token_id
    model = Scripted(len(tiny_tokenizer), [a, b, eos, a, a])
    for temperature in (0.0, 1.0):
        model.batch_sizes.clear()
        assert generate(
            model, tiny_tokenizer, ["x y z", "q"], max_new_tokens=5, temperature=temperature
        ) == ["AB", "AB"]
        assert model.batch_sizes == [2, 2, 2]  # nothing runs after EOS


def test_bf16_weight_casts_are_autocasts_own_and_are_put_back(model):
    """The loop holds Linear weights in bf16 while it runs (autocast would re-cast them every
    step under inference_mode): the logits are autocast's bit for bit, and the model's own
    float32 parameters come back, the same objects with the same values."""
    from spectrumkd.models.precision import weights_held_in

    before = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    x = torch.tensor([[5, 17, 33, 2, 9]])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=x).logits
        with weights_held_in(torch.bfloat16, model):
            assert model.lm_head.weight.dtype == torch.bfloat16
            held = model(input_ids=x).logits
    assert torch.equal(plain, held)
    decode(model, PROMPTS, pad_token_id=0, eos_token_ids=(1,), max_new_tokens=3, precision="bf16")
    for name, parameter in model.named_parameters():
        assert parameter is before[name][0] and torch.equal(parameter, before[name][1])
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tie survives
    assert not model.lm_head._forward_pre_hooks  # the contiguous-input hook is gone
