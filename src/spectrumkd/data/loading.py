"""Load prompt/response pairs from local files, saved datasets, the hub or the embedded Dolly split.

Every source ends up as a list of :class:`Example` with the prompt already rendered, so scoring,
curation and distillation never need to know which column layout or template the data came in.
Bad rows raise with their index instead of being skipped: silently dropping training data would
change the difficulty spectrum the curation step sees.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from spectrumkd.data.templates import (
    TEMPLATES,
    render_chat,
    render_code,
    render_instruction,
    render_math,
)
from spectrumkd.io import read_jsonl

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
PRESETS = ("dolly", "alpaca", "prompt_response", "query_response", "messages")
EMBEDDED_SOURCES = ("embedded:dolly",)

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Suffixes that mark a string as a file name even when the file is missing; anything else without
# a leading "./", "/" or "~" may be a hub id such as "teknium/OpenHermes-2.5".
_FILE_LIKE_SUFFIXES = frozenset(
    {*SUPPORTED_SUFFIXES, ".txt", ".tsv", ".gz", ".zip", ".arrow", ".xlsx", ".xls", ".jsonl.gz"}
)
_RESPONSE_COLUMNS = ("response", "output", "completion")
_SCALAR_TYPES = (str, int, float, bool)
_FORMATS = {".jsonl": "JSON Lines", ".json": "JSON", ".parquet": "Parquet", ".csv": "CSV"}

# Where a message names the option that fixes it; see OptionError.
OPTION = "\0"


class OptionError(ValueError):
    """A data problem that an option of :func:`load_examples` fixes (``fields``, ``id_field``).

    ``str()`` names the option as the Python argument (``fields=``); another interface names it
    its own way with :meth:`spelled` (the CLI: ``--fields``, a run config: ``data.fields``).
    """

    def __init__(self, template: str, option: str, python_hint: str = "") -> None:
        self.template, self.option = template, option
        super().__init__(self.spelled(f"{option}=") + python_hint)

    def spelled(self, name: str) -> str:
        """The message with the option written as ``name``."""
        return self.template.replace(OPTION, name)


@dataclass(frozen=True)
class Example:
    """One training or evaluation pair; ``prompt`` is the fully rendered model input."""

    id: str
    prompt: str
    response: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FieldMap:
    """Which columns hold what.

    Exactly one prompt source is used, in this order: ``messages`` (a chat list whose last
    assistant turn is the response; ``response`` then names that same column), ``instruction``
    (plus optional ``input``), or ``prompt`` (raw prompt text).
    """

    instruction: str | None
    input: str | None
    response: str
    prompt: str | None = None
    messages: str | None = None


def embedded_dolly_path() -> Path:
    """The packaged 1,000-row Dolly dev split (MiniLLM processing, CC BY-SA 3.0)."""
    path = Path(str(resources.files("spectrumkd.data") / "embedded" / "dolly_dev.jsonl"))
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded Dolly data is missing from the installed package: {path}"
        )
    return path


def load_examples(
    source: str | Path,
    *,
    fields: str | FieldMap | None = None,
    template: str = "instruction",
    tokenizer: Any = None,
    split: str = "train",
    id_field: str | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Load ``source`` and render every row into an :class:`Example`.

    ``source`` is a .jsonl/.json/.parquet/.csv file, a folder (``save_to_disk`` output or any
    folder ``datasets.load_dataset`` understands), ``"embedded:dolly"``, or a hub dataset name.
    ``fields`` is a preset name (see :data:`PRESETS`), a :class:`FieldMap`, or ``None`` to infer
    the layout from the column names. ``template`` is one of :data:`TEMPLATES`; chat data and
    ``template="chat"`` need ``tokenizer``.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")

    dataset = load_dataset_split(source, split)
    where = str(source)
    columns = list(dataset.column_names)
    fmap = _resolve_fields(fields, columns, where)
    if fmap.messages is not None and tokenizer is None:
        raise ValueError(
            f"column {fmap.messages!r} holds chat messages, which are rendered with the tokenizer's "
            "chat template; pass tokenizer="
        )
    if template == "chat" and fmap.messages is None and tokenizer is None:
        raise ValueError(
            "template='chat' renders prompts with the tokenizer's chat template; pass tokenizer="
        )
    if id_field is not None and id_field not in columns:
        raise OptionError(
            f"{where}: no column {id_field!r} (named by {OPTION}); columns are {columns}",
            "id_field",
        )

    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    rows = dataset.to_list()

    used = {fmap.instruction, fmap.input, fmap.response, fmap.prompt, fmap.messages, id_field}
    # A MiniLLM-style pre-rendered "prompt" column duplicates what the template rebuilds.
    used.add("prompt")
    examples = []
    seen_ids: dict[str, int] = {}
    for index, row in enumerate(rows):
        example_id = f"{index:06d}" if id_field is None else str(row[id_field])
        if example_id in seen_ids:
            raise ValueError(
                f"duplicate id {example_id!r} in column {id_field!r} (rows {seen_ids[example_id]} "
                f"and {index}); ids must be unique"
            )
        seen_ids[example_id] = index
        prompt, response = _render_row(row, f"{where}: row {index}", fmap, template, tokenizer)
        meta = {
            key: value
            for key, value in row.items()
            if key not in used and (value is None or isinstance(value, _SCALAR_TYPES))
        }
        examples.append(Example(id=example_id, prompt=prompt, response=response, meta=meta))
    return examples


def load_dataset_split(source: str | Path, split: str) -> Any:
    """One split of a file, folder, saved dataset, hub name or embedded source, as a
    ``datasets.Dataset``."""
    # Imported here because `datasets` takes about a second to import and most of the package
    # (templates, tokenisation of in-memory examples) does not need it.
    import datasets

    if isinstance(source, str) and source.startswith("embedded:"):
        if source not in EMBEDDED_SOURCES:
            raise ValueError(
                f"unknown embedded source {source!r}; available: {', '.join(EMBEDDED_SOURCES)}"
            )
        return _slice_file(_load_file(embedded_dolly_path()), split, source)

    path = Path(source).expanduser()
    if path.is_file() or path.is_dir():
        if path.is_file():
            dataset = _slice_file(_load_file(path), split, str(path))
        else:
            dataset = _load_folder(path, split)
        if len(dataset) == 0:
            raise ValueError(f"{path} holds no rows; give data with at least one example")
        return dataset
    text = str(source)
    if isinstance(source, Path) or _looks_like_path(text):
        raise FileNotFoundError(f"no such data file or folder: {text}")

    try:
        return datasets.load_dataset(text, split=split)
    except Exception as error:  # the hub client raises many unrelated types; report them as one
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{text!r} is neither a local file or folder nor a reachable Hugging Face hub dataset "
            f"(split {split!r}): {detail}"
        ) from error


def _slice_file(dataset: Any, split: str, where: str) -> Any:
    """A single file's rows for ``split``: all of them for ``"train"`` (its only split), or a
    Hugging Face slice of them such as ``"train[600:]"``, ``"train[:10%]"`` or
    ``"train[:100]+train[-100:]"`` (the rows in the slice's order)."""
    if split == "train":
        return dataset
    import datasets

    try:
        spans = datasets.ReadInstruction.from_spec(split).to_absolute({"train": len(dataset)})
    except (ValueError, KeyError, AssertionError):
        spans = None
    if spans is None or any(span.splitname != "train" for span in spans):
        raise ValueError(
            f"{where}: split {split!r} is not 'train' or a slice of it; a single file has only "
            "the split 'train': give split 'train' or a slice such as 'train[600:]'"
        )
    indices = [i for span in spans for i in range(span.from_, span.to)]
    if not indices:
        raise ValueError(
            f"{where}: split {split!r} selects no rows of its {len(dataset)}; give a slice "
            "that holds some"
        )
    return dataset.select(indices)


def _looks_like_path(text: str) -> bool:
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        return True
    name = text.rsplit("/", 1)[-1].lower()
    return any(name.endswith(suffix) for suffix in _FILE_LIKE_SUFFIXES)


def _load_file(path: Path) -> Any:
    import datasets

    suffix = path.suffix.lower()
    if suffix not in _BUILDERS:
        raise ValueError(
            f"unsupported file type {path.suffix or '(no suffix)'!r} for {path}; supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)}"
        )
    refuse_empty_file(path)  # datasets would fail on it with a bare StopIteration
    try:
        with _datasets_errors_unlogged():
            kwargs: dict[str, Any] = {}
            if suffix == ".csv":
                # CSV carries no types: pandas would turn a response "42" into an int and "NA"
                # into None, so read every column as a string and keep empty cells as "".
                with path.open(newline="", encoding="utf-8") as handle:
                    header = next(csv.reader(handle), [])
                kwargs["features"] = datasets.Features(
                    {name: datasets.Value("string") for name in header}
                )
                kwargs["keep_default_na"] = False
            dataset = datasets.load_dataset(
                _BUILDERS[suffix], data_files=str(path), split="train", **kwargs
            )
            _check_text(dataset)
    except Exception as error:  # datasets, pyarrow and pandas each raise their own types
        raise ValueError(_what_is_wrong(path, error)) from error
    return dataset


def _load_folder(path: Path, split: str) -> Any:
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(
                    f"split {split!r} not in {path}; available splits: {', '.join(loaded)}"
                )
            return loaded[split]
        return loaded
    try:
        with _datasets_errors_unlogged():
            dataset = datasets.load_dataset(str(path), split=split)
            _check_text(dataset)
    except Exception as error:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _BUILDERS)
        if not files:
            raise ValueError(
                f"{path} holds no data files ({', '.join(SUPPORTED_SUFFIXES)}) and is not a "
                "saved dataset (save_to_disk); give a data file or a dataset folder"
            ) from error
        for file in files:  # the first malformed file, reported as it would be on its own
            problem = _file_problem(file)
            if problem is not None:
                raise ValueError(problem) from error
        raise ValueError(
            f"{path}: datasets could not load this folder ({_root_cause(error)})"
        ) from error
    return dataset


