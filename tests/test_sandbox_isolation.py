"""The sandbox's file-system view: model-written code must not read the user's secrets (issue 12,
item 11), while ordinary programs and the code-suite harness still run."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from spectrumkd.evaluation.code import (
    CodeProblem,
    build_program,
    landlock_available,
    namespace_available,
    resolve_isolation,
    run_program,
)

needs_namespace = pytest.mark.skipif(
    not namespace_available(), reason="unprivileged user namespaces are unavailable here"
)
needs_landlock = pytest.mark.skipif(
    not landlock_available(), reason="the kernel does not offer Landlock"
)
CONFINED = [
    pytest.param("namespace", marks=needs_namespace),
    pytest.param("landlock", marks=needs_landlock),
]

READS = [
    "print(open({path!r}).read())\n",
    "import pathlib\nprint(pathlib.Path({path!r}).read_text())\n",
    "import os\nprint(os.read(os.open({path!r}, os.O_RDONLY), 4096).decode())\n",
    "import io\nprint(io.FileIO({path!r}).read().decode())\n",
    "import shutil, sys\nshutil.copyfileobj(open({path!r}), sys.stdout)\n",
]


@pytest.fixture
def home_canary() -> Iterator[tuple[Path, str]]:
    """A secret file in the user's home folder, removed afterwards whatever happens."""
    token = secrets.token_hex(16)
    # The name is random too, but not the token: an error message may quote the path.
    path = Path.home() / f".spectrumkd-canary-{secrets.token_hex(8)}"
    path.write_text(f"secret {token}\n")
    try:
        yield path, token
    finally:
        path.unlink(missing_ok=True)


def outside_canary(tmp_path: Path) -> tuple[Path, str]:
    token = secrets.token_hex(16)
    path = tmp_path / "secrets" / "token.txt"
    path.parent.mkdir()
    path.write_text(f"secret {token}\n")
    return path, token


def assert_unread(result, token: str) -> None:
    assert not result.passed and not result.timed_out
    assert token not in result.stdout and token not in result.stderr
    assert any(e in result.stderr for e in ("FileNotFoundError", "PermissionError")), result.stderr


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("isolation", CONFINED)
@pytest.mark.parametrize("read", READS)
def test_secrets_outside_the_sandbox_are_unreadable(tmp_path, home_canary, isolation, guard, read):
    for path, token in (outside_canary(tmp_path), home_canary):
        result = run_program(
            read.format(path=str(path)), isolation=isolation, guard=guard, timeout_s=20
        )
        assert_unread(result, token)


@pytest.mark.parametrize("isolation", CONFINED)
def test_system_secrets_are_unreadable(isolation):
    source = (
        "import os\n"
        "for path in ('/etc/shadow', '/etc/passwd', '/proc/1/environ'):\n"
        "    try:\n"
        "        print(path, open(path, 'rb').read()[:40])\n"
        "    except OSError as error:\n"
        "        print(path, 'refused', type(error).__name__)\n"
    )
    result = run_program(source, isolation=isolation, timeout_s=20)
    assert result.passed, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        f"/etc/shadow refused {lines[0].split()[-1]}",
        f"/etc/passwd refused {lines[1].split()[-1]}",
    ]
    assert {line.split()[-1] for line in lines[:2]} <= {"FileNotFoundError", "PermissionError"}
    # In the namespace /proc/1 is the sandbox's own first process, which reveals nothing new.
    assert isolation == "namespace" or lines[2].endswith("refused PermissionError")


@needs_namespace
def test_the_namespace_root_holds_only_what_python_needs():
    source = "import os\nprint(sorted(os.listdir('/')))\nprint(sorted(os.listdir('/etc')))\n"
    result = run_program(source, isolation="namespace", timeout_s=20)
    assert result.passed, result.stderr
    top, etc = (eval(line) for line in result.stdout.splitlines())
    assert "home" not in top and "boot" not in top and "var" not in top
    assert etc in ([], ["ld.so.cache"])


