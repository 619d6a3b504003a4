"""Maths and code pass@1: answer checking, loaders, few-shot selection, the sandbox (including
programs that try to escape it) and the suite runners on real data with known answers."""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import pytest

from spectrumkd.evaluation.code import (
    build_program,
    check_solutions,
    complete_solution,
    evaluate_code,
    extract_code,
    landlock_abi,
    landlock_available,
    load_humaneval,
    load_mbpp,
    namespace_available,
    run_program,
)
from spectrumkd.evaluation.maths import (
    NEXT_PROBLEM,
    build_prompts,
    evaluate_maths,
    extract_boxed,
    gsm8k_boxed_solution,
    is_equivalent,
    load_gsm8k,
    load_math500,
    score_math_prediction,
    select_few_shot,
)

needs_namespace = pytest.mark.skipif(
    not namespace_available(), reason="unprivileged user namespaces are unavailable here"
)
needs_landlock = pytest.mark.skipif(
    not landlock_available(), reason="the kernel does not offer Landlock"
)
needs_landlock_tcp = pytest.mark.skipif(
    not landlock_available() or landlock_abi() < 4, reason="Landlock here cannot restrict TCP"
)
ISOLATIONS = [
    "rlimits",
    pytest.param("namespace", marks=needs_namespace),
    pytest.param("landlock", marks=needs_landlock),
]

# ---------------------------------------------------------------------------------- maths


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("1/2", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\frac12", "\\dfrac{1}{2}"),
        ("72.0", "72"),
        ("1,000", "1000"),
        ("1+x^2", "x^2+1"),
        ("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ],
)
def test_checker_accepts_equivalent_forms(prediction, reference):
    assert is_equivalent(prediction, reference)


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [("1/3", "0.5"), ("4", "3"), ("x+2", "x+1"), ("", "3"), ("\\frac{1}{3}", "0.5")],
)
def test_checker_rejects_wrong_answers(prediction, reference):
    assert not is_equivalent(prediction, reference)


def test_boxed_extraction():
    assert extract_boxed("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{\\{1, {2}\\}}") == "\\{1, {2}\\}"
    assert extract_boxed("first \\boxed{3} then \\boxed{4}") == "4"  # the last box wins
    assert extract_boxed("no box at all, the answer is 5") is None
    assert extract_boxed("\\boxed{7} and a cut-off \\boxed{\\frac{1") == "7"
    assert extract_boxed("\\boxed 5$") == "5"
    assert extract_boxed("\\fbox{9}") == "9"


def test_answer_is_cut_at_an_invented_next_problem():
    text = "2+2=4, so \\boxed{4}.\n\n" + NEXT_PROBLEM + "\nWhat is 3+4?\n... \\boxed{7}"
    assert score_math_prediction(text, "4") == {"extracted": "4", "correct": True}
    assert score_math_prediction("\\boxed{5}", "4")["correct"] is False
    assert score_math_prediction("no answer", "4") == {"extracted": None, "correct": False}


def test_gsm8k_loader_and_boxed_shots(shared_data):
    test = load_gsm8k(shared_data / "gsm8k/test.jsonl")
    train = load_gsm8k(shared_data / "gsm8k/train.jsonl")
    assert (len(test), len(train)) == (1319, 7473)
    assert len({p.id for p in test}) == 1319
    assert all("," not in p.answer and "####" not in p.solution for p in test)
    assert all("<<" not in p.solution for p in train)
    assert all(extract_boxed(p.solution) == p.answer for p in train)
    assert gsm8k_boxed_solution("3 + 4 = <<3+4=7>>7 apples\n#### 7") == (
        "3 + 4 = 7 apples\nThe answer is \\boxed{7}."
    )


def test_few_shot_is_seeded_and_never_shows_the_asked_problem(shared_data):
    math500 = load_math500(shared_data / "math/math500_test.jsonl")
    assert len(math500) == 500
    assert select_few_shot(math500, 4, seed=0) == select_few_shot(math500, 4, seed=0)
    assert select_few_shot(math500, 4, seed=0) != select_few_shot(math500, 4, seed=1)
    prompts, shot_ids = build_prompts(math500, math500, 4, seed=0)
    for problem, prompt, ids in zip(math500, prompts, shot_ids, strict=True):
        assert len(ids) == 4 and problem.id not in ids
        assert prompt.count(NEXT_PROBLEM) == 5 and prompt.count(problem.problem) == 1
        assert prompt.endswith("### Solution:\n")
    # All but the shots themselves get the same prompt prefix.
    assert sum(ids == shot_ids[0] for ids in shot_ids) >= 500 - 4 - 1
    gsm_test = load_gsm8k(shared_data / "gsm8k/test.jsonl")[:3]
    gsm_train = load_gsm8k(shared_data / "gsm8k/train.jsonl")
    prompts, shot_ids = build_prompts(gsm_test, gsm_train, 8, seed=0)
    assert all(len(ids) == 8 and all("train" in i for i in ids) for ids in shot_ids)
    assert prompts[0].count("The answer is \\boxed{") == 8  # every shot ends in a box


