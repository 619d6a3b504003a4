"""Difficulty metrics by name, and the one entry point that computes any of them into a folder.

:func:`compute_difficulty` writes ``out_dir/difficulties.jsonl`` (``{"id", "difficulty", ...}``
rows in data order, lower = easier, plus the metric's own columns) and ``out_dir/metric.json``
(the metric, its options, the scoring settings, the model's and the data's fingerprints). A rerun
with the same manifest reuses the finished table (or resumes the metric's shards); a rerun with
a different one is refused in one line, so tables of different runs never mix.

Built-in metrics (:data:`spectrumkd.scoring.registry.METRICS`):

- ``ce_mean`` / ``ce_sum``: the student's response cross-entropy, today's scorer
  (:func:`spectrumkd.scoring.score_examples`) unchanged, per-token mean or sum.
- ``length``: response tokens (option ``include_prompt``: the whole sequence).
- ``unigram_entropy``: model-free, ``-(1/|y|) sum_t log p_hat(y_t)`` with ``p_hat`` the add-one
  smoothed unigram distribution of all the training responses' tokens.
- ``predictive_entropy``: the student's mean predictive entropy over response positions.
- ``reflection_rouge``: 1 - ROUGE-L F1 of the student's near-greedy answer (spec section 1).
- ``reflection_rrf``: the reciprocal rank fusion (constant 60) of the reflection ROUGE rank and
  the CE rank (spec section 1); the difficulty is the 1-based position in the easy-to-hard order.
- ``rrf``: the same fusion of any finished tables (option ``tables=a.jsonl,b.jsonl``), e.g.
  ``code_execution`` with ``ce_mean`` (spec section 7).

``code_execution`` and ``maths_verified`` need the evaluation stage and are registered when
:mod:`spectrumkd.evaluation` is imported (:func:`register_metric`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectrumkd.io import read_jsonl, write_json, write_jsonl
from spectrumkd.scoring.difficulty import DifficultyTable, read_difficulties, table_from_rows
from spectrumkd.scoring.fusion import RRF_CONSTANT, fuse, fused_positions
from spectrumkd.scoring.reflection import REFLECTION_OPTIONS, reflection_rouge_rows
from spectrumkd.scoring.registry import (
    MetricInputs,
    MetricSpec,
    TextExample,
    get_metric,
    register_metric,
    resolve_options,
)
from spectrumkd.scoring.scorer import (
    ScorableExample,
    ScoringSettings,
    data_fingerprint,
    model_fingerprint,
    score_examples,
)
from spectrumkd.scoring.token_metrics import (
    length_rows,
    predictive_entropy_rows,
    unigram_entropy_rows,
)

TABLE_FILE = "difficulties.jsonl"
MANIFEST_FILE = "metric.json"


@dataclass(frozen=True)
class DifficultyResult:
    """A finished difficulty table: its rows (data order), where it was written, and whether a
    finished table was reused instead of computed."""

    metric: str
    rows: list[dict[str, Any]]
    path: Path | None
    reused: bool = False

    @property
    def ids(self) -> list[str]:
        return [str(row["id"]) for row in self.rows]

    @property
    def difficulties(self) -> np.ndarray:
        return np.asarray([row["difficulty"] for row in self.rows], dtype=np.float64)

    @property
    def table(self) -> DifficultyTable | None:
        """The cross-entropy table (loss sum and token count) of a ``ce_*`` metric, else None."""
        if not self.metric.startswith("ce_"):
            return None
        return table_from_rows(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def compute_difficulty(
    metric: str,
    examples: Sequence[ScorableExample],
    *,
    texts: Sequence[TextExample] | None = None,
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    out_dir: str | Path | None = None,
    settings: ScoringSettings | None = None,
    pad_token_id: int | None = None,
    progress: bool = True,
    **options: Any,
) -> DifficultyResult:
    """Score ``examples`` (tokenised: id, input_ids, labels) with the difficulty ``metric``.

    ``texts``: the examples' prompt and reference texts (``spectrumkd.data.Example``; matched by
    id, extra ones ignored), needed by the metrics that generate. ``model`` / ``tokenizer``: the
    untrained student and its tokenizer, for the metrics that need them. ``settings``: batching
    and precision of the model's passes. ``options``: the metric's own (see
    ``METRICS[metric].options``). With ``out_dir``, the table and its manifest are written there
    and reused or resumed by a rerun of the same metric, options, model and data.
    """
    spec = get_metric(metric)
    resolved = resolve_options(spec, options)
    if not examples:
        raise ValueError("no examples to score; check the data source and the length limit")
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"example id {duplicate!r} appears twice; ids must be unique")
    if spec.needs_model and model is None:
        raise ValueError(f"metric {metric!r} needs the student model; pass model=")
    if (spec.needs_tokenizer or spec.needs_texts) and tokenizer is None:
        raise ValueError(f"metric {metric!r} needs the student's tokenizer; pass tokenizer=")
    aligned = align_texts(examples, texts) if spec.needs_texts else None
    if spec.needs_texts and aligned is None:
        raise ValueError(
            f"metric {metric!r} needs the prompt and reference texts; pass texts= (the "
            "examples of DataConfig.load_texts)"
        )
    settings = settings or ScoringSettings()
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    settings = settings.resolved(device)
    if pad_token_id is None:
        pad = getattr(tokenizer, "pad_token_id", None)
        pad_token_id = int(pad) if pad is not None else 0
    manifest = run_manifest(spec, resolved, examples, aligned, model, tokenizer, settings)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        finished = check_folder(out, manifest, ids, metric.startswith("ce_"))
        if finished is not None:
            return DifficultyResult(metric, finished, out / TABLE_FILE, reused=True)
        write_json(out / MANIFEST_FILE, manifest)
    inputs = MetricInputs(
        examples=examples,
        texts=aligned,
        model=model,
        tokenizer=tokenizer,
        settings=settings,
        options=resolved,
        work_dir=out,
        progress=progress,
        pad_token_id=pad_token_id,
    )
    rows = checked_rows(metric, spec.scorer(inputs), ids)
    if out is not None:
        write_jsonl(out / TABLE_FILE, rows)
    return DifficultyResult(metric, rows, None if out is None else out / TABLE_FILE)


def align_texts(
    examples: Sequence[ScorableExample], texts: Sequence[TextExample] | None
) -> list[TextExample] | None:
    """``texts`` reordered to ``examples`` by id; a missing one is refused in one line."""
    if texts is None:
        return None
    by_id = {str(text.id): text for text in texts}
    missing = [example.id for example in examples if example.id not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} examples have no text (first: {missing[0]!r}); pass the texts the "
            "examples were tokenised from"
        )
    return [by_id[example.id] for example in examples]


def run_manifest(
    spec: MetricSpec,
    options: dict[str, Any],
    examples: Sequence[ScorableExample],
    texts: Sequence[TextExample] | None,
    model: Any,
    tokenizer: Any,
    settings: ScoringSettings,
) -> dict[str, Any]:
    """What decides a table: the metric, its options, and for the metrics that use them the
    model (fingerprint), the scoring settings, the tokenizer's size and the texts."""
    manifest: dict[str, Any] = {
        "metric": spec.name,
        "options": options,
        "data": data_fingerprint(examples),
        "num_examples": len(examples),
    }
    if spec.needs_model:
        manifest["model"] = model_fingerprint(model)
        manifest["settings"] = settings.manifest()
    if spec.describe is not None:
        manifest["inputs"] = spec.describe(options)
    if tokenizer is not None:
        manifest["tokenizer_size"] = len(tokenizer)
    if texts is not None:
        digest = hashlib.sha256()
        for text in texts:
            digest.update(json.dumps([text.id, text.prompt, text.response]).encode())
        manifest["texts"] = digest.hexdigest()[:16]
    return json.loads(json.dumps(manifest, sort_keys=True))


