"""One inference pass of the initial student over the training set (spec section 2.1).

Examples are batched by length (longest first, so a batch that does not fit in memory fails in
the first seconds, not after an hour), scored under ``torch.inference_mode``, and written in
shards as they finish. The batch plan depends only on the data and the batching settings, so a
killed run that resumes computes every example in the same batch as an uninterrupted run would,
and its final table is byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spectrumkd.batching import IGNORE_INDEX, collate, length_bucketed_batches, logits_at
from spectrumkd.io import read_jsonl, write_json, write_jsonl
from spectrumkd.models.decode_workers import auto_workers
from spectrumkd.models.precision import autocast, normalize_precision, resolve_precision
from spectrumkd.scoring.difficulty import DifficultyTable, table_from_rows
from spectrumkd.scoring.workers import score_in_workers

CE_SLICE = 4096  # positions per cross-entropy call

logger = logging.getLogger(__name__)


class ScorableExample(Protocol):
    id: str
    input_ids: Sequence[int]
    labels: Sequence[int]


@dataclass(frozen=True)
class ScoringSettings:
    # Padded tokens per batch. None: 1,024 on the CPU, where small batches measured fastest
    # (benchmarks/README.md), 16,384 on a GPU, where larger batches fill the device.
    max_tokens_per_batch: int | None = None
    max_batch_size: int = 64
    shard_batches: int = 8  # batches per shard file: the work a kill can lose
    # Compute precision of the forward (spectrumkd.models.precision): auto is bf16 autocast
    # where the device has fast bf16 (measured 2x+ the float32 throughput on an AMX CPU, with
    # the spectrum's Spearman to float32 above 0.999), float32 elsewhere. The cross-entropy
    # itself is always float32.
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_tokens_per_batch", "max_batch_size", "shard_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        normalize_precision(self.precision)  # the device check waits for resolved()

    def resolved(self, device: torch.device) -> ScoringSettings:
        """The settings with the device's defaults filled in: the token budget and the concrete
        precision (float32, bf16 or fp16)."""
        budget = self.max_tokens_per_batch
        if budget is None:
            budget = 16384 if device.type == "cuda" else 1024
        return replace(
            self,
            max_tokens_per_batch=budget,
            precision=resolve_precision(self.precision, device),
        )

    def manifest(self) -> dict:
        """The settings as a shard manifest records them. A float32 run leaves the precision out,
        so its manifests (and finished shards) are those of the versions before mixed precision;
        any other precision is recorded, so its scores are never reused as float32 ones."""
        values = asdict(self)
        if values["precision"] == "float32":
            del values["precision"]
        return values


def response_token_losses(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy (float32) over positions whose label is not -100, and their
    count, per row. Row by row, so a batch never holds a second float32 copy of all its logits."""
    sums, counts = [], []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        targets = row_labels[1:]
        losses = F.cross_entropy(
            row_logits[:-1].float(), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        sums.append(losses.double().sum())
        counts.append((targets != IGNORE_INDEX).sum())
    return torch.stack(sums), torch.stack(counts)


def _batch_losses(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], precision: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = inputs["labels"]
    # Position t predicts token t+1: it is needed when label t+1 is a response token.
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    device = labels.device
    # Only the forward is autocast: the cross-entropy below reads .float() logits outside it.
    with logits_at(model, predicts) as gathered, autocast(precision, device):
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).logits
    if not gathered or logits.shape[:2] != (1, int(predicts.sum())):
        return response_token_losses(logits, labels)
    targets = labels[:, 1:][predicts[:, :-1]].to(logits.device)
    # Cross-entropy in slices of positions: a float32 copy of all K x V logits at once would
    # cost gigabytes at a GPU token budget and a 152k vocabulary.
    losses = torch.cat(
        [
            F.cross_entropy(
                logits[0, i : i + CE_SLICE].float(), targets[i : i + CE_SLICE], reduction="none"
            )
            for i in range(0, targets.numel(), CE_SLICE)
        ]
    ).double()
    rows = predicts.nonzero()[:, 0].to(losses.device)
    sums = torch.zeros(labels.shape[0], dtype=torch.float64, device=losses.device).index_add_(
        0, rows, losses
    )
    return sums, predicts.sum(dim=1)


# Config fields that say where a model was loaded from or by which library version, not what
# it computes: a student scored in memory and reloaded from disk must match its own shards.
VOLATILE_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version", "_commit_hash"})


def check_fits_model(model: torch.nn.Module, examples: Sequence[ScorableExample]) -> None:
    """Refuse examples longer than the model's position limit, naming the flag that fixes it."""
    longest = max(len(e.input_ids) for e in examples)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and longest > limit:
        raise ValueError(
            f"the longest example has {longest} tokens but the model handles {limit} positions; "
            f"lower --max-length to {limit} or less"
        )


