"""Cell bookkeeping: what each result file depends on, where it lies, whether it is done, stale,
partial or pending, which cells a ``--cell`` pattern selects, and the stamps a result carries
(machine, time, paths relative to the repository)."""

from __future__ import annotations

import fnmatch
import json
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from experiments.config import NOT_RESULT_SETTINGS, ROOT, SETUP, Cell, Experiment


def _plain(value: Any) -> Any:
    """JSON-shaped (tuples as lists), so that a setting compares equal to its stored copy."""
    return json.loads(json.dumps(value))


def setup_settings(exp: Experiment) -> dict[str, Any]:
    """What the setup's results depend on."""
    keys = ("teacher", "dtype", "device", "student", "heal", "data", "spectrumkd")
    test_keys = ("source", "limit", "max_prompt_tokens", "quality_max_length", "batch_size")
    return _plain(
        {
            **{k: exp.settings.get(k) for k in keys},
            "baseline_epochs": exp.baseline_epochs,
            "test": {k: exp.settings["test"].get(k) for k in test_keys},
        }
    )


def cell_settings(exp: Experiment, cell: Cell, *, with_rate: bool = True) -> dict[str, Any]:
    """What a cell's results depend on: every setting but paths, speed, the lists of objectives,
    seeds and ablations (its own objective and its ablation's changes are included; its seed and
    arm are in its name). Adding an ablation to the config leaves the finished cells current.
    With ``lr_selection``, the chosen learning rate too (None before ``lr.json`` exists)."""
    kept = {
        k: v
        for k, v in exp.settings.items()
        if k not in (*NOT_RESULT_SETTINGS, "objectives", "seeds", "ablations")
    }
    ablation = {"ablation": dict(cell.changes)} if cell.changes else {}
    rate = {}
    if with_rate and exp.lr_selection is not None:
        choice = read_result(exp.results_dir / "lr.json")
        rate = {"chosen_learning_rate": choice["learning_rate"] if choice else None}
    return _plain({**kept, "objective": cell.objective, **ablation, **rate})


# The learning-rate stage (lr_selection): one trial per rate of the grid (``lr-<rate>``), each
# the training of one baseline cell at that rate, and the choice (``lr.json``).
CHOICE = "lr"


def rate_tag(rate: float) -> str:
    return f"{rate:g}"


def trial_name(rate: float) -> str:
    return f"lr-{rate_tag(rate)}"


def trial_names(exp: Experiment) -> list[str]:
    return [trial_name(rate) for rate in exp.lr_selection.grid] if exp.lr_selection else []


def stage_names(exp: Experiment) -> list[str]:
    """The stage's pieces in run order: each rate's trial, then the choice."""
    return [*trial_names(exp), CHOICE] if exp.lr_selection else []


def trial_cell(exp: Experiment) -> Cell:
    """The baseline cell whose training the trials are."""
    assert exp.lr_selection is not None
    selection = exp.lr_selection
    return next(
        c
        for c in exp.cells()
        if c.arm == "baseline" and c.key == selection.objective and c.seed == selection.seed
    )


def trial_settings(exp: Experiment) -> dict[str, Any]:
    """What every trial depends on: the baseline cell's settings (the grid left out, so that the
    trials of a widened grid stay current)."""
    settings = cell_settings(exp, trial_cell(exp), with_rate=False)
    return _plain({**settings, "lr_selection": {**settings.get("lr_selection", {}), "grid": None}})


def choice_settings(exp: Experiment) -> dict[str, Any]:
    return _plain({**trial_settings(exp), "lr_selection": exp.settings["lr_selection"]})


def chosen_rate(exp: Experiment, needed_by: str) -> float:
    """The chosen learning rate; refused in one line while ``lr.json`` is missing."""
    choice = read_result(result_path(exp, CHOICE))
    if choice is None:
        raise ValueError(
            f"{needed_by} trains at the learning rate chosen on validation, and "
            f"{shown_path(result_path(exp, CHOICE))} does not exist yet: run "
            f"`experiments/run.py --profile {exp.profile} run --cell 'lr*'` first"
        )
    return float(choice["learning_rate"])


def trial_folder(exp: Experiment, rate: float) -> Path:
    return exp.runs_dir / trial_name(rate)


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, Mapping):
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): values}


def changed_settings(old: Any, new: Any) -> list[str]:
    a = _flat(old) if isinstance(old, Mapping) else {}  # a file without settings: all changed
    b = _flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


def result_path(exp: Experiment, name: str) -> Path:
    return exp.results_dir / f"{name}.json"


def read_result(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        # Results are written atomically, so this is a hand-edited or foreign file.
        raise ValueError(f"{path}: not valid JSON ({error.msg}); fix or delete it") from None


def expected_settings(exp: Experiment, name: str) -> dict[str, Any]:
    if name == SETUP:
        return setup_settings(exp)
    if name == CHOICE and exp.lr_selection is not None:
        return choice_settings(exp)
    if name in trial_names(exp):
        return trial_settings(exp)
    cell = next(c for c in exp.cells() if c.name == name)
    return cell_settings(exp, cell)


def status(exp: Experiment, name: str) -> tuple[str, str]:
    """(state, detail): done, stale (finished with other settings), partial or pending."""
    result = read_result(result_path(exp, name))
    if result is not None:
        changed = changed_settings(result.get("settings"), expected_settings(exp, name))
        if changed:
            return "stale", f"computed with other {', '.join(changed[:4])}"
        seconds = result.get("wall_time_s", {}).get("total")
        return "done", f"{result.get('finished_at', '')} ({duration_text(seconds)})"
    state_file = exp.runs_dir / name / "checkpoint" / "trainer_state.json"
    if name != SETUP and state_file.is_file():
        state = json.loads(state_file.read_text(encoding="utf-8"))
        return "partial", f"checkpoint after epoch {state['epoch']}, step {state['step']}"
    if name == SETUP and exp.setup_dir.is_dir():
        return "partial", f"{shown_path(exp.setup_dir)} holds finished steps"
    return "pending", ""


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def shown_path(path: Path) -> str:
    """A path as committed files show it: relative to the repository root when inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def relative_paths(values: Any) -> Any:
    """Absolute paths inside the repository written relative to it, so committed result files
    do not carry this machine's layout."""
    if isinstance(values, Mapping):
        return {k: relative_paths(v) for k, v in values.items()}
    if isinstance(values, list):
        return [relative_paths(v) for v in values]
    if isinstance(values, str) and values.startswith(str(ROOT) + os.sep):
        return values[len(str(ROOT)) + 1 :]
    return values


def all_names(exp: Experiment) -> list[str]:
    """Every piece in run order: the setup, the learning-rate stage (if any), the cells."""
    return [SETUP, *stage_names(exp), *(cell.name for cell in exp.cells())]


def cells_table(exp: Experiment) -> str:
    names = all_names(exp)
    width = max(len(n) for n in names)
    lines = [f"profile {exp.profile}; results in {shown_path(exp.results_dir)}"]
    for name in names:
        state, detail = status(exp, name)
        lines.append(f"{name:<{width}}  {state:<8} {detail}".rstrip())
    return "\n".join(lines)


def select(names: Sequence[str], patterns: Sequence[str] | None) -> list[str]:
    """Cells whose name matches any pattern (fnmatch globs), in the matrix's order."""
    if not patterns:
        return list(names)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ValueError(
                f"no cell matches {pattern!r}; cells: {', '.join(names[:4])}, ... "
                "(see `run.py cells`)"
            )
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def machine() -> dict[str, Any]:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
