"""The answers judged: the generation runs of two evaluation folders (``OUT/<set>/<run>.jsonl``,
as ``spectrumkd evaluate`` writes them), paired by id, with the question of each id from the
instruction set's data file."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spectrumkd.io import read_jsonl

_RUN_FILE = re.compile(r"^(seed(\d+)|greedy)\.jsonl$")


def run_files(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the generation runs (``seed<k>.jsonl``, ``greedy.jsonl``) in a set's
    folder."""
    if not folder.is_dir():
        return {}
    return {
        match.group(1): path
        for path in sorted(folder.iterdir())
        if (match := _RUN_FILE.match(path.name)) and path.is_file()
    }


def choose_run(student_set: Path, reference_set: Path, run: str | None = None) -> str:
    """The generation run judged: ``run`` when given, else ``greedy`` when both folders have it,
    else the lowest seed both have (one sample per question, as one judged answer each)."""
    mine, theirs = run_files(student_set), run_files(reference_set)
    common = sorted(set(mine) & set(theirs))
    if run is not None:
        if run not in common:
            raise FileNotFoundError(
                f"run {run!r} is not in both {student_set} ({', '.join(sorted(mine)) or 'none'}) "
                f"and {reference_set} ({', '.join(sorted(theirs)) or 'none'})"
            )
        return run
    if not common:
        raise FileNotFoundError(
            f"no generation run common to {student_set} ({', '.join(sorted(mine)) or 'none'}) "
            f"and {reference_set} ({', '.join(sorted(theirs)) or 'none'})"
        )
    if "greedy" in common:
        return "greedy"
    return min(common, key=lambda stem: int(stem[4:]))


def read_answers(path: Path) -> dict[str, dict[str, Any]]:
    """``{id: row}`` of a generation run file, refusing duplicate ids and rows without text."""
    rows: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        example_id = row.get("id")
        if example_id is None or not isinstance(row.get("prediction"), str):
            raise ValueError(f"{path}:{number}: a run row needs 'id' and a 'prediction' string")
        if str(example_id) in rows:
            raise ValueError(f"{path}:{number}: duplicate id {example_id!r}")
        rows[str(example_id)] = row
    return rows


def shorten_ids(ids: Iterable[str], limit: int = 5) -> str:
    ids = sorted(ids)
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def pair_answers(
    student: Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, Mapping[str, Any]],
    *,
    where: str,
) -> list[str]:
    """The common ids in the student's file order; any id in only one file is an error."""
    only_student = set(student) - set(reference)
    only_reference = set(reference) - set(student)
    if only_student or only_reference:
        parts = []
        if only_student:
            parts.append(f"missing from the reference answers: {shorten_ids(only_student)}")
        if only_reference:
            parts.append(f"missing from the student answers: {shorten_ids(only_reference)}")
        raise ValueError(
            f"{where}: the two answer sets cover different examples; {'; '.join(parts)}"
        )
    return list(student)


def question_text(row: Mapping[str, Any], prompt: str) -> str:
    """What the judge reads as the user's request: the instruction and its input, without the
    evaluation template's preamble (the prompt itself for a prompt-only file)."""
    instruction = row.get("instruction")
    if isinstance(instruction, str) and instruction.strip():
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip():
            return f"{instruction.strip()}\n\nInput:\n{extra.strip()}"
        return instruction.strip()
    return prompt


def load_questions(
    name: str, data_root: str | Path | None, source: str | Path | None = None
) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{id: (question, references)}`` of an instruction set, with the ids the evaluation
    stage gives (its loader's)."""
    from spectrumkd.evaluation.instruction.suites import examples_from_rows, load_rows, suite_path

    if source is None:
        if data_root is None:
            raise ValueError(f"{name}: give a data root (the folder holding minillm_eval/)")
        source = suite_path(name, data_root)
    rows = load_rows(source)
    examples, _ = examples_from_rows(rows, where=str(source))
    return {
        example.id: (question_text(row, example.prompt), example.references)
        for example, row in zip(examples, rows, strict=True)
    }
