"""The five instruction-following sets of the MiniLLM protocol (paper appendix C.4).

Each set is a MiniLLM-format file: one row per example with ``instruction``, optional ``input``,
``output`` (a string, or a list of strings when there are several references, as in S-NI) and a
pre-rendered ``prompt``. Prompts are rebuilt with the paper's template
(:func:`spectrumkd.data.templates.render_instruction`, byte-identical to MiniLLM's ``prompt``
field on all five files here); rows whose ``prompt`` field differs are counted, so a file
rendered with another template is noticed rather than silently evaluated differently.

Ids are the zero-padded row number (an ``id`` column wins when there is one), the same scheme as
:func:`spectrumkd.data.load_examples`, so two runs on one file pair up example by example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrumkd.data.templates import render_instruction
from spectrumkd.io import read_jsonl


@dataclass(frozen=True)
class SuiteSpec:
    """Where a set lives under a data root and how it is labelled in tables."""

    name: str
    label: str
    path: str  # relative to the data root
    rows: int  # rows of the public file, a check that the right file was found
    note: str = ""


INSTRUCTION_SUITES: dict[str, SuiteSpec] = {
    spec.name: spec
    for spec in (
        SuiteSpec("dolly", "DollyEval", "minillm_eval/dolly/valid.jsonl", 500),
        SuiteSpec("selfinst", "SelfInst", "minillm_eval/self-inst/valid.jsonl", 242),
        SuiteSpec("vicuna", "VicunaEval", "minillm_eval/vicuna/valid.jsonl", 80),
        SuiteSpec("sni", "S-NI", "minillm_eval/sinst/11_/valid.jsonl", 1694),
        SuiteSpec(
            "unni_short",
            "UnNI-short",
            "minillm_eval/uinst_short/valid.jsonl",
            1050,
            note=(
                "1,050 Unnatural Instructions rows with 1-2 word outputs, not MiniLLM's 10k "
                "uinst/11_ set: not comparable with published UnNI numbers"
            ),
        ),
    )
}
INSTRUCTION_SUITE_NAMES: tuple[str, ...] = tuple(INSTRUCTION_SUITES)


@dataclass(frozen=True)
class EvalExample:
    """One evaluation prompt (fully rendered) and its reference answer(s)."""

    id: str
    prompt: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Suite:
    """A loaded set: its examples plus what the loader noticed about the file."""

    name: str
    label: str
    source: str
    examples: list[EvalExample]
    prompt_mismatches: int = 0  # rows whose own `prompt` field differs from the template
    note: str = ""

    def __len__(self) -> int:
        return len(self.examples)


def suite_spec(name: str) -> SuiteSpec:
    if name not in INSTRUCTION_SUITES:
        raise ValueError(
            f"unknown instruction suite {name!r}; choose from {', '.join(INSTRUCTION_SUITE_NAMES)}"
        )
    return INSTRUCTION_SUITES[name]


def suite_path(name: str, data_root: str | Path) -> Path:
    """The default file of suite ``name`` under ``data_root`` (e.g. ``../shared/data``)."""
    path = Path(data_root).expanduser() / suite_spec(name).path
    if not path.is_file():
        raise FileNotFoundError(
            f"{suite_spec(name).label} data not found at {path}; point --data-root at the folder "
            f"holding minillm_eval/ or give the file with --source {name}=FILE"
        )
    return path


def load_suite(
    name: str,
    data_root: str | Path | None = None,
    *,
    source: str | Path | None = None,
    split: str = "train",
    limit: int | None = None,
) -> Suite:
    """Load suite ``name`` from ``source`` (a file, dataset folder or hub dataset name) or, when
    ``source`` is None, from its default file under ``data_root``. ``limit`` keeps the first rows.
    """
    spec = suite_spec(name)
    if source is None:
        if data_root is None:
            raise ValueError(
                f"give data_root (the folder holding minillm_eval/) or source= for {name}"
            )
        source = suite_path(name, data_root)
    rows = load_rows(source, split=split)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        rows = rows[:limit]
    examples, mismatches = examples_from_rows(rows, where=str(source))
    return Suite(
        name=name,
        label=spec.label,
        source=str(source),
        examples=examples,
        prompt_mismatches=mismatches,
        note=spec.note,
    )


def load_rows(source: str | Path, *, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a JSONL file, or of anything :mod:`datasets` reads (via the data stage's loader).

    Local JSONL is read line by line rather than through ``datasets``: Arrow needs one type per
    column, and a file mixing string and list outputs must load as it is.
    """
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".jsonl":
        from spectrumkd.data import refuse_empty_file

        refuse_empty_file(path)  # zero rows would read as an evaluation of nothing
        return list(read_jsonl(path))
    # The data stage resolves files, folders and hub names with one-line errors.
    from spectrumkd.data.loading import load_dataset_split

    return load_dataset_split(source, split).to_list()


def examples_from_rows(
    rows: Sequence[Mapping[str, Any]], *, where: str = "data"
) -> tuple[list[EvalExample], int]:
    """Render MiniLLM-format rows; returns the examples and how many ``prompt`` fields differ."""
    examples: list[EvalExample] = []
    mismatches = 0
    seen: set[str] = set()
    for index, row in enumerate(rows):
        example_id = str(row["id"]) if row.get("id") is not None else f"{index:06d}"
        if example_id in seen:
            raise ValueError(
                f"{where}: row {index}: duplicate id {example_id!r}; ids must be unique"
            )
        seen.add(example_id)
        instruction = row.get("instruction")
        given_prompt = row.get("prompt")
        if isinstance(instruction, str) and instruction.strip():
            extra = row.get("input") or ""
            if not isinstance(extra, str):
                raise ValueError(
                    f"{where}: row {index}: 'input' holds {type(extra).__name__}, not text"
                )
            prompt = render_instruction(instruction, extra)
            if isinstance(given_prompt, str) and given_prompt != prompt:
                mismatches += 1
        elif isinstance(given_prompt, str) and given_prompt.strip():
            prompt = given_prompt  # a prompt-only file is taken as already rendered
        else:
            raise ValueError(
                f"{where}: row {index}: no 'instruction' (or 'prompt') text; MiniLLM-format rows "
                "need instruction, optional input, and output"
            )
        examples.append(EvalExample(example_id, prompt, _references(row, index, where)))
    return examples, mismatches


def _references(row: Mapping[str, Any], index: int, where: str) -> tuple[str, ...]:
    column = next((c for c in ("output", "response", "references") if c in row), None)
    if column is None:
        raise ValueError(f"{where}: row {index}: no 'output' column holding the reference answer")
    value = row[column]
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise ValueError(
            f"{where}: row {index}: {column!r} must be a string or a non-empty list of strings"
        )
    return tuple(refs)
