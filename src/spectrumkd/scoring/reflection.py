"""Student reflection (spec section 1, steps 1 and 3): the untrained student answers every
training prompt near-greedily (temperature 0.01, no top-k, top-p 1; prompt <= 256 tokens,
prompt + answer <= 512), and its answer is scored against the reference by ROUGE-L F1
(``rouge_score``, ``rougeL``, Porter stemmer); difficulty = 1 - F1.

Generation is the expensive part, so answers are written in shards and a killed run resumes.
:func:`answer_rows` is the shared machinery: the execution- and verification-based metrics of
the evaluation stage generate through it too, with their own scoring of the answers.

Batches: prompts sorted by token length (longest first, ties in data order), ``batch_size`` at
a time; a batch may add ``max_total_tokens - (its longest prompt)`` tokens, which is how a
left-padded ``generate(max_length=512)`` call budgets a batch (the authors' setting). The plan
depends only on the prompts' lengths and the options, so a resumed run generates every answer
in the batch, and with the seed, an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from rouge_score import rouge_scorer

from spectrumkd.batching import IGNORE_INDEX, length_sorted_batches, prompt_token_ids
from spectrumkd.models.generation import batch_seed, generate
from spectrumkd.scoring.registry import MetricInputs
from spectrumkd.scoring.shards import run_in_shards, shard_plan

REFLECTION_OPTIONS: dict[str, Any] = {
    "temperature": 0.01,
    "top_p": 1.0,
    "max_prompt_tokens": 256,
    "max_total_tokens": 512,
    "seed": 0,
    "batch_size": 8,
    "shard_batches": 8,  # generation batches per shard file: the work a kill can lose
}


@lru_cache(maxsize=1)
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1] (``RougeScorer.score`` takes the reference first)."""
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def prompt_lengths(inputs: MetricInputs) -> list[int]:
    return [sum(1 for label in e.labels if label == IGNORE_INDEX) for e in inputs.examples]


def answer_rows(
    inputs: MetricInputs,
    score_answers: Callable[[list[int], list[str]], list[dict[str, Any]]],
    *,
    max_new_tokens: int | None = None,
    required: Sequence[str] = (),
    desc: str = "reflection",
    prompts: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """``{"index", "id", "answer", **score_answers(...)}`` per example in data order: the
    student's answer to ``inputs.texts[i].prompt`` under the options ``temperature``,
    ``top_p``, ``seed``, ``batch_size``, ``shard_batches``, ``max_prompt_tokens`` and
    ``max_total_tokens`` (and at most ``max_new_tokens`` new tokens when given).
    ``score_answers(indices, answers)`` gives each answer's extra fields; it runs before the
    shard is written, so a resumed run neither regenerates nor rescores a finished shard.
    ``prompts`` replaces the examples' own prompts (one per example)."""
    options = inputs.options
    if prompts is None:
        assert inputs.texts is not None  # compute_difficulty refuses a text metric without them
        prompts = [text.prompt for text in inputs.texts]
        lengths = prompt_lengths(inputs)
    else:
        lengths = [len(ids) for ids in prompt_token_ids(inputs.tokenizer, list(prompts))]
    limit = int(options["max_prompt_tokens"])
    total = int(options["max_total_tokens"])
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if too_long:
        first = inputs.examples[too_long[0]].id
        raise ValueError(
            f"{len(too_long)} prompts are longer than max_prompt_tokens={limit} tokens (first: "
            f"{first!r}); load the data with max_prompt_length={limit} (--max-prompt-length) "
            "or raise the option"
        )
    if total <= limit:
        raise ValueError(
            f"max_total_tokens={total} must exceed max_prompt_tokens={limit}, or no answer fits"
        )
    ids = [example.id for example in inputs.examples]
    batches = length_sorted_batches(lengths, int(options["batch_size"]))
    number_of = {tuple(batch): n for n, batch in enumerate(batches)}

    def compute(shard: list[list[int]]) -> list[dict[str, Any]]:
        indices, answers = [], []
        for batch in shard:
            budget = total - max(lengths[i] for i in batch)
            if max_new_tokens is not None:
                budget = min(budget, max_new_tokens)
            answers.extend(
                generate(
                    inputs.model,
                    inputs.tokenizer,
                    [prompts[i] for i in batch],
                    max_new_tokens=budget,
                    temperature=float(options["temperature"]),
                    top_p=float(options["top_p"]),
                    seed=batch_seed(int(options["seed"]), number_of[tuple(batch)]),
                    batch_size=len(batch),
                    precision=inputs.settings.precision,
                )
            )
            indices.extend(batch)
        extras = score_answers(indices, answers)
        return [
            {"index": i, "id": ids[i], "answer": answer, **extra}
            for i, answer, extra in zip(indices, answers, extras, strict=True)
        ]

    return run_in_shards(
        shard_plan(batches, int(options["shard_batches"])),
        compute,
        ids,
        shard_dir=None if inputs.work_dir is None else inputs.work_dir / "shards",
        required=("answer", *required),
        progress=inputs.progress,
        desc=desc,
    )


def check_reflection_options(options: dict[str, Any]) -> None:
    if not float(options["temperature"]) >= 0:
        raise ValueError(f"temperature={options['temperature']} must be >= 0 (0 = greedy)")
    if not 0 < float(options["top_p"]) <= 1:
        raise ValueError(f"top_p={options['top_p']} must be in (0, 1]")
    for key in ("max_prompt_tokens", "max_total_tokens", "batch_size", "shard_batches"):
        if int(options[key]) < 1:
            raise ValueError(f"option {key}={options[key]} must be >= 1")


def reflection_rouge_rows(inputs: MetricInputs) -> list[dict]:
    check_reflection_options(dict(inputs.options))
    texts = inputs.texts
    assert texts is not None

    def score(indices: list[int], answers: list[str]) -> list[dict[str, Any]]:
        return [
            {"rouge_f1": rouge_l_f1(answer, texts[i].response)}
            for i, answer in zip(indices, answers, strict=True)
        ]

    rows = answer_rows(inputs, score, required=("rouge_f1",))
    return [
        {
            "id": row["id"],
            "difficulty": 1.0 - row["rouge_f1"],
            "rouge_f1": row["rouge_f1"],
            "answer": row["answer"],
        }
        for row in rows
    ]