def check_folder(
    out: Path, manifest: dict[str, Any], ids: list[str], cross_entropy: bool = False
) -> list[dict] | None:
    """The finished rows to reuse, None to compute (or resume), or a one-line refusal when the
    folder holds another run's work. A cross-entropy metric may resume a folder of the plain
    scorer (``spectrumkd score`` before metrics had names): its shard manifest decides."""
    manifest_path = out / MANIFEST_FILE
    if not manifest_path.exists():
        if cross_entropy and (out / "shards" / "manifest.json").exists():
            return None
        if (out / TABLE_FILE).exists() or (out / "shards").exists():
            raise ValueError(
                f"{out} holds difficulties without a {MANIFEST_FILE}, so they cannot be matched "
                "to this run; pass another output folder or delete that one"
            )
        return None
    try:
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise ValueError(
            f"{manifest_path} is unreadable ({str(error).splitlines()[0]}); delete {out} to "
            "score from scratch"
        ) from None
    if previous != manifest and not any(p.name != MANIFEST_FILE for p in out.iterdir()):
        return None  # the earlier run stopped before any work (a refused option): start afresh
    if previous != manifest:
        keys = sorted(set(previous) | set(manifest))
        changed = ", ".join(k for k in keys if previous.get(k) != manifest.get(k))
        raise ValueError(
            f"{out} holds difficulties of a different run ({changed} changed); pass another "
            "output folder or delete that one to start over"
        )
    table = out / TABLE_FILE
    if not table.exists():
        return None
    try:
        rows = list(read_jsonl(table))
        return checked_rows(manifest["metric"], rows, ids)
    except ValueError:  # damaged after it was written: recompute (shards make it cheap)
        return None


