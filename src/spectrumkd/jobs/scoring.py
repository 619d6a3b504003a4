"""The score job: a model's per-example difficulty of a dataset, into one folder."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spectrumkd.curation import Spectrum, build_spectrum, spectrum_rows
from spectrumkd.data import DataConfig, TokenizedDataset
from spectrumkd.io import write_json, write_jsonl
from spectrumkd.models import load_model, load_tokenizer, resolve_device, resolve_dtype
from spectrumkd.scoring import DifficultyTable, ScoringSettings, score_examples
from spectrumkd.scoring.difficulty import Reduction


@dataclass(frozen=True)
class ScoreResult:
    table: DifficultyTable
    spectrum: Spectrum
    seconds: float
    tokens: int
    precision: str | None = None  # the forward's precision, when the job resolved it

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
) -> ScoreResult:
    """Score ``dataset`` with a loaded ``model`` into ``out_dir``: ``difficulties.jsonl``
    (dataset order), ``spectrum.jsonl`` (rank order, zones for ``lambda_a``/``lambda_b``),
    ``dropped.jsonl`` (examples the length limit removed) and ``score_summary.json``. A killed
    run resumes from its finished shards."""
    out = Path(out_dir)
    start = time.perf_counter()
    table = score_examples(
        model,
        dataset.examples,
        pad_token_id=pad_token_id,
        settings=settings,
        out_dir=out,
        progress=progress,
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


def score(
    model: str,
    data: DataConfig,
    out_dir: str | Path,
    *,
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
) -> ScoreResult:
    """``spectrumkd score``: load ``model`` (a spec: ``smollm2``, a ``.gguf``, a folder or a hub
    id) and ``data``, then :func:`score_dataset`. The data is loaded (and refused, if it is bad)
    before the model; ``console`` (a ``rich`` console) hears what the data holds."""
    settings = settings or ScoringSettings()
    resolved_device = resolve_device(device)
    load = {"trust_remote_code": trust_remote_code, "gguf_file": gguf_file}
    tokenizer = load_tokenizer(model, **load)
    dataset = data.load(tokenizer)
    if console is not None:
        console.print(f"data: {dataset.summary()}")
    loaded = load_model(
        model, dtype=resolve_dtype(dtype, resolved_device), device=resolved_device, **load
    )
    precision = settings.resolved(resolved_device).precision
    result = score_dataset(
        loaded,
        dataset,
        out_dir,
        pad_token_id=tokenizer.pad_token_id,
        settings=settings,
        reduction=reduction,
        lambda_a=lambda_a,
        lambda_b=lambda_b,
        progress=progress,
        description={
            "model": model,
            "data": data.source,
            "template": data.template,
            "max_length": data.max_length,
            "precision": precision,
        },
    )
    return dataclasses.replace(result, precision=precision)
