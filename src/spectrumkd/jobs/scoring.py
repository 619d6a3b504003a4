"""The score job: a model's per-example difficulty of a dataset, into one folder."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spectrumkd.curation import Spectrum, build_spectrum, spectrum_rows
from spectrumkd.data import DataConfig, Example, TokenizedDataset, TokenizedExample
from spectrumkd.io import write_json, write_jsonl
from spectrumkd.models import load_model, load_tokenizer, resolve_device, resolve_dtype
from spectrumkd.scoring import (
    DifficultyResult,
    DifficultyTable,
    ScoringSettings,
    compute_difficulty,
    get_metric,
    score_examples,
)
from spectrumkd.scoring.difficulty import Reduction

CROSS_ENTROPY_METRICS = ("ce_mean", "ce_sum")


@dataclass(frozen=True)
class ScoreResult:
    table: DifficultyTable | None  # the cross-entropy table; None for another metric
    spectrum: Spectrum  # the difficulties of ``metric`` in rank order, with zones
    seconds: float
    tokens: int
    precision: str | None = None  # the forward's precision, when the job resolved it
    metric: str = "ce_mean"

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def score_dataset(
    model: torch.nn.Module,
    dataset: TokenizedDataset,
    out_dir: str | Path,
    *,
    pad_token_id: int,
    settings: ScoringSettings | None = None,
    reduction: Reduction = "mean",
    lambda_a: float = 0.1,
    lambda_b: float = 0.1,
    progress: bool = True,
    description: dict[str, Any] | None = None,
    workers: int | None = None,
) -> ScoreResult:
    """Score ``dataset`` with a loaded ``model`` into ``out_dir``: ``difficulties.jsonl``
    (dataset order), ``spectrum.jsonl`` (rank order, zones for ``lambda_a``/``lambda_b``),
    ``dropped.jsonl`` (examples the length limit removed) and ``score_summary.json``. A killed
    run resumes from its finished shards. ``workers``: CPU processes scoring a share of the
    shards each (``score_examples``; default 2 on a CPU where torch has exactly 2 threads, else 1)."""
    out = Path(out_dir)
    refuse_another_metrics_folder(out)
    start = time.perf_counter()
    table = score_examples(
        model,
        dataset.examples,
        pad_token_id=pad_token_id,
        settings=settings,
        out_dir=out,
        progress=progress,
        workers=workers,
    )
    seconds = time.perf_counter() - start
    spectrum = build_spectrum(table.ids, table.difficulties(reduction), lambda_a, lambda_b)
    write_jsonl(out / "spectrum.jsonl", spectrum_rows(spectrum, table))
    write_jsonl(out / "dropped.jsonl", [{"id": i, "reason": r} for i, r in dataset.dropped])
    tokens = sum(len(e.input_ids) for e in dataset.examples)
    write_json(
        out / "score_summary.json",
        {
            **(description or {}),
            "examples_scored": len(table),
            "examples_dropped": len(dataset.dropped),
            "reduction": reduction,
            "lambda_a": lambda_a,
            "lambda_b": lambda_b,
            "tokens": tokens,
            "seconds_this_run": round(seconds, 2),
        },
    )
    return ScoreResult(table=table, spectrum=spectrum, seconds=seconds, tokens=tokens)


def refuse_another_metrics_folder(out: Path) -> None:
    """The cross-entropy scorer writes ``difficulties.jsonl`` without reading ``metric.json``;
    over a folder of another metric it would leave that manifest beside cross-entropy rows, and
    a later run of that metric would take them for its own."""
    from spectrumkd.scoring.metrics import MANIFEST_FILE

    manifest = out / MANIFEST_FILE
    if not manifest.exists():
        return
    try:
        metric = json.loads(manifest.read_text(encoding="utf-8")).get("metric")
    except (ValueError, OSError, AttributeError):
        metric = None
    if metric not in CROSS_ENTROPY_METRICS:
        raise ValueError(
            f"{out} holds difficulties of another metric ({metric or 'unreadable'} in "
            f"{MANIFEST_FILE}); pass another output folder to score the cross-entropy"
        )


def known_metric(metric: str, options: dict[str, Any] | None = None) -> str:
    """``metric`` when it is a difficulty metric (and ``options`` are its own), else a one-line
    refusal listing them; the metrics the evaluation stage provides (code execution, verified
    maths) are registered first."""
    from spectrumkd.scoring.registry import EVALUATION_METRICS, get_metric, resolve_options

    if metric in EVALUATION_METRICS:
        import spectrumkd.evaluation  # noqa: F401 - registers code_execution, maths_verified
    spec = get_metric(metric)
    if options:
        resolve_options(spec, options)
    return metric


def student_difficulties(
    metric: str,
    model: torch.nn.Module | None,
    tokenizer: Any,
    examples: Sequence[TokenizedExample],
    out_dir: str | Path | None,
    *,
    texts: Sequence[Example] | None = None,
    settings: ScoringSettings | None = None,
    progress: bool = True,
    **options: Any,
) -> DifficultyResult:
    """The difficulty ``metric`` (``ce_mean``, ``length``, ``reflection_rrf``, ...; lower =
    easier) of ``examples`` for the untrained student ``model``, through
    :func:`spectrumkd.scoring.compute_difficulty`: ``out_dir/difficulties.jsonl`` and its
    manifest, reused or resumed by a rerun. ``texts`` (the rows' prompts and references) are
    needed by the metrics that generate; ``options`` are the metric's own."""
    known_metric(metric)
    return compute_difficulty(
        metric,
        examples,
        texts=texts,
        model=model,
        tokenizer=tokenizer,
        out_dir=out_dir,
        settings=settings,
        pad_token_id=tokenizer.pad_token_id,
        progress=progress,
        **options,
    )


def score(
    model: str,
    data: DataConfig,
    out_dir: str | Path,
    *,
    metric: str = "ce_mean",
    metric_options: dict[str, Any] | None = None,
    settings: ScoringSettings | None = None,
    reduction: Reduction = "mean",
    lambda_a: float = 0.1,
    lambda_b: float = 0.1,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    progress: bool = True,
    console: Any = None,
    workers: int | None = None,
) -> ScoreResult:
    """``spectrumkd score``: load ``model`` (a spec: ``smollm2``, a ``.gguf``, a folder or a hub
    id) and ``data``, then score it by ``metric``: the cross-entropy (``ce_mean``, the default,
    or ``ce_sum``; ``reduction`` picks the same for ``ce_mean``) through :func:`score_dataset`,
    any other metric through :func:`student_difficulties` with ``metric_options``; both write
    ``difficulties.jsonl``, ``spectrum.jsonl`` (rank order, zones for ``lambda_a``/``lambda_b``)
    and ``score_summary.json``. The data is loaded (and refused, if it is bad) before the
    model; ``console`` (a ``rich`` console) hears what the data holds."""
    known_metric(metric)
    if metric_options and metric in CROSS_ENTROPY_METRICS:
        raise ValueError(f"metric {metric} takes no options; drop them")
    settings = settings or ScoringSettings()
    resolved_device = resolve_device(device)
    load = {"trust_remote_code": trust_remote_code, "gguf_file": gguf_file}
    tokenizer = load_tokenizer(model, **load)
    texts = data.load_texts(tokenizer)
    dataset = data.tokenize(texts, tokenizer)
    if console is not None:
        console.print(f"data: {dataset.summary()}")
    description = {
        "model": model,
        "data": data.source,
        "template": data.template,
        "max_length": data.max_length,
    }
    needs_model = metric in CROSS_ENTROPY_METRICS or get_metric(metric).needs_model
    loaded = None
    precision = None
    if needs_model:
        loaded = load_model(
            model, dtype=resolve_dtype(dtype, resolved_device), device=resolved_device, **load
        )
        precision = settings.resolved(resolved_device).precision
        description["precision"] = precision
    if metric in CROSS_ENTROPY_METRICS:
        result = score_dataset(
            loaded,
            dataset,
            out_dir,
            pad_token_id=tokenizer.pad_token_id,
            settings=settings,
            reduction="sum" if metric == "ce_sum" else reduction,
            lambda_a=lambda_a,
            lambda_b=lambda_b,
            progress=progress,
            description=description,
            workers=workers,
        )
        return dataclasses.replace(result, precision=precision, metric=metric)
    out = Path(out_dir)
    start = time.perf_counter()
    scored = student_difficulties(
        metric,
        loaded,
        tokenizer,
        dataset.examples,
        out,
        texts=texts,
        settings=settings,
        progress=progress,
        **(metric_options or {}),
    )
    seconds = time.perf_counter() - start
    spectrum = build_spectrum(scored.ids, scored.difficulties, lambda_a, lambda_b)
    write_jsonl(out / "spectrum.jsonl", spectrum.rows())
    write_jsonl(out / "dropped.jsonl", [{"id": i, "reason": r} for i, r in dataset.dropped])
    tokens = sum(len(e.input_ids) for e in dataset.examples)
    write_json(
        out / "score_summary.json",
        {
            **description,
            "metric": metric,
            "metric_options": metric_options or {},
            "examples_scored": len(scored),
            "examples_dropped": len(dataset.dropped),
            "reused": scored.reused,
            "lambda_a": lambda_a,
            "lambda_b": lambda_b,
            "tokens": tokens,
            "seconds_this_run": round(seconds, 2),
        },
    )
    return ScoreResult(
        table=None,
        spectrum=spectrum,
        seconds=seconds,
        tokens=tokens,
        precision=precision,
        metric=metric,
    )
