"""Decoding in forked CPU workers (spectrumkd.models.decode_workers) against one process.

Greedy float32 rows do not depend on which rows share a batch, so two workers must give what
one gives, row for row; sampled shares must each equal the one-process loop run on that share
alone with that share's generator; a worker's failure must reach the caller.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import build_tiny_llama
from hypothesis import given
from hypothesis import strategies as st

from spectrumkd.models.decode_workers import auto_workers, decode_in_workers, shares
from spectrumkd.models.generation import batch_seed, decode, generate

PROMPTS = ["a b c d e", "q", "x y", "m n o p q r s", "z", "c c c", "b a"]


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    model = build_tiny_llama(len(tiny_tokenizer), num_layers=2, seed=5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4.0)  # peaked logits: rows differ and greedy has no near-ties
    return model.eval()


@given(st.lists(st.integers(1, 50), max_size=30), st.integers(1, 5))
def test_shares_deal_every_prompt_once_longest_first(lengths, workers):
    dealt = shares(lengths, workers)
    flat = sorted(i for share in dealt for i in share)
    assert flat == list(range(len(lengths)))
    assert len(dealt) == min(workers, len(lengths))
    sizes = [len(share) for share in dealt]
    assert not sizes or max(sizes) - min(sizes) <= 1
    for share in dealt:  # each share runs from its longest prompt down
        assert [lengths[i] for i in share] == sorted((lengths[i] for i in share), reverse=True)


def test_two_workers_give_one_process_greedy_rows(model, tiny_tokenizer):
    options = {"max_new_tokens": 6, "precision": "float32", "batch_size": 2}
    one = generate(model, tiny_tokenizer, PROMPTS, workers=1, **options)
    two = generate(model, tiny_tokenizer, PROMPTS, workers=2, **options)
    assert two == one
    assert len(set(one)) > 1


def test_sampled_shares_are_the_one_process_loop_on_each_share(model, tiny_tokenizer):
    options = {"max_new_tokens": 5, "precision": "float32", "temperature": 1.0, "seed": 7}
    two = generate(model, tiny_tokenizer, PROMPTS, workers=2, **options)
    assert two == generate(model, tiny_tokenizer, PROMPTS, workers=2, **options)  # repeatable
    encoded = [tiny_tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    eos = [tiny_tokenizer.eos_token_id]
    for index, share in enumerate(shares([len(e) for e in encoded], 2)):
        generator = torch.Generator().manual_seed(batch_seed(7, index))
        alone = decode(
            model,
            [encoded[i] for i in share],
            pad_token_id=tiny_tokenizer.pad_token_id,
            eos_token_ids=eos,
            max_new_tokens=5,
            temperature=1.0,
            generator=generator,
            precision="float32",
            batch_size=64,
        )
        for i, tokens in zip(share, alone, strict=True):
            cut = tokens[: tokens.index(eos[0])] if eos[0] in tokens else tokens
            assert two[i] == tiny_tokenizer.decode(cut, skip_special_tokens=True)


def failing_share(prompts, index):
    if index == 1:
        raise ValueError("share one is broken")
    return [[1] for _ in prompts]


def vanishing_share(prompts, index):
    if index == 1:
        os._exit(3)  # as if the system killed it
    return [[1] for _ in prompts]


def test_a_worker_failure_reaches_the_caller():
    prompts = [[1, 2], [3], [4, 5, 6], [7]]
    with pytest.raises(RuntimeError, match="share one is broken"):
        decode_in_workers(failing_share, prompts, 2)
    with pytest.raises(RuntimeError, match="exit code 3"):
        decode_in_workers(vanishing_share, prompts, 2)
    threads = torch.get_num_threads()
    assert decode_in_workers(lambda p, i: [[i] for _ in p], prompts, 2) == [[1], [0], [0], [1]]
    assert torch.get_num_threads() == threads  # the caller's threads are given back


def test_workers_are_checked_and_auto_is_cpu_only(model, tiny_tokenizer):
    with pytest.raises(ValueError, match="workers must be >= 1"):
        generate(model, tiny_tokenizer, PROMPTS, workers=0)
    assert auto_workers("cuda", 100) == 1
    assert auto_workers("cpu", 1) == 1
    assert auto_workers("cpu", 100) == (2 if torch.get_num_threads() == 2 else 1)
