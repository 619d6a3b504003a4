"""Tolerant readers of a run folder: whatever exists is read, whatever is missing is named.

A report is most useful while a run is still going (a spectrum only, a training epoch half
done) or after it was killed, so nothing here raises on a missing, empty or truncated file.
Each problem becomes one line in :attr:`RunData.notes` instead, and the page shows it.

The layouts read (see ``spectrumkd.jobs``, ``spectrumkd.demo`` and the trainer):

- scoring: ``difficulties.jsonl`` and ``spectrum.jsonl`` in the run folder or ``scores/``;
- curation: ``schedule.json`` and ``spectrum.jsonl`` in the run folder or ``curation/``; a
  curated training run holds the plan it trained on (``spectrumkd distill`` and the demo write
  it there before training), and a run's epoch total is that plan's;
- training: ``metrics.jsonl`` (step rows with ``ce``, epoch rows with ``val_ce``),
  ``checkpoint/trainer_state.json``, ``best/`` and ``final/`` model folders, ``run_config.yaml``;
- evaluation: an ``eval/`` or ``evaluation/`` folder with ``summary.json`` and one folder per
  set (``seed<k>.jsonl``, ``quality.jsonl``, ``summary.json``);
- comparisons: ``compare*.json`` / ``comparison*.json`` in the run or evaluation folder.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCORE_DIRS = ("", "scores")  # where a difficulty table may live, relative to the run folder
CURATION_DIRS = ("", "curation", "scores")  # schedule.json / spectrum.jsonl, first found wins
EVAL_DIRS = ("eval", "evaluation", "evals")
ZONE_NAMES = ("early", "continuous", "late", "excluded")


@dataclass
class JsonlRead:
    """Rows of a JSONL file and what could not be read: a half-written last line (a writer
    still appending, or killed) is expected and reported as ``truncated``; a bad line elsewhere
    is corruption and counted in ``bad_lines``."""

    rows: list[dict[str, Any]]
    truncated: bool = False
    bad_lines: int = 0


def read_jsonl_tolerant(path: Path) -> JsonlRead | None:
    """``None`` when the file does not exist or cannot be opened."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    lines = text.split("\n")
    rows: list[dict[str, Any]] = []
    truncated, bad = False, 0
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            # The last non-empty line without its newline is a row being written right now.
            if number == last and not text.endswith("\n"):
                truncated = True
            else:
                bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return JsonlRead(rows, truncated, bad)


def read_json_tolerant(path: Path) -> tuple[Any, str | None]:
    """(value, None), or (None, why) when the file is missing or not valid JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except OSError as error:
        return None, f"{path.name}: cannot be read ({error.strerror or error})"
    except UnicodeDecodeError:  # cut inside a multi-byte character
        return None, f"{path.name}: not valid UTF-8 (cut short?); skipped"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        return None, f"{path.name}: not valid JSON ({error.msg} at line {error.lineno}); skipped"


def as_number(value: Any) -> float | None:
    """A finite float, or None for anything else (strings, None, NaN, booleans)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class SpectrumData:
    """Difficulties in rank order (ascending) and the 1-based inclusive rank range of each zone
    that is known (from the spectrum rows or from ``schedule.json``)."""

    difficulties: np.ndarray
    zones: dict[str, tuple[int, int]]
    source: str


