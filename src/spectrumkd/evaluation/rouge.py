"""ROUGE-L F1 x 100 as MiniLLM reports it: ``rouge_score`` with the Porter stemmer, the best
score over the references of an example, the plain mean over examples.

Unlike MiniLLM's script, which silently truncates to ``min(len(preds), len(refs))``, a length
mismatch is an error: a dropped or duplicated prediction would shift every later pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from rouge_score import rouge_scorer


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F1 x 100 of ``prediction`` against the best of ``references``."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("rouge_l needs at least one reference")
    # RougeScorer.score takes (target, prediction); F1 is symmetric but precision/recall are not.
    return 100.0 * max(_scorer().score(ref, prediction)["rougeL"].fmeasure for ref in refs)


def rouge_l_scores(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]]
) -> list[float]:
    """Per-example ROUGE-L x 100; ``references[i]`` is a string or a list of strings."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; they must pair "
            "one to one (nothing is truncated)"
        )
    return [rouge_l(p, r) for p, r in zip(predictions, references, strict=True)]


def corpus_rouge_l(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Mean ROUGE-L x 100 over a set (MiniLLM's per-set number for one seed)."""
    scores = rouge_l_scores(predictions, references)
    if not scores:
        raise ValueError("corpus_rouge_l needs at least one prediction")
    return sum(scores) / len(scores)
