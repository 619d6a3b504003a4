"""Helpers shared by the benchmark scripts (run as ``python benchmarks/bench_*.py``, so this
folder is on ``sys.path``): process memory from /proc, a worker run in a fresh process, the
matmul peak of the machine, the matmul parameters of a model and a profiler table."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1)) / 1024


def reset_peak() -> None:
    """Reset VmHWM (writing 5 to clear_refs, Linux >= 4.0) so the peak covers what follows."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def run_worker(
    script: str, worker_args: Sequence[str], args: argparse.Namespace, names: Sequence[str]
) -> dict:
    """Run ``script --worker ...`` in a fresh process with ``args``' values of ``names`` passed on,
    and return the JSON its last stdout line holds (each measurement starts from a clean heap)."""
    command = [sys.executable, script, "--worker", *worker_args]
    for name in names:
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{worker_args[0]} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def matmul_peak_flops(
    dtype: str = "bfloat16", size: int = 4096, seconds: float = 2.0, device: str = "cpu"
) -> float:
    """FLOP/s of a ``size``-square matmul in ``dtype`` on ``device``: the best of repeated runs
    for about ``seconds``, in process CPU time on a CPU (so other jobs on a shared machine do not
    lower it; run it with one torch thread to get one core's peak) and in synchronised wall time
    on CUDA."""
    kind = getattr(torch, dtype)
    a = torch.randn(size, size, device=device).to(kind)
    b = torch.randn(size, size, device=device).to(kind)
    cuda = torch.device(device).type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    best = float("inf")
    torch.mm(a, b)  # the first call picks kernels and packs
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, clock() - start)
    return 2 * size**3 / best


def matmul_params(model: torch.nn.Module) -> int:
    """Weights that enter a matrix product per token: every ``nn.Linear`` (the blocks' projections
    and the LM head, tied to the embedding or not). Embedding lookups are not products."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def profile_table(profiler: Any, rows: int = 15, sort_by: str = "self_cpu_time_total") -> str:
    """The profiler's top ``rows`` ops by ``sort_by`` as its text table."""
    return profiler.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=40)