@dataclass
class EvalSet:
    """One evaluation set: its metrics (means over seeds, or the set's own summary) and, for
    generation sets, the mean ROUGE-L of each generation run (``seed10``..., or ``greedy``)."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    label: str | None = None  # the display name the evaluation stage gives, e.g. DollyEval
    per_run: dict[str, float] = field(default_factory=dict)


@dataclass
class RunData:
    """Everything a report can show about one run folder; ``None`` or empty means "not there"."""

    run_dir: Path
    difficulties: np.ndarray | None = None  # dataset order, the values the spectrum sorts
    difficulty_source: str | None = None
    spectrum: SpectrumData | None = None
    schedule: dict[str, Any] | None = None
    schedule_source: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)  # training step rows
    epochs: list[dict[str, Any]] = field(default_factory=list)  # validation rows per epoch
    plan_updates: list[dict[str, Any]] = field(default_factory=list)  # a dynamic plan's (DDK)
    trainer_state: dict[str, Any] | None = None
    alpha: float | None = None
    alpha_source: str | None = None
    has_best: bool = False
    has_final: bool = False
    facts: dict[str, str] = field(default_factory=dict)  # short run description for the page
    eval_sets: list[EvalSet] = field(default_factory=list)
    eval_source: str | None = None
    comparisons: list[tuple[str, Any]] = field(default_factory=list)  # (file name, JSON)
    notes: dict[str, list[str]] = field(default_factory=dict)  # section -> missing/broken

    def note(self, section: str, message: str) -> None:
        self.notes.setdefault(section, []).append(message)

    @property
    def objective(self) -> str | None:
        """The KD objective the run trained with (``forward_kl``, ``jsd``, ...), if recorded."""
        config = (self.trainer_state or {}).get("config")
        objective = config.get("objective") if isinstance(config, dict) else None
        return objective if isinstance(objective, str) else self.facts.get("objective")

    @property
    def strategy(self) -> str | None:
        """The plan the trainer followed (``baseline``, ``spectrumkd``, ...), if recorded."""
        strategy = (self.trainer_state or {}).get("strategy")
        return strategy if isinstance(strategy, str) else None

    @property
    def planned_epochs(self) -> int | None:
        """The run's own epoch count: its plan's, or for a baseline run the configured epochs.
        A curated run's configured ``epochs`` is the baseline's, not its plan's (the demo and
        the step-parity runs train a curriculum for more epochs than that), so it never counts
        as a curated run's total; without its schedule.json the total is unknown."""
        if self.schedule and isinstance(self.schedule.get("epochs"), list):
            return len(self.schedule["epochs"])
        if self.strategy not in (None, "baseline"):
            return None
        config = (self.trainer_state or {}).get("config")
        epochs = config.get("epochs") if isinstance(config, dict) else None
        return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _first_existing(root: Path, folders: tuple[str, ...], name: str) -> Path | None:
    for folder in folders:
        path = root / folder / name if folder else root / name
        if path.is_file():
            return path
    return None


def _describe_jsonl(read: JsonlRead, name: str) -> list[str]:
    notes = []
    if read.truncated:
        notes.append(f"{name}: the last line is incomplete (still being written?); ignored")
    if read.bad_lines:
        notes.append(f"{name}: {read.bad_lines} line(s) are not JSON rows; ignored")
    return notes


