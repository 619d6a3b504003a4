"""Shared fixtures: a tiny BPE tokenizer trained on the embedded Dolly text and tiny random
Llama models built from a config in code, so unit tests run in seconds with no download."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SHARED = Path(__file__).resolve().parents[2] / "shared"
EMBEDDED_DOLLY = (
    Path(__file__).resolve().parents[1]
    / "src"
    / "spectrumkd"
    / "data"
    / "embedded"
    / "dolly_dev.jsonl"
)


# torch's own choice, read before any fixture changes it: what tests with the real model get.
DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True, scope="module")
def one_thread_per_module(request):
    """Tiny models run many small kernels: on this 2-core machine one torch thread was about 15x
    faster than two (thread hand-offs dominate). Set for the whole module because module-scoped
    model fixtures are built (and may generate) before any function-scoped fixture runs; a
    module marked ``slow`` keeps the default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """One thread per test as well (a test may have changed it); tests marked ``slow`` (the real
    SmolLM2) get torch's default instead, also inside a one-thread module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS if request.node.get_closest_marker("slow") else 1)
    yield
    torch.set_num_threads(threads)


def _dolly_texts(limit: int = 400) -> list[str]:
    texts = []
    with EMBEDDED_DOLLY.open() as handle:
        for line, _ in zip(handle, range(limit), strict=False):
            row = json.loads(line)
            texts.append(row["prompt"] + row["output"])
    return texts


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_dolly_texts(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_tiny_llama(vocab_size: int, num_layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_pair(folder: Path, tokenizer) -> tuple[Path, Path]:
    """A 2-layer teacher and a 1-layer student of ``tokenizer``'s vocabulary, each saved with the
    tokenizer under ``folder`` (``teacher/``, ``student/``): a pair ``distill`` can load."""
    teacher, student = folder / "teacher", folder / "student"
    for path, layers, seed in ((teacher, 2, 1), (student, 1, 2)):
        build_tiny_llama(len(tokenizer), num_layers=layers, seed=seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return teacher, student


@dataclass(frozen=True)
class TokenExample:
    """What the scorer, the cache and the trainer read: an id, token ids and masked labels."""

    id: str
    input_ids: list[int]
    labels: list[int]


def random_token_examples(
    n: int, vocab: int, seed: int = 0, max_len: int = 48, id_format: str = "{:05d}"
) -> list[TokenExample]:
    """Random token sequences of 6..max_len tokens whose prompt (a random prefix) is masked."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        length = int(rng.integers(6, max_len))
        prompt = int(rng.integers(1, length - 2))
        ids = rng.integers(3, vocab, size=length).tolist()
        examples.append(TokenExample(id_format.format(i), ids, [-100] * prompt + ids[prompt:]))
    return examples


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer) -> LlamaForCausalLM:
    return build_tiny_llama(len(tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer, tiny_model) -> Path:
    """A tiny model and its tokenizer saved as an ordinary HF folder (safetensors)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not path.exists():
        pytest.skip("../shared/data is not beside this checkout")
    return path
