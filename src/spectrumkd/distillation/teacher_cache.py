"""Offline teacher cache: the teacher's top-k logits, computed once, read back as a teacher signal.

:func:`build_teacher_cache` runs the teacher once over the examples a schedule will use and
keeps, at every position that predicts a response token (position t where ``labels[t + 1]`` is
not -100, the positions the scorer reads), the k largest RAW logits (temperature 1) and their
vocabulary indices, the full log-partition ``logsumexp`` of that position, and the TAIL's
log-partition ``log sum_{v outside the top k} exp(beta z_v)`` on a grid of inverse temperatures
beta = 2/8 .. 16/8 (tau from 0.5 to 4; 60 bytes a position). The tail is what the objectives
compare the student's leftover mass with (one tail bucket, see
:func:`spectrumkd.distillation.objectives.tail_buckets`): without it a truncated teacher is a
teacher with zeros outside its top k, and reverse KL from it is not a divergence. At tau = 1, 2,
4/3, 0.8, ... (beta on the grid) the tail is exact; between grid points it is the cubic through
the four nearest (the log-partition is smooth in beta; tested to 1e-3 nats against the exact
value). One cache serves every temperature a curriculum asks for within that range.

The cache lives in ``cache_root / f"{teacher fingerprint}-{data fingerprint}-k{k}"``: every run
on the same teacher and data (other seeds, objectives, strategies) finds it. The teacher's forward
runs in the settings' ``precision`` (auto: bf16 autocast where the device has fast bf16); top-k,
log-partition and tail are float32 whatever it is. A cache of another precision than float32
lives in a folder of its own (``...-k{k}-bf16``), so caches of different precisions never mix. Like the scorer it
batches by length, runs under ``inference_mode``, writes one safetensors shard per group of
batches atomically, reuses finished shards after a kill, and writes ``index.json`` (example id ->
shard, row offset, number of positions) last: a folder with an index is a finished cache.

:class:`CachedTeacher` is the :class:`~spectrumkd.distillation.signals.TeacherSignalSource` that
reads it back: ``-inf`` everywhere except the cached top-k, plus the tail's log-partition at the
step's temperature (:meth:`CachedTeacher.tail_logsumexp`), which the trainer hands to the
objectives as the teacher's leftover mass.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

from spectrumkd.batching import (
    IGNORE_INDEX,
    collate,
    length_bucketed_batches,
    logits_at,
    predicting_positions,
)
from spectrumkd.distillation.tail import (
    TAIL_GRID,
    TAIL_GRID_STEP,
    interpolate_tail,
    tail_log_partitions,
)
from spectrumkd.host_memory import release_freed_memory
from spectrumkd.io import atomic_write_bytes, write_json
from spectrumkd.models.precision import autocast, resolve_precision
from spectrumkd.scoring.scorer import (
    ScorableExample,
    ScoringSettings,
    check_fits_model,
    data_fingerprint,
    model_fingerprint,
    process_group,
)

logger = logging.getLogger(__name__)

FORMAT = 2  # 2: with the tail's log-partition (format 1 had none; its reverse KL was wrong)
INDEX = "index.json"
MANIFEST = "manifest.json"
TOPK_SLICE = 1024  # positions per float32 top-k call: 1,024 x 152k vocabulary is 620 MB


class MissingFromCacheError(KeyError):
    """A batch asks for an example the cache was not built for (one-line message)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def teacher_cache_dir(
    teacher: torch.nn.Module,
    examples: Sequence[ScorableExample],
    cache_root: str | Path,
    k: int,
    *,
    precision: str = "auto",
    vocab_size: int | None = None,
) -> Path:
    """Where :func:`build_teacher_cache` keeps the cache of ``teacher`` on ``examples`` built in
    ``precision`` (resolved for the teacher's device, as the build resolves it) over the first
    ``vocab_size`` rows of its head (all by default)."""
    device = next(teacher.parameters()).device
    vocab = None if vocab_size is None or int(vocab_size) == _vocab_size(teacher) else vocab_size
    return Path(cache_root) / _folder_name(
        model_fingerprint(teacher),
        data_fingerprint(examples),
        k,
        vocab,
        precision=resolve_precision(precision, device),
    )