def _difficulty_rows(rows: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    ids, values = [], []
    for row in rows:
        value = as_number(row.get("difficulty"))
        if value is not None:
            ids.append(str(row.get("id", len(ids))))
            values.append(value)
    return ids, np.asarray(values, dtype=np.float64)


def _zones_from_rows(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Rank range of each zone named in rank-ordered spectrum rows."""
    zones: dict[str, tuple[int, int]] = {}
    for position, row in enumerate(rows, start=1):
        zone = row.get("zone")
        if zone not in ZONE_NAMES:
            continue
        start, _ = zones.get(zone, (position, position))
        zones[zone] = (start, position)
    return zones


def _zones_from_schedule(schedule: dict[str, Any]) -> dict[str, tuple[int, int]]:
    zones = {}
    for name, zone in (schedule.get("zones") or {}).items():
        if name in ZONE_NAMES and isinstance(zone, dict):
            start, end = zone.get("start_rank"), zone.get("end_rank")
            if isinstance(start, int) and isinstance(end, int) and start <= end:
                zones[name] = (start, end)
    return zones


def _read_rows(run: RunData, path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    read = read_jsonl_tolerant(path)
    if read is None:
        return []
    for message in _describe_jsonl(read, _relative(path, run.run_dir)):
        run.note("Difficulties", message)
    return read.rows


def _read_scoring(run: RunData) -> None:
    """The spectrum file holds every difficulty and the zones, so the difficulty table is read
    only without one: at a million examples each JSONL costs seconds to parse."""
    root = run.run_dir
    spectrum_path = _first_existing(root, CURATION_DIRS, "spectrum.jsonl")
    rows = _read_rows(run, spectrum_path)
    _, values = _difficulty_rows(rows)
    if values.size and spectrum_path is not None:
        source = _relative(spectrum_path, root)
        # Rows are written in rank order; sort anyway so a hand-made file still plots.
        order = np.argsort(values, kind="stable")
        zones = _zones_from_rows([rows[i] for i in order])
        run.spectrum = SpectrumData(values[order], zones, source)
        run.difficulties, run.difficulty_source = values, source
        return
    table_path = _first_existing(root, SCORE_DIRS, "difficulties.jsonl")
    _, values = _difficulty_rows(_read_rows(run, table_path))
    if values.size and table_path is not None:
        run.difficulties, run.difficulty_source = values, _relative(table_path, root)
        # A score folder without spectrum.jsonl: the sorted losses are still a spectrum.
        run.spectrum = SpectrumData(np.sort(values), {}, run.difficulty_source)
        return
    run.note(
        "Difficulties",
        "no difficulty table (difficulties.jsonl or spectrum.jsonl): the student was not scored yet",
    )


def _read_schedule(run: RunData) -> None:
    path = _first_existing(run.run_dir, CURATION_DIRS, "schedule.json")
    if path is None:
        run.note(
            "Schedule",
            "no schedule.json: not curated (a baseline run, or curation has not run yet)",
        )
        return
    value, problem = read_json_tolerant(path)
    if problem:
        run.note("Schedule", problem)
        return
    if not isinstance(value, dict) or not isinstance(value.get("epochs"), list):
        run.note("Schedule", f"{_relative(path, run.run_dir)}: no 'epochs' list; skipped")
        return
    run.schedule, run.schedule_source = value, _relative(path, run.run_dir)
    if run.spectrum is not None and not run.spectrum.zones:
        run.spectrum.zones = _zones_from_schedule(value)


def _explain_missing_schedule(run: RunData) -> None:
    """The trainer's state names the plan it followed: a curated run without its schedule.json
    is not a baseline run, and the page must not say it is."""
    if run.schedule is not None or run.strategy in (None, "baseline"):
        return
    notes = run.notes.get("Schedule", [])
    run.notes["Schedule"] = [
        f"no schedule.json in this run folder, although it trained on a {run.strategy} plan "
        "(checkpoint/trainer_state.json): the plan was not saved beside the run"
        if note.startswith("no schedule.json")
        else note
        for note in notes
    ]


def _dedupe_by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run killed mid-epoch resumes from the last checkpoint and logs those steps again:
    the later row (the run that continued) replaces the earlier one."""
    by_step: dict[Any, dict[str, Any]] = {}
    for row in rows:
        by_step[(row.get("epoch"), row.get("step"))] = row
    latest: dict[Any, dict[str, Any]] = {}
    for row in by_step.values():
        latest[row.get("step")] = row
    return sorted(latest.values(), key=lambda r: as_number(r.get("step")) or 0)


def _has_numbers(row: dict[str, Any], *keys: str) -> bool:
    return all(as_number(row.get(key)) is not None for key in keys)


def _read_training(run: RunData) -> None:
    root = run.run_dir
    metrics = read_jsonl_tolerant(root / "metrics.jsonl")
    if metrics is None:
        run.note("Training", "no metrics.jsonl: training has not logged a step yet")
    else:
        for message in _describe_jsonl(metrics, "metrics.jsonl"):
            run.note("Training", message)
        # Only rows with every field a figure draws: a hand-edited or foreign row is skipped.
        steps = [r for r in metrics.rows if _has_numbers(r, "epoch", "step", "ce", "kd")]
        epochs = [r for r in metrics.rows if _has_numbers(r, "epoch", "val_ce", "val_kd")]
        run.steps = _dedupe_by_step(steps)
        run.plan_updates = [r for r in metrics.rows if isinstance(r.get("plan_update"), str)]
        by_epoch: dict[Any, dict[str, Any]] = {}
        for row in epochs:
            by_epoch[row.get("epoch")] = row
        run.epochs = sorted(by_epoch.values(), key=lambda r: as_number(r.get("epoch")) or 0)
        if not run.epochs and run.steps:
            run.note("Training", "no validation rows yet (no epoch finished, or no validation set)")
    state, problem = read_json_tolerant(root / "checkpoint" / "trainer_state.json")
    if problem:
        run.note("Training", f"checkpoint/{problem}")
    if isinstance(state, dict):
        run.trainer_state = state
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        if as_number(config.get("alpha")) is not None:
            run.alpha, run.alpha_source = float(config["alpha"]), "checkpoint/trainer_state.json"
    elif metrics is not None:
        run.note("Training", "no checkpoint/trainer_state.json yet: no epoch has finished")
    if run.alpha is None:
        _alpha_from_run_config(run)
    run.has_best = (root / "best").is_dir()
    run.has_final = (root / "final").is_dir()


def _read_yaml(path: Path) -> tuple[Any, str | None]:
    """(value, None); (None, None) when missing; (None, why) when unreadable."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        return None, f"{path.name}: cannot be read ({type(error).__name__})"


def _alpha_from_run_config(run: RunData) -> None:
    config, problem = _read_yaml(run.run_dir / "run_config.yaml")
    if problem:
        run.note("Training", f"{problem}; alpha unknown")
    train = config.get("train") if isinstance(config, dict) else None
    alpha = as_number(train.get("alpha")) if isinstance(train, dict) else None
    if alpha is not None:
        run.alpha, run.alpha_source = alpha, "run_config.yaml"


def _read_facts(run: RunData) -> None:
    """A few lines saying what the run is, from whichever summary files exist."""
    root = run.run_dir
    for name in ("demo_summary.json", "scores/score_summary.json", "score_summary.json"):
        value, _ = read_json_tolerant(root / name)
        if isinstance(value, dict):
            for key in ("teacher", "student", "model", "data", "examples_scored", "reduction"):
                if key in value and key not in run.facts and not isinstance(value[key], dict):
                    run.facts[key] = str(value[key])
    config, _ = _read_yaml(root / "run_config.yaml")  # a broken one is noted under Training
    if isinstance(config, dict):
        for key in ("teacher", "student"):
            if isinstance(config.get(key), str):
                run.facts.setdefault(key, config[key])
        data = config.get("data")
        if isinstance(data, dict) and data.get("source"):
            run.facts.setdefault("data", str(data["source"]))
        train = config.get("train")
        if isinstance(train, dict) and train.get("objective"):
            run.facts["objective"] = str(train["objective"])
    if run.schedule:
        run.facts["strategy"] = str(run.schedule.get("strategy", "?"))
        # Every strategy records its settings (SpectrumKD's older plans only as "config").
        config = run.schedule.get("settings") or run.schedule.get("config")
        if isinstance(config, dict):
            run.facts["curation"] = ", ".join(f"{k}={v}" for k, v in config.items())
    elif run.trainer_state:
        run.facts["strategy"] = str(run.trainer_state.get("strategy", "?"))


# ---- evaluation --------------------------------------------------------------------------

# One generation run of an instruction set: ``seed<k>.jsonl`` (sampling) or ``greedy.jsonl``.
_RUN_FILE = re.compile(r"^(seed\d+|greedy)\.jsonl$")


def _weighted_mean(rows: list[dict[str, Any]], key: str) -> float | None:
    """Per-token mean (rows weighted by their ``tokens``, as the evaluation stage averages
    quality), or the plain mean of rows without token counts; rows lacking ``key`` are left out."""
    pairs = [(as_number(r.get(key)), as_number(r.get("tokens"))) for r in rows]
    pairs = [(v, t) for v, t in pairs if v is not None]
    if not pairs:
        return None
    if all(t is not None and t > 0 for _, t in pairs):
        return sum(v * t for v, t in pairs) / sum(t for _, t in pairs)  # type: ignore[operator]
    return float(np.mean([v for v, _ in pairs]))


def _read_eval_set(folder: Path, run: RunData) -> EvalSet:
    """A set's own files: the ROUGE-L of each generation run, the quality rows, and the
    ``summary.json`` that maths and code sets write (pass@1 in percent)."""
    result = EvalSet(folder.name)
    for path in sorted(folder.glob("*.jsonl")):
        match = _RUN_FILE.match(path.name)
        read = read_jsonl_tolerant(path) if match else None
        if read is None:
            continue
        for message in _describe_jsonl(read, f"{folder.name}/{path.name}"):
            run.note("Evaluation", message)
        values = [v for v in (as_number(r.get("rougeL")) for r in read.rows) if v is not None]
        if values:
            result.per_run[match.group(1)] = float(np.mean(values))  # type: ignore[union-attr]
    if result.per_run:
        values = list(result.per_run.values())
        result.metrics["rougeL"] = float(np.mean(values))
        if len(values) > 1:
            result.metrics["rougeL_std"] = float(np.std(values, ddof=1))
        result.metrics["runs"] = float(len(values))
    quality = read_jsonl_tolerant(folder / "quality.jsonl")
    if quality is not None:
        for message in _describe_jsonl(quality, f"{folder.name}/quality.jsonl"):
            run.note("Evaluation", message)
        for key in ("ce", "kl_forward", "kl_reverse"):
            mean = _weighted_mean(quality.rows, key)
            if mean is not None:
                result.metrics[key] = mean
    summary, problem = read_json_tolerant(folder / "summary.json")
    if problem:
        run.note("Evaluation", f"{folder.name}/{problem}")
    if isinstance(summary, dict):
        _merge_suite(result, summary)
    return result


# Timings and bookkeeping, not results; "score" repeats the suite's own metric (pass_at_1).
_SUITE_SKIP = {"seconds", "reused_rows", "generation_seconds", "wall_time_s", "score"}


def _merge_suite(entry: EvalSet, suite: dict[str, Any]) -> None:
    """Add the numbers of one set's summary to ``entry`` without overwriting what the set's
    own files gave (they are the finer source)."""
    if isinstance(suite.get("label"), str):
        entry.label = suite["label"]
    for key, value in suite.items():
        number = as_number(value)
        if number is not None and key not in _SUITE_SKIP:
            entry.metrics.setdefault(key, number)
    quality = suite.get("quality")
    if isinstance(quality, dict):
        for key in ("ce", "kl_forward", "kl_reverse"):
            if as_number(quality.get(key)) is not None:
                entry.metrics.setdefault(key, float(quality[key]))
    runs = suite.get("runs")
    if isinstance(runs, dict) and not entry.per_run:
        for stem, detail in runs.items():
            score = as_number(detail.get("rougeL")) if isinstance(detail, dict) else None
            if score is not None:
                entry.per_run[str(stem)] = score


def _suites_of(summary: Any) -> dict[str, dict[str, Any]]:
    """Per-set entries of an evaluation ``summary.json``: ``{"suites": {set: {...}}}`` (what
    ``spectrumkd evaluate`` writes), ``{"sets": ...}``, or a list of ``{"set": name, ...}``."""
    if isinstance(summary, dict):
        for key in ("suites", "sets"):
            if isinstance(summary.get(key), (dict, list)):
                summary = summary[key]
                break
        else:
            return {}
    if isinstance(summary, list):
        return {
            str(row.get("set") or row.get("name")): row
            for row in summary
            if isinstance(row, dict) and (row.get("set") or row.get("name"))
        }
    if isinstance(summary, dict):
        return {str(k): v for k, v in summary.items() if isinstance(v, dict)}
    return {}  # missing, or a shape this reader does not know


def _read_evaluation(run: RunData) -> None:
    folder = next((run.run_dir / d for d in EVAL_DIRS if (run.run_dir / d).is_dir()), None)
    if folder is None:
        run.note("Evaluation", "no eval/ or evaluation/ folder: the run was not evaluated yet")
        return
    run.eval_source = _relative(folder, run.run_dir)
    sets = {
        sub.name: _read_eval_set(sub, run)
        for sub in sorted(folder.iterdir())
        if sub.is_dir() and sub.name != "judge"
    }
    judged, problem = read_json_tolerant(folder / "judge" / "summary.json")
    if problem:
        run.note("Evaluation", problem)
    for name, verdicts in (judged or {}).items():
        # spectrumkd judge: pairwise win rate against the reference model, per set.
        if name != "judge" and isinstance(verdicts, dict):
            for key in ("win_rate", "unparseable_share"):
                if as_number(verdicts.get(key)) is not None:
                    sets.setdefault(name, EvalSet(name)).metrics[key] = float(verdicts[key])
    summary, problem = read_json_tolerant(folder / "summary.json")
    if problem:
        run.note("Evaluation", problem)
    elif summary is None and sets:
        run.note("Evaluation", f"no {run.eval_source}/summary.json yet: evaluation still running?")
    for name, suite in _suites_of(summary).items():
        _merge_suite(sets.setdefault(name, EvalSet(name)), suite)
    run.eval_sets = [s for s in sets.values() if s.metrics]
    if not run.eval_sets:
        run.note("Evaluation", f"{run.eval_source}/ holds no per-set results yet")


def _read_comparisons(run: RunData) -> None:
    folders = [run.run_dir] + [run.run_dir / d for d in EVAL_DIRS]
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            if not path.name.startswith(("compare", "comparison")):
                continue
            value, problem = read_json_tolerant(path)
            if problem:
                run.note("Comparison", problem)
            elif value is not None:
                run.comparisons.append((_relative(path, run.run_dir), value))


def read_run(run_dir: str | Path) -> RunData:
    """Read every part of ``run_dir`` that exists. Raises only when ``run_dir`` itself is not a
    folder (a typo, which the user should hear about)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist (or is not a folder)")
    run = RunData(run_dir=root)
    _read_scoring(run)
    _read_schedule(run)
    _read_training(run)
    _explain_missing_schedule(run)
    _read_facts(run)
    _read_evaluation(run)
    _read_comparisons(run)
    return run
