"""Which isolation a sandboxed run gets here: each confining kind is probed once (a program
that must stay confined), and "auto" takes the strongest that works (namespace, then Landlock,
then rlimits). See :mod:`spectrumkd.evaluation.code.sandbox` for what each kind guards.
"""

from __future__ import annotations

import shutil
import sys
from functools import lru_cache

from spectrumkd.evaluation.code.process import run_in_child

ISOLATIONS = ("auto", "namespace", "landlock", "rlimits")

# A probe program for a confining isolation: it must write in its folder, and neither write
# outside it nor read the program file one folder up (outside everything it may see).
_PROBE = (
    "import os\nopen('probe.txt', 'w').write('ok')\n"
    "for path, mode in (('/probe-outside', 'w'), ('../program.py', 'r')):\n"
    "    try:\n        open(path, mode).close()\n"
    "    except OSError:\n        print('confined', path)\n"
)


def _probe(isolation: str, python: str) -> bool:
    try:
        result = run_in_child(
            _PROBE,
            timeout_s=20,
            memory_mb=1024,
            file_size_mb=1,
            max_processes=16,
            isolation=isolation,
            guard=False,
            python=python,
            run_name="__main__",
            output_limit=4000,
        )
    except OSError:
        return False
    return result.passed and result.stdout.count("confined") == 2


@lru_cache(maxsize=4)
def namespace_available(python: str = sys.executable) -> bool:
    """Whether this machine lets an unprivileged process build the namespace sandbox."""
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    return _probe("namespace", python)


@lru_cache(maxsize=1)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or this is not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION); 444 on every arch.
    version = libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))
    return max(0, int(version))


@lru_cache(maxsize=4)
def landlock_available(python: str = sys.executable) -> bool:
    """Whether the Landlock sandbox works here (the kernel offers it and a probe is confined)."""
    return landlock_abi() > 0 and _probe("landlock", python)


def resolve_isolation(isolation: str, python: str | None = None) -> str:
    """The isolation a run with ``isolation`` gets here: "auto" becomes the strongest available
    (namespace, then landlock, then rlimits); an explicit one that cannot work raises."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    python = python or sys.executable
    if isolation == "auto":
        if namespace_available(python):
            return "namespace"
        return "landlock" if landlock_available(python) else "rlimits"
    if isolation == "namespace" and not namespace_available(python):
        raise RuntimeError(
            "sandbox: namespace isolation is unavailable here (needs util-linux `unshare` and "
            "unprivileged user namespaces); use isolation 'landlock', 'rlimits' or 'auto'"
        )
    if isolation == "landlock" and not landlock_available(python):
        raise RuntimeError(
            "sandbox: Landlock isolation is unavailable here (needs Linux 5.13+ with Landlock "
            "enabled); use isolation 'namespace', 'rlimits' or 'auto'"
        )
    return isolation
