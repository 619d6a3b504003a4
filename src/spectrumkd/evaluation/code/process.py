"""Start one sandboxed child and collect how it ended: the limits it gets, its clean
environment, the wall-clock deadline enforced from here, and the tails of its output.

Which isolation to use is settled before (:mod:`spectrumkd.evaluation.code.isolation`); the
confinement itself happens inside the child (:mod:`spectrumkd.evaluation.code.child`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from spectrumkd.evaluation.code.child import CHILD_RUNNER, EXIT_CALLED

_UNSHARE_ARGS = (
    "--user",
    "--map-root-user",
    "--mount",
    "--net",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount-proc",
    "--ipc",
    "--uts",
)


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did; ``passed`` means it ran to its end, in time, exit status 0."""

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    isolation: str

    @property
    def error(self) -> str | None:
        """A short reason for a failure (None when passed), for result files."""
        if self.passed:
            return None
        if self.timed_out:
            return "timed out"
        if self.returncode == EXIT_CALLED:
            return "program called exit() before its end"
        if self.returncode is not None and self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"killed by {name}"
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1][-300:] if lines else f"exit status {self.returncode}"


def _user_task_count(uid: int) -> int:
    """Threads and processes owned by ``uid``: what RLIMIT_NPROC counts against."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as handle:
                status = handle.read()
        except OSError:
            continue  # gone meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1\t").split()[0]) == uid:
            count += int(fields.get("Threads", "1").strip())
    return count


def _limits(timeout_s: float, memory_mb: int, file_size_mb: int, max_processes: int) -> dict:
    cpu = max(1, math.ceil(timeout_s))
    limits = {
        "RLIMIT_AS": (memory_mb << 20, memory_mb << 20),
        "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        "RLIMIT_FSIZE": (file_size_mb << 20, file_size_mb << 20),
        "RLIMIT_NOFILE": (256, 256),
        "RLIMIT_CORE": (0, 0),
    }
    uid = os.geteuid()
    if uid != 0 and max_processes > 0:
        # RLIMIT_NPROC counts every task of the user, not of the sandbox: allow what the user
        # already runs plus a margin (the kernel ignores this limit for root).
        nproc = _user_task_count(uid) + max_processes
        limits["RLIMIT_NPROC"] = (nproc, nproc)
    return limits


def _child_env(work: Path) -> dict[str, str]:
    # A clean environment: no tokens or paths of the caller leak into model-written code, and
    # numeric libraries stay single-threaded (threads count towards RLIMIT_NPROC).
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(work),
        "TMPDIR": str(work),
        "LANG": "C.UTF-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
    }


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``pid`` to exit without reaping it; True if it exited."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _tail(path: Path, limit: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _remove_tree(path: Path) -> None:
    # The program may have left read-only folders behind; make them writable and retry.
    def onerror(function, failed, _exc):
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            os.chmod(failed, 0o700)
            function(failed)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=onerror)  # onerror is deprecated from 3.12
    else:
        shutil.rmtree(path, onerror=onerror)


def run_in_child(
    source: str,
    *,
    timeout_s: float,
    memory_mb: int,
    file_size_mb: int,
    max_processes: int,
    isolation: str,
    guard: bool,
    python: str,
    run_name: str,
    output_limit: int,
) -> SandboxResult:
    base = Path(tempfile.mkdtemp(prefix="spectrumkd-sandbox-"))
    try:
        work, root = base / "work", base / "root"
        work.mkdir()
        root.mkdir()
        program = base / "program.py"  # outside the working folder: the program cannot edit it
        program.write_text(source, encoding="utf-8")
        config = {
            "work": str(work),
            "root": str(root),
            "program": str(program),
            "isolation": isolation,
            "guard": guard,
            "run_name": run_name,
            "limits": _limits(timeout_s, memory_mb, file_size_mb, max_processes),
        }
        command = [python, "-I", "-B", "-c", CHILD_RUNNER, json.dumps(config)]
        if isolation == "namespace":
            command = [shutil.which("unshare") or "unshare", *_UNSHARE_ARGS, *command]
        start = time.monotonic()
        with (base / "stdout").open("wb") as out, (base / "stderr").open("wb") as err:
            # No preexec_fn: it is unsafe with threads, and run_programs uses a thread pool;
            # the limits are set by the runner itself before the program's first line.
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=work,
                env=_child_env(work),
                start_new_session=True,
                close_fds=True,
            )
            timed_out = not _wait_unreaped(process.pid, timeout_s)
            # Kill the whole session, also after a normal exit (a child may have stayed behind),
            # while the leader is still unreaped: its zombie keeps the group id from being
            # reused, so the signal cannot reach an unrelated process. In the namespace the
            # kernel also kills everything left when the first process dies.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            returncode = process.wait()
        seconds = time.monotonic() - start
        return SandboxResult(
            passed=not timed_out and returncode == 0,
            returncode=None if timed_out else returncode,
            timed_out=timed_out,
            stdout=_tail(base / "stdout", output_limit),
            stderr=_tail(base / "stderr", output_limit),
            seconds=seconds,
            isolation=isolation,
        )
    finally:
        _remove_tree(base)