@contextmanager
def _datasets_errors_unlogged() -> Iterator[None]:
    # datasets logs a parse failure before raising it; the error is reported as one line, and
    # the logged copy would only repeat it in other words on stderr.
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_text(dataset: Any) -> None:
    # pyarrow's JSON reader stores bytes as they are: bad UTF-8 would surface only when a row is
    # read, as a UnicodeDecodeError without a file name. A full validation finds it now.
    dataset.data.validate(full=True)


def _is_blank(path: Path) -> bool:
    return _first_byte(path) == b""


def _empty(path: Path) -> str:
    kind = _FORMATS.get(path.suffix.lower(), "data")
    return f"{path} is empty; give a {kind} file with at least one row"


def refuse_empty_file(path: str | Path) -> None:
    """Raise the one-line error of an empty (or whitespace-only) data file, for readers that
    would otherwise take it as zero rows."""
    if _is_blank(Path(path)):
        raise ValueError(_empty(Path(path)))


def _what_is_wrong(path: Path, error: BaseException) -> str:
    """One line saying why ``datasets`` could not load ``path``, found by reading it plainly."""
    if path.suffix.lower() == ".parquet":
        return (
            f"{path} is not a Parquet file datasets can read ({_root_cause(error)}); "
            "write it again or give another file"
        )
    problem = _file_problem(path)
    if problem is not None:
        return problem
    return (
        f"{path}: datasets could not read it as {_FORMATS[path.suffix.lower()]} "
        f"({_root_cause(error)}); check the file"
    )