def test_evaluate_maths_scores_resumes_and_refuses_other_settings(shared_data, tmp_path):
    problems = load_math500(shared_data / "math/math500_test.jsonl")[:6]
    calls = []

    def oracle(prompts):  # answers the first four right, the rest wrong
        calls.append(len(prompts))
        out = []
        for prompt in prompts:
            asked = prompt.rsplit(NEXT_PROBLEM + "\n", 1)[1]
            problem = next(p for p in problems if asked.startswith(p.problem + "\n"))
            right = problems.index(problem) < 4
            out.append(f"... \\boxed{{{problem.answer if right else 'wrong'}}}\n\n### Problem:\n")
        return out

    summary = evaluate_maths(
        "math", data_dir=shared_data, out_dir=tmp_path, generate_fn=oracle, limit=6, chunk_size=4
    )
    assert summary["n"] == 6 and summary["pass_at_1"] == pytest.approx(100 * 4 / 6)
    assert calls == [4, 2]
    rows = [json.loads(line) for line in (tmp_path / "math/greedy.jsonl").open()]
    assert [r["correct"] for r in rows] == [True] * 4 + [False] * 2
    assert set(rows[0]) == {"id", "prompt", "prediction", "extracted", "reference", "correct"}
    saved = json.loads((tmp_path / "math/summary.json").read_text())
    assert saved["set"] == "math" and saved["settings"]["num_shots"] == 4

    options = {"data_dir": shared_data, "out_dir": tmp_path, "generate_fn": oracle, "limit": 6}
    again = evaluate_maths("math", **options)  # everything saved: nothing is generated
    assert calls == [4, 2] and again["reused_rows"] == 6
    assert again["pass_at_1"] == summary["pass_at_1"]
    with pytest.raises(ValueError, match="other settings .*num_shots"):
        evaluate_maths("math", num_shots=2, **options)


# ---------------------------------------------------------------------------------- sandbox


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_sandbox_runs_a_program_in_its_own_folder(isolation):
    source = (
        "import os, tempfile\n"
        "open('out.txt', 'w').write('ok')\n"
        "tempfile.NamedTemporaryFile(dir=os.environ['TMPDIR']).close()\n"
        "assert os.environ['HOME'] == os.getcwd()\n"
        "print(os.getcwd(), flush=True)\n"
    )
    result = run_program(source, isolation=isolation, timeout_s=20)
    assert result.passed, result.stderr
    assert result.isolation == isolation
    assert not Path(result.stdout.strip()).exists()  # the folder is removed afterwards


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_infinite_loop_times_out(isolation):
    result = run_program("while True:\n    pass\n", isolation=isolation, timeout_s=1.5)
    assert not result.passed and result.timed_out and result.error == "timed out"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_unbounded_allocation_fails(isolation):
    source = "blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))\n"
    result = run_program(source, isolation=isolation, memory_mb=512, timeout_s=20)
    assert not result.passed and not result.timed_out
    assert "MemoryError" in result.stderr


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_fork_bomb_is_stopped_by_the_guard(isolation):
    for source in (
        "import os\nwhile True:\n    os.fork()\n",
        "import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '100'])\n",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()\n",
        "import ctypes\nctypes.CDLL(None).fork()\n",
    ):
        result = run_program(source, isolation=isolation, timeout_s=20)
        assert not result.passed and not result.timed_out, source
        assert any(e in result.stderr for e in ("PermissionError", "ImportError", "NotFoundError"))


@pytest.mark.skipif(os.geteuid() == 0, reason="the kernel ignores RLIMIT_NPROC for root")
def test_fork_bomb_without_guard_hits_the_process_limit():
    source = "import os\nwhile True:\n    if os.fork() == 0:\n        import time; time.sleep(30)\n"
    result = run_program(source, guard=False, max_processes=8, timeout_s=20)
    assert not result.passed and not result.timed_out
    assert "BlockingIOError" in result.stderr or "Resource temporarily" in result.stderr