def checked_rows(metric: str, rows: list[dict], ids: list[str]) -> list[dict]:
    if len(rows) != len(ids) or [str(row.get("id")) for row in rows] != ids:
        raise ValueError(f"metric {metric!r} returned rows that do not match the examples")
    for row in rows:
        value = row.get("difficulty")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metric {metric!r}: example {row['id']!r} has no number difficulty")
        if not math.isfinite(value):
            raise ValueError(
                f"metric {metric!r}: example {row['id']!r} has difficulty {value}; the model's "
                "weights or dtype overflow (try dtype float32)"
            )
    return rows


# ------------------------------------------------------------------------------ built-in metrics


def ce_rows(reduction: str):
    def rows(inputs: MetricInputs) -> list[dict]:
        table = score_examples(
            inputs.model,
            inputs.examples,
            pad_token_id=inputs.pad_token_id,
            settings=inputs.settings,
            out_dir=inputs.work_dir,
            progress=inputs.progress,
        )
        return table.rows(reduction)  # type: ignore[arg-type]

    return rows


def reflection_rrf_rows(inputs: MetricInputs) -> list[dict]:
    """Spec section 1: the CE rank (low mean CE first) and the ROUGE rank (high F1 first) fused
    with constant ``rrf_constant``; each part is a finished table in its own sub-folder
    (``ce/``, ``reflection/``), reused by a rerun."""
    options = dict(inputs.options)
    constant = int(options.pop("rrf_constant"))
    if constant < 0:
        raise ValueError(f"option rrf_constant={constant} must be >= 0")
    work = inputs.work_dir
    common = {
        "model": inputs.model,
        "tokenizer": inputs.tokenizer,
        "settings": inputs.settings,
        "pad_token_id": inputs.pad_token_id,
        "progress": inputs.progress,
    }
    ce = compute_difficulty(
        "ce_mean", inputs.examples, out_dir=None if work is None else work / "ce", **common
    )
    rouge = compute_difficulty(
        "reflection_rouge",
        inputs.examples,
        texts=inputs.texts,
        out_dir=None if work is None else work / "reflection",
        **common,
        **options,
    )
    positions, scores, (rouge_ranks, ce_ranks) = fused_positions(
        [rouge.difficulties, ce.difficulties], constant
    )
    return [
        {
            "id": example.id,
            "difficulty": int(positions[i]),
            "rrf_score": float(scores[i]),
            "rouge_rank": int(rouge_ranks[i]),
            "ce_rank": int(ce_ranks[i]),
            "rouge_f1": rouge.rows[i]["rouge_f1"],
            "ce_mean": ce.rows[i]["loss_mean"],
        }
        for i, example in enumerate(inputs.examples)
    ]