def _folder_name(
    model: str, data: str, k: int, vocab: int | None = None, precision: str = "float32"
) -> str:
    # float32 caches keep the name they had before mixed precision existed.
    return (
        f"{model}-{data}-k{k}"
        + (f"-v{vocab}" if vocab is not None else "")
        + (f"-{precision}" if precision != "float32" else "")
    )


def _index_format(path: Path) -> object:
    try:
        return json.loads(path.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def build_teacher_cache(
    teacher: torch.nn.Module,
    examples: Sequence[ScorableExample],
    cache_root: str | Path,
    *,
    k: int = 64,
    settings: ScoringSettings | None = None,
    pad_token_id: int = 0,
    progress: bool = True,
    vocab_size: int | None = None,
) -> Path:
    """Cache the teacher's top-k raw logits at every response-predicting position; the folder.

    Pass only the examples a schedule will use. A finished cache for the same teacher, data, k
    and precision (``settings.precision``, default auto) is returned as is; a killed build resumes from its finished shards. Under torch.distributed
    every process must call this: each computes every world-th shard and rank 0 writes the index.
    ``vocab_size``: the vocabulary shared with the student when the teacher's head is padded
    beyond it (``VocabAlignment.vocab_size``); the rows past it are left out of the top k, the
    tail and the log-partition, as the live teacher's are trimmed.
    """
    if not examples:
        raise ValueError("no examples to cache; check the data source and the length limit")
    teacher_vocab = _vocab_size(teacher)
    vocab = teacher_vocab if vocab_size is None else int(vocab_size)
    if not 1 <= vocab <= teacher_vocab:
        raise ValueError(
            f"vocab_size={vocab_size} must be between 1 and the teacher's vocabulary size "
            f"({teacher_vocab})"
        )
    if not 1 <= k <= vocab:
        raise ValueError(f"k={k} must be between 1 and the teacher's vocabulary size ({vocab})")
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"example id {duplicate!r} occurs twice; the cache is keyed by id")
    check_fits_model(teacher, examples)
    device = next(teacher.parameters()).device
    settings = (settings or ScoringSettings()).resolved(device)
    fingerprints = {"model": model_fingerprint(teacher), "data": data_fingerprint(examples)}
    folder = Path(cache_root) / _folder_name(
        fingerprints["model"],
        fingerprints["data"],
        k,
        None if vocab == teacher_vocab else vocab,
        settings.precision,
    )
    if (folder / INDEX).exists():
        if _index_format(folder / INDEX) == FORMAT:
            return folder
        logger.warning("%s: a teacher cache of an older format; rebuilding it", folder)
        (folder / INDEX).unlink(missing_ok=True)  # every process gets here; the first deletes

    batches = length_bucketed_batches([len(e.input_ids) for e in examples], settings)
    shards = [
        batches[i : i + settings.shard_batches]
        for i in range(0, len(batches), settings.shard_batches)
    ]
    counts = [_num_predicting(example) for example in examples]
    rank, world = process_group()
    manifest = {
        "format": FORMAT,
        "k": k,
        "vocab_size": vocab,
        "tail_inverse_temperatures": [n / TAIL_GRID_STEP for n in TAIL_GRID],
        "settings": settings.manifest(),  # holds the precision unless float32
        "num_examples": len(examples),
        "num_shards": len(shards),
    }
    if rank == 0:
        _prepare(folder, manifest)
    if world > 1:
        torch.distributed.barrier()  # a stale partial build is cleared before anyone writes

    mine = [index for index in range(len(shards)) if index % world == rank]
    was_training = teacher.training
    teacher.eval()
    bar = tqdm(
        total=sum(counts[i] for s in mine for batch in shards[s] for i in batch),
        unit="tok",
        unit_scale=True,
        desc=f"teacher top-{k}",
        disable=not progress or rank != 0,
    )
    try:
        for shard_index in mine:
            path = folder / _shard_name(shard_index)
            if not path.exists():
                parts = [
                    _batch_topk(
                        teacher,
                        [examples[i] for i in batch],
                        k,
                        pad_token_id,
                        device,
                        vocab,
                        settings.precision,
                    )
                    for batch in shards[shard_index]
                ]
                tensors = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
                atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"k": str(k)}))
            bar.update(sum(counts[i] for batch in shards[shard_index] for i in batch))
    finally:
        bar.close()
        teacher.train(was_training)
    if world > 1:
        torch.distributed.barrier()  # every shard exists before the index says so
    if rank == 0:
        entries: dict[str, list[int]] = {}
        for shard_index, shard in enumerate(shards):
            offset = 0
            for i in (i for batch in shard for i in batch):
                entries[examples[i].id] = [shard_index, offset, counts[i]]
                offset += counts[i]
        index = {
            **manifest,
            **fingerprints,
            "positions": sum(counts),
            "shards": [_shard_name(i) for i in range(len(shards))],
            "examples": entries,
        }
        write_json(folder / INDEX, index)  # last: its presence marks a finished cache
    if world > 1:
        torch.distributed.barrier()
    release_freed_memory()  # the build's buffers, before the training that usually follows
    return folder