@needs_namespace
def test_processes_left_behind_die_with_the_namespace(tmp_path):
    marker = f"spectrumkd-left-behind-{random.randrange(10**9)}"
    # The children exec the interpreter (the sandbox's view has no /usr/bin) and say so first,
    # so the test sees that they really ran before the deadline.
    source = (
        "import os, sys, time\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()  # leaves the process group: only the PID namespace catches it\n"
        "        code = 'print(\\'started\\', flush=True); import time; time.sleep(300)'\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', code, '{marker}'])\n"
        "time.sleep(300)\n"
    )
    result = run_program(source, isolation="namespace", guard=False, timeout_s=6)
    assert result.timed_out and result.stdout.count("started") == 3
    import time

    time.sleep(0.3)
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                alive.append(entry)
    assert alive == []


def _canary(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "outside"
    folder.mkdir()
    canary = folder / "canary.txt"
    canary.write_text("alive")
    return folder, canary


@pytest.mark.parametrize(
    "attack",
    [
        "import os\nos.remove({canary!r})\n",
        "import shutil\nshutil.rmtree({folder!r})\n",
        "import pathlib\npathlib.Path({canary!r}).unlink()\n",
        "open({canary!r}, 'w').write('overwritten')\n",
        "import os\nos.rename({canary!r}, 'stolen.txt')\n",
        "import os\nassert os.system('rm -rf {folder}') == 0\n",
    ],
)
@pytest.mark.parametrize(
    ("isolation", "guard"),
    [
        ("rlimits", True),
        ("namespace", True),
        pytest.param("namespace", False, marks=needs_namespace),
        ("landlock", True),
        pytest.param("landlock", False, marks=needs_landlock),
    ],
)
def test_files_outside_the_sandbox_survive(tmp_path, attack, isolation, guard):
    if isolation == "namespace" and not namespace_available():
        pytest.skip("unprivileged user namespaces are unavailable here")
    if isolation == "landlock" and not landlock_available():
        pytest.skip("the kernel does not offer Landlock")
    folder, canary = _canary(tmp_path)
    source = attack.format(canary=str(canary), folder=str(folder))
    result = run_program(source, isolation=isolation, guard=guard, timeout_s=20)
    assert not result.passed and not result.timed_out
    assert canary.read_text() == "alive" and sorted(os.listdir(folder)) == ["canary.txt"]


@pytest.mark.parametrize(
    ("isolation", "guard"),
    [
        ("rlimits", True),
        ("namespace", True),
        pytest.param("namespace", False, marks=needs_namespace),
        ("landlock", True),
        # Landlock restricts TCP from ABI 4 on.
        pytest.param("landlock", False, marks=needs_landlock_tcp),
    ],
)
def test_network_is_unreachable(isolation, guard):
    if isolation == "namespace" and not namespace_available():
        pytest.skip("unprivileged user namespaces are unavailable here")
    if isolation == "landlock" and not landlock_available():
        pytest.skip("the kernel does not offer Landlock")
    # A listening socket on the host's loopback: the kernel completes a connection into the
    # backlog even before accept(), so a non-blocking accept afterwards shows any that came.
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    source = (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'leak')\n"
    )
    result = run_program(source, isolation=isolation, guard=guard, timeout_s=20)
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()
    assert not result.passed and not result.timed_out


def test_output_flood_and_early_exit_fail():
    flood = run_program("while True:\n    print('x' * 1000)\n", file_size_mb=1, timeout_s=20)
    assert not flood.passed and not flood.timed_out and len(flood.stdout) <= 4000
    early = run_program("import sys\nsys.exit(0)\nassert False\n", timeout_s=20)
    assert not early.passed and early.error == "program called exit() before its end"


def test_sandbox_rejects_bad_options():
    with pytest.raises(ValueError, match="isolation must be one of"):
        run_program("pass", isolation="docker")
    with pytest.raises(ValueError, match="positive"):
        run_program("pass", timeout_s=0)


# ---------------------------------------------------------------------------------- code


