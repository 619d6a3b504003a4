"""Decoding on several CPU cores: one process per share of the prompts, one torch thread each.

Why processes, not torch's threads: a decode step is hundreds of small operators, and torch's
intra-op threads meet at a barrier after each one. On the project's shared 2-core machine two
threads decoded 2-3x *slower* in wall time than one (benchmarks/README.md, "Generation"): every
barrier waits for a thread another job has descheduled. Processes never wait for each other.

Each worker is a fork of this process (the weights are shared copy-on-write until the decode
loop casts its copy to bf16), decodes its share with :func:`spectrumkd.models.generation.decode`
and sends the new token ids back through a pipe; this process decodes the first share itself.
Shares are dealt from the prompts sorted by length, so each gets as many long prompts as short.
Sampling draws from one generator per share, seeded from the run's seed and the share's index:
a run is reproducible for a given prompt list, batch size, precision and number of workers.
CPU only: a GPU decodes all rows in one batch better than processes would.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["auto_workers", "decode_in_workers", "shares"]


def auto_workers(device: Any, prompts: int) -> int:
    """Two one-thread workers on a CPU where torch has exactly two threads (this project's
    machine, where they were measured: benchmarks/README.md), one elsewhere: on a GPU, for a
    single item, and on a bigger CPU, where torch's own threads stay in use (two one-thread
    processes would leave its other cores idle; pass ``workers`` to choose)."""
    if torch.device(device).type != "cpu" or prompts < 2:
        return 1
    return 2 if torch.get_num_threads() == 2 else 1


def shares(lengths: Sequence[int], workers: int) -> list[list[int]]:
    """Prompt indices dealt round-robin from the longest down, one list per worker."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[k::workers] for k in range(workers) if order[k::workers]]


def decode_in_workers(
    decode_share: Callable[[list[Sequence[int]], int], list[list[int]]],
    prompts: Sequence[Sequence[int]],
    workers: int,
    *,
    on_finish: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """``decode_share(prompts_of_share, share_index)`` run for every share, the first here and
    the others in forked processes, one torch thread each. Returns every prompt's
    new token ids in prompt order; ``on_finish(n)`` is called as each forked share arrives (the
    first share reports its own rows). A worker that fails (an exception, or killed by the
    system) fails the call with its reason."""
    dealt = shares([len(p) for p in prompts], workers)
    threads = torch.get_num_threads()
    # One thread per process: GNU OpenMP hangs a forked child that starts a thread pool of its
    # own once the parent has used one (found with 4 threads: each child's first parallel op).
    each = 1
    context = multiprocessing.get_context("fork")
    children = []
    for index, share in enumerate(dealt[1:], start=1):
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker,
            args=(writer, decode_share, [prompts[i] for i in share], index, each),
            daemon=True,
        )
        process.start()
        writer.close()
        children.append((process, reader, share))
    results: list[list[int] | None] = [None] * len(prompts)
    try:
        torch.set_num_threads(each)
        try:
            own = decode_share([prompts[i] for i in dealt[0]], 0)
        finally:
            torch.set_num_threads(threads)
        for i, tokens in zip(dealt[0], own, strict=True):
            results[i] = tokens
        for process, reader, share in children:
            try:
                status, payload = reader.recv()
            except EOFError:
                process.join()
                raise RuntimeError(
                    f"a decode worker ended without an answer (exit code {process.exitcode}; "
                    "killed for memory? try workers=1)"
                ) from None
            process.join()
            if status == "error":
                raise RuntimeError(f"a decode worker failed:\n{payload}")
            for i, tokens in zip(share, payload, strict=True):
                results[i] = tokens
            if on_finish is not None:
                on_finish(len(share))
    finally:
        for process, reader, _ in children:
            reader.close()
            if process.is_alive():
                process.kill()
                process.join()
    return [r if r is not None else [] for r in results]


def _worker(
    writer: Any,
    decode_share: Callable[[list[Sequence[int]], int], list[list[int]]],
    prompts: list[Sequence[int]],
    index: int,
    threads: int,
) -> None:
    try:
        torch.set_num_threads(threads)
        writer.send(("ok", decode_share(prompts, index)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent, which raises
        writer.send(("error", traceback.format_exc()))
    finally:
        writer.close()
        os._exit(0)  # no atexit handlers of the parent (they belong to the parent's process)