def _vocab_size(model: torch.nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "out_features", None):
        return int(head.out_features)
    return int(model.config.vocab_size)


def _num_predicting(example: ScorableExample) -> int:
    return sum(1 for label in list(example.labels)[1:] if label != IGNORE_INDEX)


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _prepare(folder: Path, manifest: dict) -> None:
    """Keep a partial build's shards only when it was planned with the same batches."""
    path = folder / MANIFEST
    if path.exists() and json.loads(path.read_text()) != manifest:
        logger.warning("%s: a partial cache with other settings; starting it over", folder)
        for stale in folder.glob("shard-*.safetensors"):
            stale.unlink()
        path.unlink()
    if not path.exists():
        write_json(path, manifest)


def _batch_topk(
    teacher: torch.nn.Module,
    batch: list,
    k: int,
    pad_token_id: int,
    device: torch.device,
    vocab: int | None = None,
    precision: str = "float32",
) -> dict[str, torch.Tensor]:
    """Top-k raw logits (float32), their indices (int32), the log-partition and the tail's
    log-partitions on the grid at every response-predicting position of ``batch``, row by row
    and position by position (over the first ``vocab`` rows of the head). Only the teacher's
    forward runs in ``precision``."""
    inputs = {key: value.to(device) for key, value in collate(batch, pad_token_id).items()}
    predicts = predicting_positions(inputs["labels"])
    num = int(predicts.sum())
    with torch.inference_mode():
        with logits_at(teacher, predicts) as gathered, autocast(precision, device):
            logits = teacher(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).logits
        if gathered and logits.shape[:2] == (1, num):
            logits = logits[0]
        else:  # no output embedding to hook: take the full logits at the wanted positions
            logits = logits[predicts.to(logits.device)]
        if vocab is not None:
            logits = logits[..., :vocab]
        values, indices, lse, tails = [], [], [], []
        for start in range(0, num, TOPK_SLICE):
            part = logits[start : start + TOPK_SLICE].float()
            top = part.topk(k, dim=-1)  # sorted, largest first
            values.append(top.values.cpu())
            indices.append(top.indices.to(torch.int32).cpu())
            lse.append(torch.logsumexp(part, dim=-1).cpu())
            tails.append(tail_log_partitions(part, top.indices))
    if num == 0:
        return {
            "values": torch.zeros(0, k),
            "indices": torch.zeros(0, k, dtype=torch.int32),
            "logsumexp": torch.zeros(0),
            "tail_logsumexp": torch.zeros(0, len(TAIL_GRID)),
        }
    result = {
        "values": torch.cat(values),
        "indices": torch.cat(indices),
        "logsumexp": torch.cat(lse),
        "tail_logsumexp": torch.cat(tails),
    }
    if not torch.isfinite(result["values"]).all() or not torch.isfinite(result["logsumexp"]).all():
        raise FloatingPointError(
            f"non-finite teacher logits in a batch starting with {batch[0].id!r}; the teacher's "
            "weights or dtype overflow (try dtype float32)"
        )
    return result