def test_code_extraction():
    answer = "Here:\n```python\ndef f():\n    return 1\n```\nand\n```python\nx = 2\n```\n"
    assert extract_code(answer) == "def f():\n    return 1\n"
    assert extract_code("```bash\nls\n```\n```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1\n"
    assert extract_code("    return 1\n") == "    return 1\n"


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(shared_data):
    problems = load_humaneval(shared_data / "humaneval/HumanEval.jsonl.gz")
    assert len(problems) == 164
    # All 164 pass (checked when this suite was written: 9-15 s with 4 workers); CI runs a seeded
    # sample to stay fast.
    sample = random.Random(0).sample(problems, 20)
    results = check_solutions(sample, [p.reference for p in sample], workers=4)
    assert [p.id for p, r in zip(sample, results, strict=True) if not r.passed] == []
    first = problems[0]
    wrong = complete_solution(first, extract_code("```python\n    return False\n```"))
    assert wrong.startswith(first.prompt_code)  # a bare body is completed with the prompt
    bare_def = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    fixed = complete_solution(first, bare_def + "    return True\n")
    assert fixed.startswith("from typing import List\n")  # the prompt's imports are added
    results = check_solutions([first, first], [wrong, fixed])
    assert [r.passed for r in results] == [False, False]


def test_mbpp_reference_code_passes(shared_data):
    sanitized = load_mbpp(shared_data / "mbpp/sanitized-mbpp.json")
    full = load_mbpp(shared_data / "mbpp/mbpp.jsonl")
    assert (len(sanitized), len(full)) == (427, 974)
    assert len(load_mbpp(shared_data / "mbpp/mbpp.jsonl", split="test")) == 500
    sample = random.Random(0).sample(sanitized, 12)
    sample += [p for p in full if p.id == "Mbpp/367"]  # setup code that uses the solution's class
    sample += [p for p in sanitized if p.test_header][:2]
    results = check_solutions(sample, [p.reference for p in sample], workers=4)
    assert [p.id for p, r in zip(sample, results, strict=True) if not r.passed] == []
    broken = sample[0].reference + "\n" + sample[0].reference.split("(")[0] + "(*a): return None\n"
    assert not check_solutions([sample[0]], [broken])[0].passed
    assert "def " in build_program(sample[0], sample[0].reference)


def test_evaluate_code_writes_rows_and_evalplus_samples(shared_data, tmp_path):
    problems = load_humaneval(shared_data / "humaneval/HumanEval.jsonl.gz")[:4]
    answers = {p.id: p for p in problems}

    def coder(prompts):
        out = []
        for prompt in prompts:
            task = next(p for p in answers.values() if p.problem in prompt)
            body = task.reference if task.id != "HumanEval/3" else "def below_zero(x):\n    pass\n"
            out.append(f"Sure.\n```python\n{body}```\nDone.")
        return out

    summary = evaluate_code(
        "humaneval", data_dir=shared_data, out_dir=tmp_path, generate_fn=coder, limit=4
    )
    assert summary["n"] == 4 and summary["pass_at_1"] == 75.0
    rows = [json.loads(line) for line in (tmp_path / "humaneval/greedy.jsonl").open()]
    assert [r["correct"] for r in rows] == [True, True, True, False]
    assert "error" in rows[3] and "error" not in rows[0]
    samples = [json.loads(line) for line in (tmp_path / "humaneval/samples.jsonl").open()]
    assert [set(s) for s in samples] == [{"task_id", "solution"}] * 4
    assert [s["task_id"] for s in samples] == [f"HumanEval/{i}" for i in range(4)]
    assert [s["solution"] for s in samples] == [r["extracted"] for r in rows]
    assert "def has_close_elements(" in samples[0]["solution"]
    saved = json.loads((tmp_path / "humaneval/summary.json").read_text())
    assert saved["set"] == "humaneval" and saved["sandbox"]["timeout_s"] == 20.0


def test_suite_runners_write_where_the_evaluate_command_looks(
    shared_data, tmp_path, tiny_model, tiny_tokenizer
):
    from spectrumkd.evaluation import SuiteContext
    from spectrumkd.evaluation.code import code_suite_runner
    from spectrumkd.evaluation.maths import maths_suite_runner

    for name, runner, options in (
        ("math", maths_suite_runner("math"), {"num_shots": 0}),
        ("humaneval", code_suite_runner("humaneval"), {"workers": 1}),
    ):
        context = SuiteContext(
            model=tiny_model,
            tokenizer=tiny_tokenizer,
            out_dir=tmp_path / name,
            data_root=shared_data,
            limit=2,
            batch_size=2,
            max_new_tokens=4,
            progress=False,
            options=options,
        )
        result = runner(context)  # a random tiny model: real generation, nothing solved
        assert result["metric"] == "pass@1" and result["score"] == 0.0 and result["n"] == 2
        assert (tmp_path / name / "greedy.jsonl").exists()
        assert json.loads((tmp_path / name / "summary.json").read_text())["n"] == 2
    with pytest.raises(ValueError, match="needs --data-root"):
        maths_suite_runner("gsm8k")(
            SuiteContext(tiny_model, tiny_tokenizer, tmp_path / "gsm8k", None, 1, 1, 4, False)
        )