def model_fingerprint(model: torch.nn.Module) -> str:
    """Cheap identity of what a model computes: its config (less where it came from) and the
    float64 sum of every tensor, hashed."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        fields = {k: v for k, v in config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in model.state_dict().items():
            digest.update(name.encode())
            digest.update(np.float64(param.detach().sum(dtype=torch.float64).item()).tobytes())
    return digest.hexdigest()[:16]


def data_fingerprint(examples: Sequence[ScorableExample]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(
            json.dumps([example.id, list(example.input_ids), list(example.labels)]).encode()
        )
    return digest.hexdigest()[:16]


def score_examples(
    model: torch.nn.Module,
    examples: Sequence[ScorableExample],
    *,
    pad_token_id: int = 0,
    settings: ScoringSettings | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> DifficultyTable:
    """Per-example response cross-entropy of ``model`` (sum and token count; mean derived).

    With ``out_dir``, finished shards are written to ``out_dir/shards`` and reused by a rerun
    with the same model, data and settings (the precision included), and the table goes to
    ``out_dir/difficulties.jsonl``. ``settings.precision`` (default auto) picks the forward's
    precision for the model's device. ``workers`` (with ``out_dir``, a model on the CPU;
    default 2 where torch has exactly 2 threads, else 1): forked one-thread processes, each
    scoring every workers-th shard (:mod:`spectrumkd.scoring.workers`); the same table.
    """
    device = next(model.parameters()).device
    settings = (settings or ScoringSettings()).resolved(device)
    if workers is not None and workers < 1:
        raise ValueError(f"workers={workers!r} must be >= 1")
    if not examples:
        raise ValueError("no examples to score; check the data source and the length limit")
    empty = [e.id for e in examples if not any(label != IGNORE_INDEX for label in e.labels[1:])]
    if empty:
        raise ValueError(
            f"{len(empty)} examples have no response tokens to score (first: {empty[0]!r}); drop them"
        )
    check_fits_model(model, examples)
    batches = length_bucketed_batches([len(e.input_ids) for e in examples], settings)
    shards = [
        batches[i : i + settings.shard_batches]
        for i in range(0, len(batches), settings.shard_batches)
    ]
    rank, world = process_group()
    shard_dir = _prepare_shard_dir(model, examples, settings, out_dir, len(shards), rank, world)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if workers is not None and workers > 1 and not on_cpu:
        raise ValueError(
            f"workers={workers} forks CPU processes, but the model is on {device}; use workers=1"
        )
    if shard_dir is None or world > 1 or not on_cpu:
        workers = 1
    workers = workers or auto_workers(device, len(shards))

    def tokens(numbers) -> int:
        return sum(len(examples[i].input_ids) for s in numbers for b in shards[s] for i in b)

    def score_share(share: int, count: int, advance) -> dict[int, dict]:
        """Every count-th shard from the share-th: scored, or read back when finished."""
        mine = range(share, len(shards), count)
        return _score_shards(
            model,
            examples,
            [shards[s] for s in mine],
            mine,
            shard_dir,
            settings,
            pad_token_id,
            advance,
        )

    was_training = model.training
    model.eval()
    try:
        mine = range(rank, len(shards), world)
        shown = progress and rank == 0
        with tqdm(
            total=tokens(mine), unit="tok", unit_scale=True, desc="scoring", disable=not shown
        ) as bar:
            if workers > 1:  # the shards fill in on disk, then all are read back below
                score_in_workers(
                    lambda share, advance: score_share(share, workers, advance), workers, bar.update
                )
                rows = score_share(0, 1, lambda n: None)
            else:
                rows = score_share(rank, world, bar.update)
    finally:
        model.train(was_training)
    if world > 1:
        gathered: list[dict[int, dict]] = [{} for _ in range(world)]
        torch.distributed.all_gather_object(gathered, rows)
        rows = {index: row for part in gathered for index, row in part.items()}
    table = table_from_rows([rows[i] for i in range(len(examples))])
    if out_dir is not None and rank == 0:
        table.write_jsonl(Path(out_dir) / "difficulties.jsonl")
    return table


def _score_shards(
    model, examples, shards, numbers, shard_dir, settings, pad_token_id, advance
) -> dict[int, dict]:
    """The rows of ``shards`` (numbered ``numbers``): read from a finished shard file, else
    scored and written to one; ``advance(tokens)`` as each batch is done."""
    device = next(model.parameters()).device
    rows: dict[int, dict] = {}
    for shard, number in zip(shards, numbers, strict=True):
        path = None if shard_dir is None else shard_dir / f"shard-{number:05d}.jsonl"
        shard_rows = None
        if path is not None and path.exists():
            shard_rows, problem = _read_shard(path, shard, examples)
            if problem is not None:
                logger.warning("%s; rescoring that shard", problem)
        if shard_rows is not None:
            advance(sum(len(examples[i].input_ids) for batch in shard for i in batch))
        else:
            shard_rows = []
            for batch in shard:
                shard_rows.extend(
                    _score_batch(model, examples, batch, pad_token_id, device, settings.precision)
                )
                advance(sum(len(examples[i].input_ids) for i in batch))
            if path is not None:
                write_jsonl(path, shard_rows)
        for row in shard_rows:
            rows[row["index"]] = row
    return rows


def process_group() -> tuple[int, int]:
    """(rank, world size) of a running torch.distributed job (accelerate, torchrun), else (0, 1).
    Every process builds the same batch plan, scores every world-th shard, and all processes
    receive the whole table, so a multi-GPU run gives the table of a one-process run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _score_batch(
    model, examples, batch: list[int], pad_token_id: int, device, precision: str = "float32"
) -> list[dict]:
    # Right padding: with an attention mask, causal models give real tokens the same logits.
    inputs = {
        k: v.to(device) for k, v in collate([examples[i] for i in batch], pad_token_id).items()
    }
    with torch.inference_mode():
        sums, counts = _batch_losses(model, inputs, precision)
    if not torch.isfinite(sums).all():
        bad = [
            examples[i].id for i, s in zip(batch, sums.tolist(), strict=True) if not np.isfinite(s)
        ]
        raise FloatingPointError(
            f"non-finite loss for {len(bad)} examples (first: {bad[0]!r}); the model's weights or dtype overflow "
            "(try dtype float32)"
        )
    return [
        {"index": i, "id": examples[i].id, "loss_sum": s, "tokens": c}
        for i, s, c in zip(batch, sums.tolist(), counts.tolist(), strict=True)
    ]


