"""The difficulty metrics by name: what a metric's scorer receives and how a metric is registered.

Every metric writes the same kind of table, ``{"id", "difficulty", ...}`` rows with lower =
easier, so any curation strategy can rank by any of them. The built-in metrics live in this
package (:mod:`spectrumkd.scoring.metrics` registers them); the ones that need the evaluation
stage (the code sandbox, ``math-verify``) register themselves through :func:`register_metric`
when :mod:`spectrumkd.evaluation` is imported, so the imports still only go down the layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from spectrumkd.scoring.scorer import ScorableExample, ScoringSettings


class TextExample(Protocol):
    """The texts of an example (``spectrumkd.data.Example`` is one): what reflection reads."""

    id: str
    prompt: str
    response: str
    meta: dict


@dataclass(frozen=True)
class MetricInputs:
    """What a metric's scorer receives; ``texts[i]`` is the text of ``examples[i]`` (or None
    when the caller gave no texts and the metric needs none)."""

    examples: Sequence[ScorableExample]
    texts: Sequence[TextExample] | None
    model: Any
    tokenizer: Any
    settings: ScoringSettings  # resolved for the model's device when there is a model
    options: Mapping[str, Any]  # the metric's options, defaults filled in
    work_dir: Path | None  # where the scorer keeps resumable shards (None: no files)
    progress: bool
    pad_token_id: int


# A scorer returns one row per example, in the order of ``inputs.examples``: at least "id" and
# "difficulty" (a finite number, lower = easier), plus the metric's own columns.
Scorer = Callable[[MetricInputs], list[dict[str, Any]]]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    scorer: Scorer
    description: str  # one line, shown by `spectrumkd score --help`
    needs_model: bool = False
    needs_tokenizer: bool = False
    needs_texts: bool = False  # prompt and reference texts, not only token ids
    # The options the metric accepts and their defaults; a given option must have the default's
    # type (an int is accepted for a float).
    options: Mapping[str, Any] = field(default_factory=dict)
    # What else decides the table, recorded in the run's manifest: e.g. the digest of a file an
    # option names (a table must not be reused after the file changed).
    describe: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None


METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> None:
    """Add a metric by name (a later registration of the same name replaces the earlier one,
    so a module reloaded in a notebook does not fail)."""
    if not spec.name or not spec.name.replace("_", "").isalnum():
        raise ValueError(f"metric name {spec.name!r} must be letters, digits and underscores")
    METRICS[spec.name] = spec


def metric_names() -> tuple[str, ...]:
    return tuple(sorted(METRICS))


def get_metric(name: str) -> MetricSpec:
    if name not in METRICS:
        hint = ""
        if name in EVALUATION_METRICS:
            hint = " (it is registered when spectrumkd.evaluation is imported)"
        raise ValueError(
            f"unknown difficulty metric {name!r}{hint}; choose one of {', '.join(metric_names())}"
        )
    return METRICS[name]


# Metrics that the evaluation stage registers (they need the sandbox or math-verify).
EVALUATION_METRICS = ("code_execution", "maths_verified")


def resolve_options(spec: MetricSpec, given: Mapping[str, Any]) -> dict[str, Any]:
    """The metric's defaults updated with ``given``; an unknown option or one of the wrong type
    is refused in one line naming the options the metric takes."""
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        known = ", ".join(sorted(spec.options)) or "none"
        raise ValueError(
            f"metric {spec.name!r} has no option {unknown[0]!r}; its options are: {known}"
        )
    resolved = dict(spec.options)
    for key, value in given.items():
        default = spec.options[key]
        wanted = type(default)
        ok = isinstance(value, wanted) and not (isinstance(value, bool) and wanted is not bool)
        if wanted is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if default is None:
            ok = True
        if not ok:
            raise ValueError(
                f"metric {spec.name!r}: option {key}={value!r} must be a {wanted.__name__} "
                f"(default {default!r})"
            )
        resolved[key] = value
    return resolved
