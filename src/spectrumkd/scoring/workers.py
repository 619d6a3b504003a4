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


def score_in_workers(score_share: Callable[[int], Any], workers: int) -> None:
    """``score_share(k)`` for every share k < ``workers``: share 0 here, the others in forked
    processes, torch's threads split between them. A worker that fails (an exception, or killed
    by the system) fails the call; the shards it finished stay for the next run."""
    threads = torch.get_num_threads()
    each = max(1, threads // workers)
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_worker, args=(score_share, share, each), daemon=True)
        for share in range(1, workers)
    ]
    for child in children:
        child.start()
    try:
        torch.set_num_threads(each)
        try:
            score_share(0)
        finally:
            torch.set_num_threads(threads)
        for share, child in enumerate(children, start=1):
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(
                    f"scoring worker {share} failed (exit code {child.exitcode}; its traceback "
                    "is above, or it was killed for memory: try workers=1); rerun to resume"
                )
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()


def _worker(score_share: Callable[[int], Any], share: int, threads: int) -> None:
    code = 0
    try:
        _die_with_parent()
        torch.set_num_threads(threads)
        score_share(share)
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
