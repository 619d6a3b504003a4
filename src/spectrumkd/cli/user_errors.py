"""What a user can fix: the errors ``spectrumkd`` prints as one line, and the checks of an
output folder that refuse (or clean up after) a run before it has done any work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Errors a user can fix get one line; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FloatingPointError,
    OSError,
)  # ModelLoadError is an OSError

# Commands whose --out is a file, not a folder.
OUT_IS_A_FILE = frozenset({"compare"})


def check_out_folder(path: str | Path, name: str = "--out") -> None:
    """Refuse an output folder that is a file or lies inside one, before any work is done
    (creating it would fail later with a bare ``[Errno 17]`` or ``[Errno 20]``)."""
    path = Path(path).expanduser()
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return
        if candidate.exists():
            where = f"{name} {path}" if candidate == path else f"{name} {path}: {candidate}"
            raise ValueError(f"{where} is a file, not a folder; give a folder path for {name}")


@contextmanager
def no_folder_left_if_refused(output_dir: str | Path) -> Iterator[None]:
    """Remove the run folder this command created when the run is refused before it begins.

    ``distill`` records ``run_config.yaml`` before it loads the models and the data; a run
    refused there (a bad data file, a model without a tokenizer) leaves no folder behind, as
    the other commands leave none. A folder holding anything more is a run's work: it stays.
    """
    out = Path(output_dir).expanduser()
    created = next((p for p in (*reversed(out.parents), out) if not p.exists()), None)
    try:
        yield
    except USER_ERRORS:
        unstarted = out.is_dir() and [p.name for p in out.iterdir()] == ["run_config.yaml"]
        if created is not None and unstarted:
            (out / "run_config.yaml").unlink()
            for folder in (out, *out.parents):  # up to the first that did not exist before
                try:
                    folder.rmdir()
                except OSError:  # something else now lives there: not ours to remove
                    break
                if folder == created:
                    break
        raise


def option_name(command: str, option: str) -> str:
    """How ``command``'s user sets the :func:`~spectrumkd.data.load_examples` argument
    ``option``: a flag, or a field of the run config for ``distill``."""
    if command == "distill":
        return f"data.{option}"
    return "--" + option.replace("_", "-")