def table_paths(options: Any) -> list[Path]:
    paths = [Path(p.strip()) for p in str(options.get("tables", "")).split(",") if p.strip()]
    if len(paths) < 2:
        raise ValueError(
            "metric 'rrf' needs the option tables=<two or more finished difficulties.jsonl, "
            "comma-separated>"
        )
    return paths


def describe_tables(options: Any) -> dict[str, Any]:
    """The fused tables by content, so a rerun after one of them changed is not reused."""
    return {
        "tables_sha256": [
            hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None
            for p in table_paths(options)
        ]
    }


def rrf_rows(inputs: MetricInputs) -> list[dict]:
    """Reciprocal rank fusion of finished tables of any metrics (each lower = easier), e.g.
    ``code_execution`` with ``ce_mean`` (spec section 7); the examples' ids must all be there."""
    paths = table_paths(inputs.options)
    names = [f"table{i}" for i in range(len(paths))]
    tables = [read_difficulties(path) for path in paths]
    ids = [example.id for example in inputs.examples]
    for path, (table_ids, _) in zip(paths, tables, strict=True):
        if set(table_ids) != set(ids):
            raise ValueError(
                f"{path} does not hold exactly the ids of these examples; fuse tables scored "
                "on the same data"
            )
    # The examples' order breaks ties (fuse keeps its first table's order): align that one.
    first = dict(zip(*tables[0], strict=True))
    tables[0] = (ids, np.asarray([first[i] for i in ids]))
    fused = {row["id"]: row for row in fuse(tables, names, int(inputs.options["rrf_constant"]))}
    return [fused[example_id] for example_id in ids]


BUILT_IN = (
    MetricSpec(
        "ce_mean",
        ce_rows("mean"),
        "the student's mean response cross-entropy (the SpectrumKD default)",
        needs_model=True,
    ),
    MetricSpec(
        "ce_sum",
        ce_rows("sum"),
        "the student's summed response cross-entropy, -log q(y|x)",
        needs_model=True,
    ),
    MetricSpec(
        "length",
        length_rows,
        "response length in student tokens (include_prompt: the whole sequence)",
        options={"include_prompt": False},
    ),
    MetricSpec(
        "unigram_entropy",
        unigram_entropy_rows,
        "model-free mean surprise of the response under the add-one unigram of all responses",
        options={"vocab_size": 0},  # 0: the tokenizer's size
    ),
    MetricSpec(
        "predictive_entropy",
        predictive_entropy_rows,
        "the student's mean predictive entropy over response positions",
        needs_model=True,
    ),
    MetricSpec(
        "reflection_rouge",
        reflection_rouge_rows,
        "1 - ROUGE-L F1 of the student's near-greedy answer against the reference",
        needs_model=True,
        needs_texts=True,
        options=REFLECTION_OPTIONS,
    ),
    MetricSpec(
        "reflection_rrf",
        reflection_rrf_rows,
        "reciprocal rank fusion of reflection ROUGE-L and CE ranks (POCL, SRD)",
        needs_model=True,
        needs_texts=True,
        options={**REFLECTION_OPTIONS, "rrf_constant": RRF_CONSTANT},
    ),
    MetricSpec(
        "rrf",
        rrf_rows,
        "reciprocal rank fusion of finished difficulty tables (option tables=a.jsonl,b.jsonl)",
        options={"tables": "", "rrf_constant": RRF_CONSTANT},
        describe=describe_tables,
    ),
)
for _spec in BUILT_IN:
    register_metric(_spec)
