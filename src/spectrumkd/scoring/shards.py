"""Resumable work in shards, for the metrics whose pass is expensive (a forward over the data,
generation, running programs): each shard's rows are written atomically once it finishes, and a
rerun reads finished shards instead of recomputing them.

The shard plan must be a pure function of the data and the settings (which
:func:`spectrumkd.scoring.metrics.compute_difficulty` guards with the run's manifest), so a
killed run that resumes computes every example in the same shard, and batch, as an
uninterrupted run would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from spectrumkd.io import read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

# A shard's rows: one dict per example of the shard, each with "index" (position in the data)
# and "id"; the compute function adds its own fields.
ShardRows = list[dict[str, Any]]


def run_in_shards(
    shards: Sequence[Sequence[Sequence[int]]],
    compute: Callable[[list[list[int]]], ShardRows],
    ids: Sequence[str],
    *,
    shard_dir: Path | None,
    required: Sequence[str] = (),
    progress: bool = True,
    desc: str = "scoring",
) -> list[dict[str, Any]]:
    """The rows of every example, in data order: ``compute(batches)`` for each shard (a list of
    batches of example indices) that has no finished file under ``shard_dir``. A shard file that does not
    hold exactly its examples' rows with the ``required`` fields is recomputed, with a warning
    (files are written atomically, so such a file was damaged afterwards)."""
    rows: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=len(ids), unit="ex", desc=desc, disable=not progress)
    try:
        for number, batches in enumerate(shards):
            shard = [i for batch in batches for i in batch]
            path = None if shard_dir is None else shard_dir / f"shard-{number:05d}.jsonl"
            shard_rows = None
            if path is not None and path.exists():
                shard_rows, problem = read_shard(path, shard, ids, required)
                if problem is not None:
                    logger.warning("%s; recomputing that shard", problem)
            if shard_rows is None:
                shard_rows = compute([list(batch) for batch in batches])
                if path is not None:
                    write_jsonl(path, shard_rows)
            for row in shard_rows:
                rows[row["index"]] = row
            bar.update(len(shard))
    finally:
        bar.close()
    missing = [i for i in range(len(ids)) if i not in rows]
    if missing:
        raise ValueError(f"the shard plan leaves example {ids[missing[0]]!r} out; this is a bug")
    return [rows[i] for i in range(len(ids))]


def read_shard(
    path: Path, shard: list[int], ids: Sequence[str], required: Sequence[str] = ()
) -> tuple[ShardRows | None, str | None]:
    """The rows of a finished shard, or (None, what is wrong)."""
    try:
        rows = list(read_jsonl(path))
    except ValueError as error:  # bad JSON or UTF-8, named by read_jsonl
        return None, str(error).split("; ")[0]
    if len(rows) != len(shard):
        return None, f"{path} holds {len(rows)} rows where its shard holds {len(shard)}"
    indices = [row.get("index") if isinstance(row, dict) else None for row in rows]
    if not all(type(i) is int for i in indices) or sorted(indices) != sorted(shard):
        return None, f"{path} holds rows of other examples than its shard's"
    for row in rows:
        if row.get("id") != ids[row["index"]] or any(key not in row for key in required):
            return None, f"{path}: the row of example {ids[row['index']]!r} does not match"
    return rows, None


def shard_plan(batches: Sequence[Sequence[int]], batches_per_shard: int) -> list[list[list[int]]]:
    """Consecutive batches grouped into shards of ``batches_per_shard`` (the work a kill can
    lose)."""
    if batches_per_shard < 1:
        raise ValueError(f"batches per shard must be >= 1, got {batches_per_shard}")
    return [
        [list(batch) for batch in batches[start : start + batches_per_shard]]
        for start in range(0, len(batches), batches_per_shard)
    ]