class CachedTeacher:
    """A :class:`TeacherSignalSource` reading a finished cache of :func:`build_teacher_cache`.

    ``vocab_size`` is the width of the returned logits (the student's, or the shared vocabulary
    of a :class:`~spectrumkd.models.VocabAlignment`); cached indices past it are dropped, as
    ``VocabAlignment.trim`` drops a padded teacher's extra rows. Shards are read on demand and at
    most ``max_shards`` stay in memory (least recently used first out).
    """

    scores_new_sequences = False  # it knows only the cached examples' tokens (no on-policy KD)

    def __init__(
        self,
        cache_dir: str | Path,
        vocab_size: int,
        *,
        device: str | torch.device = "cpu",
        max_shards: int = 4,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        index_path = self.cache_dir / INDEX
        if not index_path.exists():
            raise FileNotFoundError(
                f"{self.cache_dir} is not a finished teacher cache (no {INDEX}); "
                "run build_teacher_cache for the schedule's ids"
            )
        index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(
                f"{index_path}: teacher cache format {index.get('format')!r}, this version reads "
                f"{FORMAT}; delete {self.cache_dir} or call build_teacher_cache to rebuild it"
            )
        self.index = index
        self.k = int(index["k"])
        self.teacher_vocab_size = int(index["vocab_size"])
        self.vocab_size = int(vocab_size)
        self.device = torch.device(device)
        self.max_shards = max(1, max_shards)
        self._entries: dict[str, list[int]] = index["examples"]
        self._shards: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()

    @property
    def ids(self) -> list[str]:
        return list(self._entries)

    @property
    def settings(self) -> ScoringSettings:
        """The batching and precision the cache was built with (so a live comparison can batch
        alike); a manifest without a precision is a float32 one."""
        return ScoringSettings(**{"precision": "float32", **self.index["settings"]})

    def _shard(self, number: int) -> dict[str, torch.Tensor]:
        if number in self._shards:
            self._shards.move_to_end(number)
        else:
            self._shards[number] = load_file(self.cache_dir / self.index["shards"][number])
            while len(self._shards) > self.max_shards:
                self._shards.popitem(last=False)
        return self._shards[number]

    def entry(
        self, example_id: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values [n, k] float32, indices [n, k] int64, logsumexp [n], tail [n, G]) of one
        example; tail holds the tail's log-partition on the grid of inverse temperatures."""
        if example_id not in self._entries:
            raise MissingFromCacheError(
                f"example {example_id!r} is not in the teacher cache {self.cache_dir}; "
                "rebuild the cache for the schedule's ids"
            )
        number, offset, count = self._entries[example_id]
        shard = self._shard(number)
        rows = slice(offset, offset + count)
        return (
            shard["values"][rows],
            shard["indices"][rows].long(),
            shard["logsumexp"][rows],
            shard["tail_logsumexp"][rows],
        )

    def logits(self, batch: dict) -> torch.Tensor:
        """``[B, T, vocab_size]`` float32: ``-inf`` except each cached position's top-k logits."""
        if "ids" not in batch:
            raise KeyError("a CachedTeacher needs the batch's example ids under batch['ids']")
        labels = batch["labels"].cpu()
        ids = list(batch["ids"])
        if len(ids) != labels.shape[0]:
            raise ValueError(f"batch has {labels.shape[0]} rows but {len(ids)} ids")
        predicts = predicting_positions(labels)
        counts = predicts.sum(-1).tolist()
        values, indices = [], []
        for example_id, count in zip(ids, counts, strict=True):
            row_values, row_indices, _, _ = self.entry(str(example_id))
            if count != row_values.shape[0]:
                raise ValueError(
                    f"example {example_id!r} has {count} response-predicting positions "
                    f"in the batch but {row_values.shape[0]} in the cache; rebuild the cache from "
                    "this tokenisation"
                )
            values.append(row_values)
            indices.append(row_indices)
        # One index_put over the whole batch, on the target device, instead of a [n, V] scatter
        # per row on the CPU and a copy of the whole [B, T, V] tensor: the same entries.
        out = torch.full(
            (*labels.shape, self.vocab_size), -math.inf, dtype=torch.float32, device=self.device
        )
        positions = predicts.reshape(-1).nonzero()[:, 0]  # row by row, as the entries are
        index = torch.cat(indices).to(self.device)
        value = torch.cat(values).to(self.device, torch.float32)
        flat = (positions.to(self.device)[:, None] * self.vocab_size + index).reshape(-1)
        value = value.reshape(-1)
        if self.teacher_vocab_size > self.vocab_size:  # a padded teacher's rows past ours
            keep = (index < self.vocab_size).reshape(-1)
            flat, value = flat[keep], value[keep]
        out.view(-1)[flat] = value
        return out

    def top_k(
        self, batch: dict, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values [n, k] float32, indices [n, k] int64, tail [n] float32) at the batch's n
        response-predicting positions in row-major order, on ``device``: the input of
        :func:`~spectrumkd.distillation.objectives.topk_kd_loss`, which gives the loss of
        :meth:`logits` and :meth:`tail_logsumexp` without a dense [B, T, V] tensor."""
        labels = batch["labels"].cpu()
        counts = predicting_positions(labels).sum(-1).tolist()
        entries = [self.entry(str(example_id)) for example_id in batch["ids"]]
        for example_id, count, entry in zip(batch["ids"], counts, entries, strict=True):
            if count != entry[0].shape[0]:
                raise ValueError(
                    f"example {example_id!r} has {count} response-predicting positions in the "
                    f"batch but {entry[0].shape[0]} in the cache; rebuild the cache from this "
                    "tokenisation"
                )
        indices = torch.cat([entry[1] for entry in entries])
        if indices.numel() and int(indices.max()) >= self.vocab_size:
            raise ValueError(
                f"the cache holds ids past the vocabulary of {self.vocab_size}; use logits(), "
                "which drops them, or build the cache with vocab_size"
            )
        values = torch.cat([entry[0] for entry in entries]).float()
        tail = interpolate_tail(torch.cat([entry[3] for entry in entries]), temperature)
        return values.to(self.device), indices.to(self.device), tail.float().to(self.device)

    def tail_logsumexp(self, batch: dict, temperature: float) -> torch.Tensor:
        """``[B, T]`` float32: at each cached position, log sum_{v outside the top k}
        exp(z_v / tau), the teacher's leftover mass that :meth:`logits` leaves out (-inf
        elsewhere). The objectives compare it with the student's leftover mass."""
        labels = batch["labels"].cpu()
        out = torch.full(labels.shape, -math.inf, dtype=torch.float32)
        predicts = predicting_positions(labels)
        for row, example_id in enumerate(batch["ids"]):
            tail = self.entry(str(example_id))[3]
            out[row, predicts[row]] = interpolate_tail(tail, temperature)
        return out.to(self.device)