ORDINARY = (
    "import bisect, collections, functools, hashlib, heapq, itertools, json, math, random, re\n"
    "import string, sys, typing, fractions, decimal, datetime, statistics, operator, copy\n"
    "import tempfile, os\n"
    "assert math.gcd(12, 18) == 6 and re.findall(r'\\d+', 'a1b22') == ['1', '22']\n"
    "assert collections.Counter('abca')['a'] == 2\n"
    "assert list(itertools.accumulate([1, 2, 3])) == [1, 3, 6]\n"
    "assert json.loads(json.dumps({'a': [1, 2]})) == {'a': [1, 2]}\n"
    "assert statistics.mean([1, 2, 3]) == 2 and str(fractions.Fraction(1, 3)) == '1/3'\n"
    "assert hashlib.sha256(b'x').hexdigest()[:4] == '2d71'\n"
    "assert len(str(random.Random(0).random())) > 2\n"
    "with tempfile.TemporaryFile() as handle:\n"
    "    handle.write(b'ok')\n"
    "open('scratch.txt', 'w').write('kept in the working folder')\n"
    "assert open('scratch.txt').read().startswith('kept')\n"
    "print(sys.version_info[:2])\n"
)

HUMANEVAL_LIKE = CodeProblem(
    id="HumanEval/demo",
    problem="",
    prompt_code="from typing import List\n\n\ndef total(values: List[int]) -> int:\n",
    reference="",
    test=(
        "METADATA = {}\n\n\ndef check(candidate):\n"
        "    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n"
    ),
    entry_point="total",
)


@pytest.mark.parametrize("isolation", CONFINED)
def test_ordinary_programs_and_the_harness_still_run(isolation):
    result = run_program(ORDINARY, isolation=isolation, timeout_s=20)
    assert result.passed, result.stderr
    solution = "from typing import List\n\n\ndef total(values: List[int]) -> int:\n"
    solution += "    return sum(values)\n"
    program = build_program(HUMANEVAL_LIKE, solution)
    assert run_program(program, isolation=isolation, run_name="__solution__", timeout_s=20).passed
    wrong = build_program(HUMANEVAL_LIKE, solution.replace("sum(values)", "len(values)"))
    failed = run_program(wrong, isolation=isolation, run_name="__solution__", timeout_s=20)
    assert not failed.passed and "AssertionError" in failed.stderr


def test_auto_prefers_the_strongest_isolation_available():
    expected = (
        "namespace" if namespace_available() else "landlock" if landlock_available() else "rlimits"
    )
    assert resolve_isolation("auto") == expected
    assert resolve_isolation("rlimits") == "rlimits"
    with pytest.raises(ValueError, match="isolation must be one of"):
        resolve_isolation("docker")


@needs_landlock
def test_without_namespaces_auto_falls_back_to_landlock(tmp_path, monkeypatch):
    from spectrumkd.evaluation.code import isolation

    monkeypatch.setattr(isolation, "namespace_available", lambda python=None: False)
    path, token = outside_canary(tmp_path)
    result = run_program(READS[0].format(path=str(path)), isolation="auto", timeout_s=20)
    assert result.isolation == "landlock"
    assert_unread(result, token)
    with pytest.raises(RuntimeError, match="namespace isolation is unavailable here"):
        run_program("pass", isolation="namespace")


def test_without_namespaces_or_landlock_auto_keeps_the_limits_and_guard(monkeypatch):
    from spectrumkd.evaluation.code import isolation

    monkeypatch.setattr(isolation, "namespace_available", lambda python=None: False)
    monkeypatch.setattr(isolation, "landlock_available", lambda python=None: False)
    assert resolve_isolation("auto") == "rlimits"
    with pytest.raises(RuntimeError, match="Landlock isolation is unavailable here"):
        resolve_isolation("landlock")
    result = run_program("import os\nos.fork()\n", isolation="auto", timeout_s=20)
    assert result.isolation == "rlimits" and "PermissionError" in result.stderr


@needs_namespace
def test_nothing_written_to_the_working_folder_can_be_executed():
    """The one writable folder is mounted noexec: a program that got past the guard (here: no
    guard) can write an executable file there but not run it."""
    source = (
        "import os, shutil, sys\n"
        "shutil.copy(sys.executable, 'copied-python')\n"
        "os.chmod('copied-python', 0o755)\n"
        "try:\n"
        "    os.execv('./copied-python', ['copied-python', '-c', 'print(\"executed\")'])\n"
        "except OSError as error:\n"
        "    print('refused', type(error).__name__)\n"
    )
    result = run_program(source, isolation="namespace", guard=False, timeout_s=20)
    assert "executed" not in result.stdout
    assert "refused PermissionError" in result.stdout, (result.stdout, result.stderr)
