"""Answer-verified difficulty for maths (spec section 7, beyond the papers): whether the
untrained student's greedy final answer to a training problem verifies against the reference
under ``math-verify``; difficulty 0 when it does, 1 when it does not. With ``samples`` > 1 the
student answers that many times at ``temperature`` (seeds ``seed``, ``seed + 1``, ...) and the
difficulty is the share of answers that do not verify.

The reference final answer is read from the example's response: GSM8K's ``#### 42`` marker, or
the last ``\\boxed{...}`` (MATH). The student's final answer is the last ``\\boxed{...}`` of its
answer, cut where it starts writing another problem, as the maths suite reads it
(:func:`spectrumkd.evaluation.maths.score_math_prediction`), or else the number after its own
``####`` (a student trained on GSM8K's solutions ends that way).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from spectrumkd.evaluation.maths import (
    cut_at_next_problem,
    extract_boxed,
    gsm8k_final_answer,
    is_equivalent,
)
from spectrumkd.scoring.reflection import REFLECTION_OPTIONS, answer_rows, check_reflection_options
from spectrumkd.scoring.registry import MetricInputs, MetricSpec, register_metric

MATHS_DIFFICULTY_OPTIONS: dict[str, Any] = {
    **REFLECTION_OPTIONS,
    "temperature": 0.0,  # greedy; set above 0 with samples > 1
    "max_prompt_tokens": 512,
    "max_total_tokens": 1024,
    "max_new_tokens": 512,
    "samples": 1,
}


def reference_answer(response: str) -> str | None:
    """The final answer of a reference solution: after GSM8K's ``####``, else its last box."""
    if "####" in response:
        return gsm8k_final_answer(response)
    return extract_boxed(response)


def final_answer(prediction: str) -> str | None:
    """The student's final answer: its last box (before any invented next problem), else the
    text after its last ``####``."""
    text = cut_at_next_problem(prediction)
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        return tail[0].strip().replace(",", "") if tail and tail[0].strip() else None
    return None


def answer_verifies(prediction: str, reference: str) -> bool:
    """Whether the student's final answer is equivalent to the reference final answer."""
    guess = final_answer(prediction)
    return guess is not None and is_equivalent(guess, reference)


def maths_verified_rows(inputs: MetricInputs) -> list[dict[str, Any]]:
    options = dict(inputs.options)
    check_reflection_options(options)
    samples = int(options["samples"])
    if samples < 1:
        raise ValueError(f"option samples={samples} must be >= 1")
    if samples > 1 and float(options["temperature"]) == 0:
        raise ValueError("samples > 1 needs temperature > 0 (greedy answers are all the same)")
    texts = inputs.texts
    assert texts is not None
    references = [reference_answer(text.response) for text in texts]
    missing = [text.id for text, ref in zip(texts, references, strict=True) if ref is None]
    if missing:
        raise ValueError(
            f"{len(missing)} references have no final answer (first: {missing[0]!r}); maths_verified "
            "needs responses ending in '#### N' (GSM8K) or holding \\boxed{...}"
        )

    def verify(indices: list[int], answers: list[str]) -> list[dict[str, Any]]:
        return [
            {"verified": answer_verifies(answer, references[i])}  # type: ignore[arg-type]
            for i, answer in zip(indices, answers, strict=True)
        ]

    runs = []
    for sample in range(samples):
        one = replace(
            inputs,
            options={**options, "seed": int(options["seed"]) + sample},
            work_dir=None if inputs.work_dir is None else inputs.work_dir / f"sample-{sample}",
        )
        runs.append(
            answer_rows(
                one,
                verify,
                max_new_tokens=int(options["max_new_tokens"]),
                required=("verified",),
                desc="maths answers",
            )
        )
    rows = []
    for index, example in enumerate(inputs.examples):
        verified = sum(bool(run[index]["verified"]) for run in runs)
        rows.append(
            {
                "id": example.id,
                "difficulty": 1.0 - verified / samples,
                "verified": verified,
                "samples": samples,
                "reference_answer": references[index],
                "answer": runs[0][index]["answer"],
            }
        )
    return rows


MATHS_VERIFIED = MetricSpec(
    "maths_verified",
    maths_verified_rows,
    "0 when the student's greedy final answer verifies (math-verify), else 1; maths data",
    needs_model=True,
    needs_texts=True,
    options=MATHS_DIFFICULTY_OPTIONS,
)
register_metric(MATHS_VERIFIED)
