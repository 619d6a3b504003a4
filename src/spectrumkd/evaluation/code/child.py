"""The program a sandboxed child runs before the untrusted code (see
:mod:`spectrumkd.evaluation.code.sandbox` for the layers): the namespace view or the Landlock
rules, the resource limits, and the Python guard, then the program itself.

It is kept as source text, not as a module of this package, so the child imports nothing from
the (writable, user-owned) project tree and needs no PYTHONPATH.
"""

# Exit code the runner uses when the program called exit()/sys.exit(): a program that exits
# early skips the tests appended to it, so it must not count as passing.
EXIT_CALLED = 3
# Runner exit code for "the program raised"; the traceback is on stderr.
PROGRAM_RAISED = 1

# Passed with ``python -I -c``; argv[1] is a JSON config.
CHILD_RUNNER = r"""
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
