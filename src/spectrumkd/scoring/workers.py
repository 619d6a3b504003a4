"""Scoring on several CPU cores: forked one-thread processes, each filling its share of the
shard files, which the scorer then reads back as it reads a resumed run's.

Why processes, not torch's threads: on the project's 2-core machine, scoring with two threads
ran at 1.35x one thread's speed and two one-thread processes at 1.64x (benchmarks/README.md,
"Scoring on two cores"); a forward's hundreds of operators each end at a barrier of the threads,
processes never wait for each other. Each worker is a
fork of this process (the weights shared copy-on-write) and writes its shards atomically, so a
kill loses at most the shards in progress, and the table is the one of a single process (the
same batches in each shard). CPU only: a GPU scores a batch at a time better.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["score_in_workers"]


def score_in_workers(
    score_share: Callable[[int, Callable[[int], None]], Any],
    workers: int,
    advance: Callable[[int], None],
) -> None:
    """``score_share(k, advance_k)`` for every share k < ``workers``: share 0 here, the others in
    forked processes, each process on one torch thread (GNU OpenMP hangs a forked child that
    starts a thread pool of its own). Every share reports its scored tokens through
    ``advance_k``, which reaches ``advance`` here (one progress bar for all). A worker that fails
    (an exception, or killed by the system) fails the call; the shards it finished stay for the
    next run."""
    context = multiprocessing.get_context("fork")
    done = context.Value("q", 0)  # tokens the workers scored, not yet passed to advance
    children = [
        context.Process(target=_worker, args=(score_share, share, done), daemon=True)
        for share in range(1, workers)
    ]

    def collect() -> None:
        with done.get_lock():
            tokens, done.value = done.value, 0
        if tokens:
            advance(tokens)

    threads = torch.get_num_threads()
    for child in children:
        child.start()
    try:
        torch.set_num_threads(1)
        try:
            score_share(0, lambda tokens: (advance(tokens), collect()))
        finally:
            torch.set_num_threads(threads)
        for share, child in enumerate(children, start=1):
            while child.is_alive():
                child.join(timeout=0.5)
                collect()
            if child.exitcode != 0:
                raise RuntimeError(
                    f"scoring worker {share} failed (exit code {child.exitcode}; its traceback "
                    "is above, or it was killed for memory: try workers=1); rerun to resume"
                )
        collect()
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()


def _worker(score_share: Callable[[int, Callable[[int], None]], Any], share: int, done) -> None:
    code = 0

    def advance(tokens: int) -> None:
        with done.get_lock():
            done.value += tokens

    try:
        _die_with_parent()
        torch.set_num_threads(1)
        score_share(share, advance)
    except BaseException:  # noqa: BLE001 - reported here, the parent fails on the exit code
        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)  # no atexit handlers of the parent (they belong to the parent's process)


def _die_with_parent() -> None:
    """On Linux, have the kernel end this worker when its parent dies (a killed scoring run
    would otherwise leave its workers scoring on); elsewhere nothing."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