def _file_problem(path: Path) -> str | None:
    """What makes ``path`` unreadable as data (empty, bad UTF-8, bad JSON, no rows), if found."""
    if _is_blank(path):
        return _empty(path)
    problem = _malformed_text(path)
    if problem is None and path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))[1:]
        if not any(any(cell.strip() for cell in row) for row in rows):
            return f"{path} holds no rows, only a header; give a CSV file with at least one row"
    return problem


def _malformed_text(path: Path) -> str | None:
    """The first line of ``path`` that is not UTF-8 (any text format) or not JSON (JSON
    formats), or a JSON document that holds no rows; None when none is found."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_problem(path)
    if suffix not in (".json", ".csv"):
        return None
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return (
                    f"{path}:{number}: not valid UTF-8 (byte {raw[error.start]:#04x} at column "
                    f"{error.start + 1}); save the file as UTF-8"
                )
    if suffix != ".json":
        return None
    try:  # datasets reads a .json file as one document or as JSON Lines
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        if _first_byte(path) != b"[":
            return _jsonl_problem(path)
        return f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg}); fix the file"
    if not document:
        return f"{path} holds no rows; give a JSON list with at least one row"
    return None


def _jsonl_problem(path: Path) -> str | None:
    try:
        for _ in read_jsonl(path):  # names the line of bad UTF-8 or bad JSON
            pass
    except ValueError as error:
        return str(error)
    return None


def _first_byte(path: Path) -> bytes:
    """The first byte of ``path`` that is not whitespace (b"" for a blank file)."""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 16):
            if chunk.strip():
                return chunk.lstrip()[:1]
    return b""


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost error (``DatasetGenerationError`` says only that one
    happened)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _resolve_fields(fields: str | FieldMap | None, columns: list[str], where: str) -> FieldMap:
    if isinstance(fields, FieldMap):
        fmap = fields
    elif fields is None:
        preset = _detect_preset(columns)
        if preset is None:
            raise OptionError(
                f"{where}: cannot tell which columns hold the prompt and the response; columns "
                f"are {columns}. Pass {OPTION} one of {', '.join(PRESETS)}",
                "fields",
                python_hint=" or a FieldMap",
            )
        fmap = _preset(preset, columns, where)
    elif fields in PRESETS:
        fmap = _preset(fields, columns, where)
    else:
        raise OptionError(
            f"unknown preset {fields!r} for {OPTION}; choose one of {', '.join(PRESETS)}",
            "fields",
            python_hint=" or pass a FieldMap",
        )

    if fmap.messages is None and fmap.instruction is None and fmap.prompt is None:
        raise ValueError(
            "FieldMap needs one of messages=, instruction= or prompt= to build prompts from"
        )
    named = [fmap.instruction, fmap.input, fmap.response, fmap.prompt, fmap.messages]
    missing = [name for name in named if name is not None and name not in columns]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} not found; columns are {columns}")
    return fmap


def _detect_preset(columns: list[str]) -> str | None:
    if "messages" in columns:
        return "messages"
    if "instruction" in columns and ("response" in columns or "output" in columns):
        # databricks-dolly-15k spells its columns context/response, Alpaca and the MiniLLM files
        # input/output; both presets map the latter identically.
        return "dolly" if "context" in columns or "response" in columns else "alpaca"
    if "prompt" in columns and any(name in columns for name in _RESPONSE_COLUMNS):
        return "prompt_response"
    if "query" in columns and "response" in columns:  # MetaMathQA
        return "query_response"
    return None


def _first(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((name for name in candidates if name in columns), None)


def _preset(name: str, columns: list[str], where: str) -> FieldMap:
    def need(column: str | None, what: str) -> str:
        if column is None:
            raise OptionError(
                f"{where}: preset {name!r} of {OPTION} needs {what}; columns are {columns}",
                "fields",
            )
        return column

    if name == "dolly":
        return FieldMap(
            instruction=need(_first(columns, ("instruction",)), "an 'instruction' column"),
            input=_first(columns, ("context", "input")),
            response=need(
                _first(columns, ("response", "output")), "a 'response' or 'output' column"
            ),
        )
    if name == "alpaca":
        return FieldMap(
            instruction=need(_first(columns, ("instruction",)), "an 'instruction' column"),
            input=_first(columns, ("input",)),
            response=need(_first(columns, ("output",)), "an 'output' column"),
        )
    if name == "prompt_response":
        return FieldMap(
            instruction=None,
            input=None,
            prompt=need(_first(columns, ("prompt",)), "a 'prompt' column"),
            response=need(
                _first(columns, _RESPONSE_COLUMNS), "a 'response', 'output' or 'completion' column"
            ),
        )
    if name == "query_response":
        return FieldMap(
            instruction=need(_first(columns, ("query",)), "a 'query' column"),
            input=None,
            response=need(_first(columns, ("response",)), "a 'response' column"),
        )
    column = need(_first(columns, ("messages",)), "a 'messages' column")
    return FieldMap(instruction=None, input=None, response=column, messages=column)


def _render_row(
    row: Mapping[str, Any], at: str, fmap: FieldMap, template: str, tokenizer: Any
) -> tuple[str, str]:
    if fmap.messages is not None:
        return _render_messages(row[fmap.messages], at, fmap.messages, tokenizer)

    response = _required_text(row, at, fmap.response)
    if fmap.instruction is not None:
        instruction = _required_text(row, at, fmap.instruction)
        extra = _optional_text(row, at, fmap.input)
        if template == "instruction":
            return render_instruction(instruction, extra), response
        text = instruction + "\n\n" + extra if extra else instruction
    else:
        text = _required_text(row, at, fmap.prompt)  # type: ignore[arg-type]
        if template == "instruction":
            return render_instruction(text), response

    if template == "math":
        return render_math(text), response
    if template == "code":
        return render_code(text), response
    if template == "chat":
        return render_chat(tokenizer, [{"role": "user", "content": text}]), response
    return text, response


def _required_text(row: Mapping[str, Any], at: str, column: str) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise OptionError(
            f"{at}: column {column!r} is empty; drop the row or map another column with {OPTION}",
            "fields",
        )
    if not isinstance(value, str):
        raise OptionError(
            f"{at}: column {column!r} holds {type(value).__name__}, not text; map another "
            f"column with {OPTION}",
            "fields",
        )
    return value


def _optional_text(row: Mapping[str, Any], at: str, column: str | None) -> str:
    if column is None:
        return ""
    value = row.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{at}: column {column!r} holds {type(value).__name__}, not text")
    return value


def _render_messages(messages: Any, at: str, column: str, tokenizer: Any) -> tuple[str, str]:
    if isinstance(messages, str):
        # Some exports store the chat list as a JSON string column.
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise ValueError(f"{at}: column {column!r} is text, not a list of messages") from None
    if not isinstance(messages, list) or not all(
        isinstance(turn, Mapping) and "role" in turn and "content" in turn for turn in messages
    ):
        raise ValueError(f"{at}: column {column!r} must be a list of {{role, content}} messages")
    last = max((i for i, turn in enumerate(messages) if turn["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError(f"{at}: column {column!r} has no assistant turn to use as the response")
    response = messages[last]["content"]
    if not isinstance(response, str) or not response.strip():
        raise ValueError(
            f"{at}: column {column!r} last assistant turn is empty; drop the row or fix the data"
        )
    if last == 0:
        raise ValueError(f"{at}: column {column!r} has no turn before the assistant reply")
    history = [{"role": turn["role"], "content": turn["content"]} for turn in messages[:last]]
    return render_chat(tokenizer, history), response