def _read_shard(
    path: Path, shard: list[list[int]], examples: Sequence[ScorableExample]
) -> tuple[list[dict] | None, str | None]:
    """The rows of a finished shard, or (None, what is wrong) when it is not exactly the rows
    its batches produce. Shards are written atomically, so a short, empty or garbled one was
    damaged afterwards (a full disk, a hand edit); rescoring it is deterministic, so the resume
    neither loses nor double-counts an example."""
    try:
        rows = list(read_jsonl(path))
    except ValueError as error:  # a line of bad JSON or bad UTF-8, named by read_jsonl
        return None, str(error).split("; ")[0]
    expected = [i for batch in shard for i in batch]
    if len(rows) != len(expected):
        return None, f"{path} holds {len(rows)} rows where its batches hold {len(expected)}"
    indices = [row.get("index") if isinstance(row, dict) else None for row in rows]
    if not all(type(i) is int for i in indices) or sorted(indices) != sorted(expected):
        return None, f"{path} holds rows of other examples than its batches'"
    for row in rows:
        example = examples[row["index"]]
        loss, tokens = row.get("loss_sum"), row.get("tokens")
        if (
            row.get("id") != example.id
            or isinstance(loss, bool)
            or not isinstance(loss, (int, float))
            or not math.isfinite(loss)
            or tokens != sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)
        ):
            return None, f"{path}: the row of example {example.id!r} does not match the data"
    return rows, None


def _prepare_shard_dir(
    model, examples, settings: ScoringSettings, out_dir, num_shards: int, rank: int, world: int
) -> Path | None:
    if out_dir is None:
        return None
    shard_dir = Path(out_dir) / "shards"
    manifest = {
        "model": model_fingerprint(model),
        "data": data_fingerprint(examples),
        "settings": settings.manifest(),
        "num_examples": len(examples),
        "num_shards": num_shards,
    }
    manifest_path = shard_dir / "manifest.json"
    if rank == 0 and not manifest_path.exists():
        write_json(manifest_path, manifest)
    if world > 1:
        torch.distributed.barrier()  # the manifest exists before any process compares it
    try:
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:  # JSON and UTF-8 errors are ValueErrors
        raise ValueError(
            f"{manifest_path} is unreadable ({str(error).splitlines()[0]}), so its shards cannot "
            f"be matched to this run; delete {shard_dir} to score from scratch"
        ) from None
    if previous != manifest:
        changed = ", ".join(k for k in manifest if previous.get(k) != manifest[k])
        raise ValueError(
            f"{shard_dir} holds scores of a different run ({changed} changed); "
            "pass another output folder or delete that one to start over"
        )
    return shard_dir


__all__ = [
    "ScoringSettings",
    "data_fingerprint",
    "model_fingerprint",
    "response_token_losses",
    "score_examples",
]


def example_token_losses(
    model: torch.nn.Module,
    examples: Sequence[ScorableExample],
    *,
    precision: str = "auto",
    pad_token_id: int = 0,
    max_batch_size: int = 16,
) -> list[tuple[float, int]]:
    """Per example, the model's summed cross-entropy over its response tokens and their number,
    in the examples' order: in memory, without the shards and manifests of
    :func:`score_examples`, for small sets measured again and again during a run (DDK's
    per-domain validation sets every K steps). Length-sorted batches, no gradients, the model's
    training mode restored."""
    if not examples:
        return []
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), max_batch_size):
                chosen = order[start : start + max_batch_size]
                batch = collate([examples[i] for i in chosen], pad_token_id)
                inputs = {key: value.to(device) for key, value in batch.items()}
                sums, counts = _batch_losses(model, inputs, precision)
                for i, total, count in zip(chosen, sums.tolist(), counts.tolist(), strict=True):
                    results[i] = (float(total), int(count))
    finally:
        model.train(was_training)
    return results
