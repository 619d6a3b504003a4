"""Malformed inputs through the command line, one table: every data format, every command.

Each case runs ``spectrumkd.cli.main`` in-process with ``--quiet`` and checks what a user sees:
a non-zero exit, exactly one line on stderr that names the problem, no traceback, and nothing
left behind in the output folder. stderr is captured at the file descriptor, so the libraries'
own loggers and progress bars count too.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest
import yaml
from conftest import build_tiny_llama

from spectrumkd.cli import main

GOOD_ROWS = [
    {"instruction": f"Say the number {i} in words.", "input": "", "output": f"It is {i}."}
    for i in range(8)
]
WRONG_COLUMNS = [{"question": "What is 2+3?", "answer": "5"}]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def csv_bytes(rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def parquet_bytes(rows: list[dict], tmp: Path) -> bytes:
    path = tmp / "scratch.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    data = path.read_bytes()
    path.unlink()
    return data


LATIN1 = {"instruction": "Un caf\xe9, s'il vous pla\xeet.", "input": "", "output": "Voil\xe0."}


def bad_bytes(kind: str, fmt: str, tmp: Path) -> bytes:
    """The content of a data file of format ``fmt`` with the defect ``kind``."""
    if kind == "empty":
        return b""
    if kind == "blank-lines":
        return b"\n   \n\n"
    if kind == "invalid-json":
        good = json.dumps(GOOD_ROWS[0]).encode()
        if fmt == "json":
            return b"[\n" + good + b',\n{"instruction": "x", "output": oops}\n]\n'
        return good + b'\n{"instruction": "x", "output": oops}\n'
    if kind == "invalid-utf8":  # the file written as Latin-1: its accents are not UTF-8
        rows = [GOOD_ROWS[0], LATIN1]
        text = {
            "jsonl": lambda: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
            "json": lambda: json.dumps(rows, ensure_ascii=False, indent=1),
            "csv": lambda: csv_bytes(rows).decode("utf-8"),
        }[fmt]()
        return text.encode("latin-1")
    if kind == "not-parquet":
        return b"PAR1 this is not a parquet file"
    if kind == "missing-column":
        return {
            "jsonl": lambda: jsonl(WRONG_COLUMNS),
            "json": lambda: json.dumps(WRONG_COLUMNS).encode(),
            "csv": lambda: csv_bytes(WRONG_COLUMNS),
            "parquet": lambda: parquet_bytes(WRONG_COLUMNS, tmp),
        }[fmt]()
    raise AssertionError(kind)


# (defect, format): what the one line must say about the file, as a regex.
DATA_DEFECTS = {
    **{("empty", f): "is empty" for f in ("jsonl", "json", "csv", "parquet", "folder")},
    **{("blank-lines", f): "is empty" for f in ("jsonl", "json", "csv")},
    **{("invalid-json", f): r":[23]:\d+: not valid JSON" for f in ("jsonl", "json", "folder")},
    **{("invalid-utf8", f): r":\d+: not valid UTF-8" for f in ("jsonl", "json", "csv", "folder")},
    ("not-parquet", "parquet"): "is not a Parquet file",
    **{
        ("missing-column", f): "cannot tell which columns"
        for f in ("jsonl", "json", "csv", "parquet", "folder")
    },
    ("missing-file", "jsonl"): "no such data file",
    ("missing-file", "folder"): "no such data file",
    ("no-data-files", "folder"): "holds no data files",
}


def make_data(tmp: Path, kind: str, fmt: str) -> tuple[Path, str]:
    """(the --data path, the name of the file the error must name)."""
    if fmt == "folder":
        folder = tmp / "data-folder"
        if kind == "missing-file":
            return folder, folder.name
        folder.mkdir()
        if kind == "no-data-files":
            (folder / "notes").mkdir()  # a folder of folders: nothing datasets could read
            return folder, folder.name
        (folder / "part.jsonl").write_bytes(bad_bytes(kind, "jsonl", tmp))
        # A column error is about the whole source; a broken file is named on its own.
        return folder, folder.name if kind == "missing-column" else "part.jsonl"
    path = tmp / f"data.{fmt}"
    if kind != "missing-file":
        path.write_bytes(bad_bytes(kind, fmt, tmp))
    return path, path.name


@dataclass(frozen=True)
class Models:
    ready: Path  # a tiny model folder with its tokenizer
    no_tokenizer: Path  # config.json + model.safetensors only


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer) -> Models:
    root = tmp_path_factory.mktemp("bad-inputs-models")
    model = build_tiny_llama(len(tiny_tokenizer), num_layers=1)
    model.save_pretrained(root / "ready")
    tiny_tokenizer.save_pretrained(root / "ready")
    model.save_pretrained(root / "best")
    return Models(ready=root / "ready", no_tokenizer=root / "best")


def score_argv(data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["score", "--model", str(model), "--data", str(data), "--out", str(out), *extra]


def distill_argv(tmp: Path, data: Path, out: Path, models: Models, **changes) -> list[str]:
    config = {
        "teacher": str(models.ready),
        "student": str(models.ready),
        "output_dir": str(out),
        "data": {"source": str(data), "max_length": 128},
        "train": {"epochs": 1, "batch_size": 4},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    (tmp / "run.yaml").write_text(yaml.safe_dump(config))
    return ["distill", "--config", str(tmp / "run.yaml")]


def evaluate_argv(data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--model",
        str(model),
        "--suites",
        "dolly",
        "--source",
        f"dolly={data}",
        "--greedy",
        "--max-new-tokens",
        "2",
        "--no-quality",
        "--out",
        str(out),
        *extra,
    ]


# Each case: (tmp, out, models) -> (argv, regex the one stderr line must match).
Case = Callable[[Path, Path, Models], tuple[list[str], str]]
CASES: dict[str, Case] = {}


def data_case(command: str, kind: str, fmt: str) -> Case:
    def case(tmp: Path, out: Path, models: Models) -> tuple[list[str], str]:
        data, name = make_data(tmp, kind, fmt)
        expected = DATA_DEFECTS[(kind, fmt)]
        if kind == "missing-column":
            # The fix names the option as each interface spells it.
            option = {"score": "--fields", "heal": "--fields", "distill": "data.fields"}.get(
                command
            )
            expected = (
                f"{expected}.*{re.escape(option)}"
                if option
                else "no 'instruction' \\(or 'prompt'\\) text"
            )
        argv = {
            "score": lambda: score_argv(data, out, models.ready),
            "distill": lambda: distill_argv(tmp, data, out, models),
            "evaluate": lambda: evaluate_argv(data, out, models.ready),
            "heal": lambda: [
                *("heal", "--teacher", str(models.ready), "--student", str(models.ready)),
                *("--data", str(data), "--out", str(out)),
            ],
        }[command]()
        return argv, f"{re.escape(name)}.*{expected}|{expected}.*{re.escape(name)}"

    return case


for command in ("score", "distill", "evaluate"):
    for kind, fmt in DATA_DEFECTS:
        CASES[f"{command}-{kind}-{fmt}"] = data_case(command, kind, fmt)
# heal runs distill's job from flags: a sample, to see it also leaves no run folder behind.
for kind, fmt in (("empty", "jsonl"), ("missing-column", "csv")):
    CASES[f"heal-{kind}-{fmt}"] = data_case("heal", kind, fmt)


def difficulties_case(content: bytes | None, expected: str, suffix: str = ".jsonl") -> Case:
    def case(tmp: Path, out: Path, models: Models) -> tuple[list[str], str]:
        path = tmp / f"difficulties{suffix}"
        if content is not None:
            path.write_bytes(content)
        return ["curate", "--difficulties", str(path), "--out", str(out)], expected

    return case


ROWS = [{"id": f"q{i}", "difficulty": 1.0 + i} for i in range(20)]
CASES.update(
    {
        "curate-empty": difficulties_case(b"", r"difficulties\.jsonl holds no rows"),
        "curate-blank-lines": difficulties_case(b"\n \n", r"difficulties\.jsonl holds no rows"),
        "curate-invalid-json": difficulties_case(
            jsonl(ROWS[:3]) + b'{"id": "x", "difficulty": }\n',
            r"difficulties\.jsonl:4:\d+: not valid JSON",
        ),
        "curate-invalid-utf8": difficulties_case(
            jsonl(ROWS[:3]) + b'{"id": "caf\xe9", "difficulty": 1.0}\n',
            r"difficulties\.jsonl:4: not valid UTF-8",
        ),
        "curate-missing-field": difficulties_case(
            jsonl(ROWS[:3]) + jsonl([{"id": "x", "loss": 2.0}]),
            r"difficulties\.jsonl: row 4 needs fields 'id' and 'difficulty'",
        ),
        "curate-missing-id": difficulties_case(
            jsonl(ROWS[:3]) + jsonl([{"difficulty": 2.0}]), r"row 4 needs fields 'id'"
        ),
        "curate-nan": difficulties_case(
            jsonl(ROWS[:3]) + b'{"id": "x", "difficulty": NaN}\n',
            r"difficulties\.jsonl: row 4 \('x'\): difficulty=nan is not finite",
        ),
        "curate-infinite": difficulties_case(
            jsonl(ROWS[:3]) + b'{"id": "x", "difficulty": Infinity}\n',
            r"difficulties\.jsonl: row 4 \('x'\): difficulty=inf is not finite",
        ),
        "curate-text-value": difficulties_case(
            jsonl([*ROWS[:3], {"id": "x", "difficulty": "hard"}]), r"difficulty='hard' is not a"
        ),
        "curate-missing-file": difficulties_case(None, r"difficulties\.jsonl does not exist"),
        "curate-json-invalid": difficulties_case(
            b'[{"id": "a", "difficulty": 1},', r"difficulties\.json.*not valid JSON", ".json"
        ),
        "curate-json-not-a-list": difficulties_case(
            b'{"id": "a", "difficulty": 1}', r"difficulties\.json: expected a JSON list", ".json"
        ),
    }
)


def out_is_a_file(make_argv: Callable[[Path, Path, Models], list[str]], below: bool) -> Case:
    """--out names an existing file ([Errno 17]) or a folder inside one ([Errno 20])."""

    def case(tmp: Path, out: Path, models: Models) -> tuple[list[str], str]:
        out.write_text("precious\n")
        target = out / "run" if below else out
        return make_argv(tmp, target, models), rf"{re.escape(out.name)} is a file"

    return case


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def good_data(tmp: Path) -> Path:
    (tmp / "good.jsonl").write_bytes(jsonl(GOOD_ROWS))
    return tmp / "good.jsonl"


def good_difficulties(tmp: Path) -> Path:
    (tmp / "d.jsonl").write_bytes(jsonl(ROWS))
    return tmp / "d.jsonl"


def good_run(tmp: Path) -> Path:
    run = tmp / "scored"
    run.mkdir()
    (run / "difficulties.jsonl").write_bytes(jsonl(ROWS))
    return run


OUT_USERS: dict[str, Callable[[Path, Path, Models], list[str]]] = {
    "score": lambda tmp, out, m: score_argv(good_data(tmp), out, m.ready),
    "curate": lambda tmp, out, m: [
        "curate",
        "--difficulties",
        str(good_difficulties(tmp)),
        "--out",
        str(out),
    ],
    "distill": lambda tmp, out, m: distill_argv(tmp, good_data(tmp), out, m),
    "evaluate": lambda tmp, out, m: evaluate_argv(good_data(tmp), out, m.ready),
    "report": lambda tmp, out, m: ["report", str(good_run(tmp)), "--out", str(out)],
}
for command, make in OUT_USERS.items():
    CASES[f"{command}-out-is-a-file"] = out_is_a_file(make, below=False)
    CASES[f"{command}-out-inside-a-file"] = out_is_a_file(make, below=True)


def no_tokenizer(make_argv: Callable[[Path, Path, Path], list[str]]) -> Case:
    def case(tmp: Path, out: Path, models: Models) -> tuple[list[str], str]:
        name = re.escape(str(models.no_tokenizer))
        return make_argv(tmp, out, models.no_tokenizer), rf"{name} holds no tokenizer.*copy"

    return case


CASES.update(
    {
        "score-model-without-tokenizer": no_tokenizer(
            lambda tmp, out, model: score_argv(good_data(tmp), out, model)
        ),
        "evaluate-model-without-tokenizer": no_tokenizer(
            lambda tmp, out, model: evaluate_argv(good_data(tmp), out, model)
        ),
        "score-zero-workers": lambda tmp, out, m: (
            score_argv(good_data(tmp), out, m.ready, "--workers", "0"),
            r"--workers must be >= 1, got 0",
        ),
        "score-missing-model": lambda tmp, out, m: (
            score_argv(good_data(tmp), out, tmp / "no-model"),
            r"no such local model folder: .*no-model",
        ),
        "score-unknown-fields-preset": lambda tmp, out, m: (
            score_argv(good_data(tmp), out, m.ready, "--fields", "dolly15k"),
            r"unknown preset 'dolly15k' for --fields",
        ),
        "score-missing-id-column": lambda tmp, out, m: (
            score_argv(good_data(tmp), out, m.ready, "--id-field", "uid"),
            r"good\.jsonl: no column 'uid' \(named by --id-field\)",
        ),
        "score-empty-response": lambda tmp, out, m: (
            score_argv(
                write(tmp / "d.csv", csv_bytes([*GOOD_ROWS[:2], {**GOOD_ROWS[2], "output": " "}])),
                out,
                m.ready,
            ),
            r"d\.csv: row 2: column 'output' is empty.*--fields",
        ),
        "distill-bad-config-value": lambda tmp, out, m: (
            distill_argv(tmp, good_data(tmp), out, m, train__batch_size=0),
            r"batch_size",
        ),
        "distill-unknown-setting": lambda tmp, out, m: (
            distill_argv(tmp, good_data(tmp), out, m, train__lr=1e-4),
            r"unknown train setting\(s\) lr",
        ),
        "distill-bad-curation-value": lambda tmp, out, m: (
            distill_argv(tmp, good_data(tmp), out, m, curation={"lambda_a": 0.7}),
            r"lambda_a",
        ),
        "distill-missing-config": lambda tmp, out, m: (
            ["distill", "--config", str(tmp / "nope.yaml")],
            r"nope\.yaml does not exist",
        ),
        "distill-invalid-yaml": lambda tmp, out, m: (
            ["distill", "--config", str(write(tmp / "r.yaml", b"a: [\n"))],
            r"r\.yaml is not valid YAML",
        ),
        "distill-student-without-tokenizer": lambda tmp, out, m: (
            distill_argv(tmp, good_data(tmp), out, m, student=str(m.no_tokenizer)),
            rf"{re.escape(str(m.no_tokenizer))} holds no tokenizer",
        ),
        "evaluate-missing-data-root": lambda tmp, out, m: (
            [*evaluate_argv(good_data(tmp), out, m.ready), "--data-root", str(tmp / "nothing")],
            r"--data-root .*nothing: no such folder",
        ),
        "report-missing-run": lambda tmp, out, m: (
            ["report", str(tmp / "no-run"), "--out", str(out)],
            r"run folder .*no-run does not exist",
        ),
        "report-run-is-a-file": lambda tmp, out, m: (
            ["report", str(write(tmp / "run.txt", b"x")), "--out", str(out)],
            r"run\.txt does not exist \(or is not a folder\)",
        ),
    }
)


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under ``path`` with its bytes (None: nothing there)."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_input_is_one_line_with_nothing_left_behind(name, tmp_path, models, capfd):
    out = tmp_path / "out"
    argv, expected = CASES[name](tmp_path, out, models)
    before = snapshot(out)
    capfd.readouterr()  # what building the case printed is not the command's

    code = main([*argv, "--quiet"])

    captured = capfd.readouterr()
    lines = captured.err.splitlines()
    assert code != 0, captured.err
    assert len(lines) == 1, f"stderr is not one line:\n{captured.err}"
    assert "Traceback" not in captured.err + captured.out
    print(lines[0])  # the table's messages, for reading with pytest -s
    assert re.search(expected, lines[0]), lines[0]
    assert lines[0].startswith(f"spectrumkd {argv[0]}: error: ")
    assert snapshot(out) == before, "the command left something in --out"
