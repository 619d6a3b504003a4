"""Helpers shared by the benchmark scripts (run as ``python benchmarks/bench_*.py``, so this
folder is on ``sys.path``): process memory from /proc and a worker run in a fresh process."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Sequence


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