def approximation_error(
    teacher: torch.nn.Module,
    cache: CachedTeacher,
    examples: Sequence[ScorableExample],
    *,
    temperature: float = 1.0,
    pad_token_id: int = 0,
) -> float:
    """Mean KL per response token between the live teacher's distribution p and the cache's q.

    Both at temperature ``temperature``; q = softmax(top-k / tau) renormalised over the top k.
    The direction is KL(q || p), the only finite one (p puts mass where q has none), and it equals
    -log(top-k mass of p) per token: the share of the teacher's probability the cache loses.
    Batched as the cache was built, so at k = vocabulary size the error is 0 to rounding.
    """
    if not temperature > 0 or math.isinf(temperature):
        raise ValueError(f"temperature={temperature!r} must be a positive finite number")
    device = next(teacher.parameters()).device
    batches = length_bucketed_batches([len(e.input_ids) for e in examples], cache.settings)
    total, tokens = 0.0, 0
    was_training = teacher.training
    teacher.eval()
    try:
        for batch_indices in batches:
            batch = [examples[i] for i in batch_indices]
            inputs = collate(batch, pad_token_id)
            predicts = predicting_positions(inputs["labels"])
            num = int(predicts.sum())
            if num == 0:
                continue
            with torch.inference_mode(), logits_at(teacher, predicts) as gathered:
                live = teacher(
                    input_ids=inputs["input_ids"].to(device),
                    attention_mask=inputs["attention_mask"].to(device),
                ).logits
            if gathered and live.shape[:2] == (1, num):
                live = live[0]
            else:
                live = live[predicts.to(live.device)]
            live = live[..., : cache.vocab_size].cpu()
            cached = cache.logits({**inputs, "ids": [e.id for e in batch]})[predicts].cpu()
            for start in range(0, num, TOPK_SLICE):
                log_p = torch.log_softmax(
                    live[start : start + TOPK_SLICE].float() / temperature, -1
                )
                log_q = torch.log_softmax(cached[start : start + TOPK_SLICE] / temperature, -1)
                keep = torch.isfinite(log_q)
                terms = torch.where(keep, log_q.exp() * (log_q - log_p), 0.0)
                total += float(terms.sum(-1).double().sum())
            tokens += num
    finally:
        teacher.train(was_training)
    return total / max(tokens, 1)


__all__ = [
    "CachedTeacher",
    "MissingFromCacheError",
    "approximation_error",
    "build_teacher_cache",
    "teacher_cache_dir",
]
