"""The evidence experiment of issue 6: does adding SpectrumKD improve every KD objective?

    python experiments/run.py cells                        # every cell and its status (or --list)
    python experiments/run.py run [--cell PATTERN ...]     # run what is not finished, resumably
    python experiments/run.py summarize                    # results table from the result files

Settings come from ``experiments/config.yaml`` (``--profile cpu|gpu``, ``--set a.b=value``). The
work is split into cells, each of which writes one small JSON into the results folder, atomically,
when it is finished; a rerun skips finished cells and resumes an interrupted one from its last
checkpoint (the trainer resumes from ``<run folder>/checkpoint``).

- ``setup``: the shared start of every cell. The initial student (a ``shrink`` of the teacher by
  measured influence, then healed once by plain KD on disjoint text, or a given student), its
  difficulty table on the training rows (the spectrum every +SpectrumKD cell curates from), the
  teacher's and the students' own scores on the test rows, the Spearman correlation of the
  student's and the teacher's difficulties, and the step-parity epochs.
- ``<objective>-<arm>-seed<k>``: one distillation (``spectrumkd.jobs.distill``) of the initial
  student, plain KD (``baseline``) or with SpectrumKD (``spectrumkd``), then its evaluation on the
  test rows: CE of the reference and KL to the teacher per example (primary), ROUGE-L of greedy
  and sampled answers per example (secondary).
- ``<objective>-<ablation>-seed<k>``: the +SpectrumKD cell with an ablation's changes (config
  ``ablations:``), after the whole matrix; summarised against both arms.

Training and evaluation are the package's own (``jobs.distill``, ``distillation_quality``,
``evaluate_instruction_following``, ``compare.compare_metric``); this file only arranges them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spectrumkd import jobs
from spectrumkd.curation.config import SpectrumKDConfig
from spectrumkd.data.config import DataConfig
from spectrumkd.data.loading import FieldMap
from spectrumkd.distillation.run_config import RunConfig, apply_override, read_yaml_mapping
from spectrumkd.distillation.trainer import TrainConfig
from spectrumkd.io import write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "experiments" / "config.yaml"
PROFILES = ("cpu", "gpu")
ARMS = ("baseline", "spectrumkd")
ARM_LABELS = {"baseline": "baseline", "spectrumkd": "+SpectrumKD"}
SETUP = "setup"
# The arm is baseline, spectrumkd or the name of an ablation (neither part has a hyphen).
CELL_NAME = re.compile(r"^(?P<key>[a-z0-9_]+)-(?P<arm>[a-z0-9_]+)-seed(?P<seed>\d+)$")
# What an ablation of the +SpectrumKD arm may change: the curation settings that leave its
# window, and so the step-parity epochs of the setup, as they are (the window follows lambda_a
# and lambda_b), and the teacher signal (teacher_cache_k; 0: the live teacher).
ABLATION_CURATION_KEYS = {"tau_start", "tau_end", "step_mode", "direction"}
ABLATION_KEYS = {*ABLATION_CURATION_KEYS, "teacher_cache_k"}
SUITE = "dolly"  # the test rows are read as the DollyEval suite (MiniLLM format, Figure 5 template)

# Per-example metrics of a cell. Quality metrics are means per reference token, summarised per
# set weighted by tokens (as the evaluation summary does); ROUGE-L is a plain mean over examples.
QUALITY_METRICS = ("ce", "kl_forward", "kl_reverse")
ROUGE_METRICS = ("rougeL_greedy", "rougeL_sampled")
METRICS = (*QUALITY_METRICS, *ROUGE_METRICS)
PRIMARY = ("ce", "kl_forward")
LOWER_IS_BETTER = set(QUALITY_METRICS)
METRIC_LABELS = {
    "ce": "CE of the reference (nats/token)",
    "kl_forward": "KL(teacher ‖ student) (nats/token)",
    "kl_reverse": "KL(student ‖ teacher) (nats/token)",
    "rougeL_greedy": "ROUGE-L, greedy",
    "rougeL_sampled": "ROUGE-L, sampled (tau 1)",
}

TOP_LEVEL = {
    "results_dir",
    "runs_dir",
    "threads",
    "prune_finished",
    "objectives",
    "seeds",
    "spectrumkd",
    "teacher",
    "dtype",
    "device",
    "student",
    "heal",
    "data",
    "teacher_cache_k",
    "baseline_epochs",
    "train",
    "test",
    "ablations",
}
# Settings that change where things are written or how fast, not what is computed.
NOT_RESULT_SETTINGS = ("results_dir", "runs_dir", "threads", "prune_finished")
PER_CELL_TRAIN = ("objective", "objective_params", "seed", "epochs")
SPECTRUMKD_KEYS = {
    "lambda_a",
    "lambda_b",
    "tau_start",
    "tau_end",
    "step_mode",
    "direction",
    "warmup_fraction",
}


# ------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TestSettings:
    """Which test rows, and how each cell's student is evaluated on them."""

    source: str
    limit: int | None = None
    max_prompt_tokens: int = 256
    quality_max_length: int = 768
    batch_size: int = 8
    rouge_rows: int | None = 160  # None: every row; 0: no generation
    greedy: bool = True
    sample_seeds: tuple[int, ...] = (10,)
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_seeds", tuple(self.sample_seeds or ()))
        for name in ("max_prompt_tokens", "quality_max_length", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"test.{name}={getattr(self, name)} must be >= 1")
        if self.rouge_rows is not None and self.rouge_rows < 0:
            raise ValueError(f"test.rouge_rows={self.rouge_rows} must be >= 0 (null: every row)")
        if len(set(self.sample_seeds)) != len(self.sample_seeds):
            raise ValueError(f"test.sample_seeds {list(self.sample_seeds)} must be distinct")


@dataclass(frozen=True)
class Cell:
    name: str
    key: str  # the objective's key in the config (fkl, rkl, jsd, ...)
    objective: dict[str, Any]  # {objective, objective_params}
    arm: str  # baseline, spectrumkd or an ablation's name
    seed: int
    changes: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # an ablation's


@dataclass(frozen=True)
class Ablation:
    """The +SpectrumKD arm with ``changes``, run for these objectives and seeds."""

    changes: dict[str, Any]
    objectives: tuple[str, ...]
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class Experiment:
    """The merged, validated settings of one profile."""

    settings: dict[str, Any]  # as merged and overridden (what result files remember)
    profile: str
    results_dir: Path
    runs_dir: Path
    threads: int | None
    prune_finished: bool
    teacher: str
    dtype: str
    device: str
    student_init: str | None
    shrink: dict[str, Any] | None
    heal: dict[str, Any] | None  # {data: dict for DataConfig, train: dict for TrainConfig}
    data: dict[str, Any]
    teacher_cache_k: int
    baseline_epochs: int
    train: dict[str, Any]
    objectives: dict[str, dict[str, Any]]
    seeds: tuple[int, ...]
    spectrumkd: dict[str, Any]
    test: TestSettings
    ablations: dict[str, Ablation] = dataclasses.field(default_factory=dict)

    @property
    def setup_dir(self) -> Path:
        return self.runs_dir / SETUP

    def cells(self) -> list[Cell]:
        """Objective by objective, seed by seed, the two arms of a pair side by side (so an
        interrupted matrix leaves complete pairs behind); the ablations after the whole matrix."""
        matrix = [
            Cell(f"{key}-{arm}-seed{seed}", key, spec, arm, seed)
            for key, spec in self.objectives.items()
            for seed in self.seeds
            for arm in ARMS
        ]
        ablations = [
            Cell(f"{key}-{name}-seed{seed}", key, spec, name, seed, ablation.changes)
            for key, spec in self.objectives.items()
            for seed in self.seeds
            for name, ablation in self.ablations.items()
            if key in ablation.objectives and seed in ablation.seeds
        ]
        return matrix + ablations


def rooted(path: str | Path) -> Path:
    """A path of the config: absolute as given, else relative to the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def source_spec(value: str) -> str:
    """A data or model spec: local paths (``./``, ``../``, or existing under the repository root)
    are made absolute; ``embedded:dolly``, ``smollm2`` and hub names stay as they are."""
    if value.startswith("embedded:") or Path(value).expanduser().is_absolute():
        return str(Path(value).expanduser())
    if value.startswith(("./", "../")) or (ROOT / value).exists():
        return str(ROOT / value)
    return value


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_experiment(
    path: str | Path = DEFAULT_CONFIG, profile: str = "cpu", overrides: Sequence[str] = ()
) -> Experiment:
    """Read the config, merge ``profiles.<profile>`` over the shared settings, apply ``--set``."""
    raw = read_yaml_mapping(path)
    profiles = raw.pop("profiles", None) or {}
    if profile not in profiles:
        raise ValueError(
            f"profile {profile!r} is not in {path}; profiles: {', '.join(profiles) or 'none'}"
        )
    settings = deep_merge(raw, profiles[profile] or {})
    for override in overrides:
        apply_override(settings, override)
    return experiment_from_settings(settings, profile)


def _mapping(value: Any, where: str, known: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"'{where}' must be a mapping of settings")
    if known is not None:
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"unknown {where} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
    return dict(value)


def _cache_k(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where}={value!r} must be an integer >= 0 (0: live teacher)")
    return value


def _scope(values: Mapping[str, Any], key: str, allowed: list[Any], where: str) -> tuple:
    """An ablation's ``objectives`` or ``seeds``: a non-empty part of the matrix's (default all)."""
    chosen = values.get(key, allowed)
    if not isinstance(chosen, list) or not chosen or not set(chosen) <= set(allowed):
        raise ValueError(
            f"{where}.{key}={chosen!r} must list some of {key}: {', '.join(map(str, allowed))}"
        )
    return tuple(chosen)


def _data_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(DataConfig)}


def field_map(value: Any, where: str) -> str | FieldMap | None:
    """``fields:`` as a preset name, or a mapping of roles to columns (a :class:`FieldMap`),
    for layouts no preset names (GSM8K's question/answer)."""
    if value is None or isinstance(value, str):
        return value
    roles = {f.name for f in dataclasses.fields(FieldMap)}
    mapping = _mapping(value, f"{where}.fields", roles)
    if "response" not in mapping:
        raise ValueError(f"{where}.fields needs a 'response' column")
    return FieldMap(**{role: mapping.get(role) for role in roles})


def data_config(values: Mapping[str, Any], where: str) -> DataConfig:
    values = _mapping(values, where, _data_fields())
    if isinstance(values.get("source"), str):
        values["source"] = source_spec(values["source"])
    values["fields"] = field_map(values.get("fields"), where)
    return DataConfig(**values)


def experiment_from_settings(settings: dict[str, Any], profile: str) -> Experiment:
    settings = _mapping(settings, "experiment", TOP_LEVEL)
    missing = sorted(
        k
        for k in TOP_LEVEL - {"heal", "threads", "prune_finished", "ablations"}
        if settings.get(k) is None
    )
    if missing:
        raise ValueError(f"the experiment config (profile {profile}) needs {', '.join(missing)}")

    student = _mapping(settings["student"], "student", {"init", "shrink"})
    shrink = student.get("shrink")
    if (student.get("init") is None) == (shrink is None):
        raise ValueError("student needs exactly one of init (a model) or shrink (of the teacher)")
    if shrink is not None:
        shrink = {
            "method": "block_influence",
            "calibration_rows": 32,
            **_mapping(shrink, "student.shrink", {"num_layers", "method", "calibration_rows"}),
        }
        if not isinstance(shrink.get("num_layers"), int) or shrink["num_layers"] < 1:
            raise ValueError("student.shrink.num_layers must be an integer >= 1")

    heal = settings.get("heal")
    if heal is not None:
        heal = _mapping(heal, "heal", {"data", "train"})
        data_config(heal.get("data") or {}, "heal.data")  # validated here, built when used
        TrainConfig(**_mapping(heal.get("train") or {}, "heal.train"))

    data = _mapping(settings["data"], "data", _data_fields())
    data_config(data, "data")

    train = _mapping(settings["train"], "train")
    per_cell = sorted(set(train) & set(PER_CELL_TRAIN))
    if per_cell:
        raise ValueError(
            f"train.{per_cell[0]} is set per cell (objectives:, seeds:, baseline_epochs:); "
            "remove it from train"
        )
    objectives = _mapping(settings["objectives"], "objectives")
    if not objectives:
        raise ValueError(
            "objectives is empty; name at least one, e.g. fkl: {objective: forward_kl}"
        )
    for key, spec in objectives.items():
        if not isinstance(key, str) or not re.fullmatch(r"[a-z0-9_]+", key):
            raise ValueError(f"objective key {key!r} must be lower-case letters, digits or _")
        spec = _mapping(spec, f"objectives.{key}", {"objective", "objective_params"})
        TrainConfig(**train, **spec)  # every objective with the shared settings is valid
        objectives[key] = {"objective": spec.get("objective", "forward_kl"), **spec}

    seeds = settings["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds!r}")
    spectrumkd = _mapping(settings["spectrumkd"], "spectrumkd", SPECTRUMKD_KEYS)
    fraction = spectrumkd.get("warmup_fraction", 0.2)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"spectrumkd.warmup_fraction={fraction} must be in [0, 1)")
    curation_settings = {k: v for k, v in spectrumkd.items() if k != "warmup_fraction"}
    SpectrumKDConfig(**curation_settings, epochs=2, warmup_epochs=1)  # validates the ratios
    baseline_epochs = settings["baseline_epochs"]
    if not isinstance(baseline_epochs, int) or baseline_epochs < 1:
        raise ValueError(f"baseline_epochs={baseline_epochs!r} must be an integer >= 1")
    cache_k = _cache_k(settings["teacher_cache_k"], "teacher_cache_k")
    test = _mapping(settings["test"], "test", {f.name for f in dataclasses.fields(TestSettings)})
    if not test.get("source"):
        raise ValueError("test.source (the test rows, e.g. DollyEval's valid.jsonl) is missing")
    test["source"] = source_spec(str(test["source"]))
    ablations = {}
    arm_values = {**curation_settings, "teacher_cache_k": cache_k}
    for name, values in _mapping(settings.get("ablations") or {}, "ablations").items():
        where = f"ablations.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+", name) or name in ARMS:
            raise ValueError(
                f"ablation name {name!r} must be lower-case letters, digits and _, and not "
                f"{' or '.join(ARMS)}"
            )
        values = _mapping(values, where, {"change", "objectives", "seeds"})
        changes = _mapping(values.get("change") or {}, f"{where}.change", ABLATION_KEYS)
        if all(arm_values.get(k) == v for k, v in changes.items()):
            raise ValueError(
                f"{where}.change changes nothing the +SpectrumKD arm does not already do; set "
                f"one of {', '.join(sorted(ABLATION_KEYS))} to another value"
            )
        curation_changes = {k: v for k, v in changes.items() if k in ABLATION_CURATION_KEYS}
        SpectrumKDConfig(**{**curation_settings, **curation_changes}, epochs=2, warmup_epochs=1)
        if "teacher_cache_k" in changes:
            _cache_k(changes["teacher_cache_k"], f"{where}.change.teacher_cache_k")
        ablations[name] = Ablation(
            changes,
            _scope(values, "objectives", list(objectives), where),
            _scope(values, "seeds", seeds, where),
        )
    threads = settings.get("threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} must be an integer >= 1 or null")
    return Experiment(
        settings=settings,
        profile=profile,
        results_dir=rooted(settings["results_dir"]),
        runs_dir=rooted(settings["runs_dir"]),
        threads=threads,
        prune_finished=bool(settings.get("prune_finished", False)),
        teacher=source_spec(str(settings["teacher"])),
        dtype=str(settings["dtype"]),
        device=str(settings["device"]),
        student_init=source_spec(str(student["init"])) if student.get("init") else None,
        shrink=shrink,
        heal=heal,
        data=data,
        teacher_cache_k=cache_k,
        baseline_epochs=baseline_epochs,
        train=train,
        objectives=objectives,
        seeds=tuple(seeds),
        spectrumkd={"warmup_fraction": fraction, **curation_settings},
        test=TestSettings(**test),
        ablations=ablations,
    )


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


def cell_settings(exp: Experiment, cell: Cell) -> dict[str, Any]:
    """What a cell's results depend on: every setting but paths, speed, the lists of objectives,
    seeds and ablations (its own objective and its ablation's changes are included; its seed and
    arm are in its name). Adding an ablation to the config leaves the finished cells current."""
    kept = {
        k: v
        for k, v in exp.settings.items()
        if k not in (*NOT_RESULT_SETTINGS, "objectives", "seeds", "ablations")
    }
    ablation = {"ablation": dict(cell.changes)} if cell.changes else {}
    return _plain({**kept, "objective": cell.objective, **ablation})


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


# ------------------------------------------------------------------------------- status


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
        return "done", f"{result.get('finished_at', '')} ({_duration(seconds)})"
    state_file = exp.runs_dir / name / "checkpoint" / "trainer_state.json"
    if name != SETUP and state_file.is_file():
        state = json.loads(state_file.read_text(encoding="utf-8"))
        return "partial", f"checkpoint after epoch {state['epoch']}, step {state['step']}"
    if name == SETUP and exp.setup_dir.is_dir():
        return "partial", f"{_shown(exp.setup_dir)} holds finished steps"
    return "pending", ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _shown(path: Path) -> str:
    """A path as committed files show it: relative to the repository root when inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _relative_paths(values: Any) -> Any:
    """Absolute paths inside the repository written relative to it, so committed result files
    do not carry this machine's layout."""
    if isinstance(values, Mapping):
        return {k: _relative_paths(v) for k, v in values.items()}
    if isinstance(values, list):
        return [_relative_paths(v) for v in values]
    if isinstance(values, str) and values.startswith(str(ROOT) + os.sep):
        return values[len(str(ROOT)) + 1 :]
    return values


def cells_table(exp: Experiment) -> str:
    names = [SETUP, *(cell.name for cell in exp.cells())]
    width = max(len(n) for n in names)
    lines = [f"profile {exp.profile}; results in {_shown(exp.results_dir)}"]
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


# ------------------------------------------------------------------------------- shared pieces


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


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def train_file(exp: Experiment) -> Path:
    return exp.setup_dir / "train.jsonl"


def difficulties_file(exp: Experiment) -> Path:
    return exp.setup_dir / "scores-student" / "difficulties.jsonl"


def shrunk_dir(exp: Experiment) -> Path:
    return exp.setup_dir / "shrunk"


def initial_student(exp: Experiment) -> str:
    """Where every cell's student starts: the healed student, else the shrunk or given one."""
    if exp.heal is not None:
        heal = exp.setup_dir / "heal"
        return str(heal / "best") if (heal / "best").is_dir() else str(heal / "final")
    if exp.shrink is not None:
        return str(shrunk_dir(exp))
    assert exp.student_init is not None
    return exp.student_init


def training_data(exp: Experiment) -> DataConfig:
    """The training rows as every cell reads them: the derived file of the setup (the configured
    source without the rows whose prompt is a test prompt), already rendered, ids kept."""
    values = {
        k: v for k, v in exp.data.items() if k in ("max_length", "max_prompt_length", "split")
    }
    return DataConfig(
        source=str(train_file(exp)),
        fields="prompt_response",
        template="none",
        id_field="id",
        validation_ratio=exp.data.get("validation_ratio", 0.0),
        validation_seed=exp.data.get("validation_seed", 0),
        **values,
    )


def load_test(exp: Experiment, tokenizer: Any):
    """The test suite and its rows whose prompt fits (the others as dropped rows)."""
    from spectrumkd.evaluation import filter_prompts, load_suite

    suite = load_suite(SUITE, source=exp.test.source, limit=exp.test.limit)
    kept, dropped = filter_prompts(suite.examples, tokenizer, exp.test.max_prompt_tokens)
    return suite, kept, dropped


def quality_rows(exp: Experiment, model: Any, tokenizer: Any, examples: list, teacher: Any):
    """Per-example CE (and KL to ``teacher``) on the test rows, and the rows too long to score."""
    from spectrumkd.evaluation import distillation_quality

    result = distillation_quality(
        model,
        tokenizer,
        examples,
        teacher=teacher,
        max_length=exp.test.quality_max_length,
        batch_size=exp.test.batch_size,
    )
    return [row.as_dict() for row in result.rows], result.dropped


def _device_dtype(exp: Experiment):
    device = jobs.resolve_device(exp.device)
    return device, jobs.resolve_dtype(exp.dtype, device)


# ------------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class TrainingRows:
    """The training source as loaded, and the rows every cell trains and validates on."""

    source_rows: int
    overlap: list[str]  # ids removed for sharing a prompt with a test row
    dataset: Any  # TokenizedDataset of the derived file (kept and length-dropped rows)
    train: list
    validation: list


def prepare_training_rows(exp: Experiment, tokenizer: Any, test_prompts: set[str]) -> TrainingRows:
    """Write ``runs/setup/train.jsonl``: the configured source, rendered, without the rows whose
    prompt is a test prompt. The test rows are fixed, so an overlapping row leaves training
    rather than the test, and every test row that fits is evaluated."""
    texts = data_config(exp.data, "data").load_texts(tokenizer)
    write_jsonl(
        train_file(exp),
        (
            {"id": e.id, "prompt": e.prompt, "response": e.response}
            for e in texts
            if e.prompt not in test_prompts
        ),
    )
    data = training_data(exp)
    dataset = data.load(tokenizer)
    train, validation = jobs.split_validation(
        dataset.examples, data.validation_ratio, data.validation_seed
    )
    if not train:
        raise ValueError(
            "no training rows are left after the length limit and the validation split"
        )
    overlap = [e.id for e in texts if e.prompt in test_prompts]
    return TrainingRows(len(texts), overlap, dataset, train, validation)


def shrunk_student(
    exp: Experiment, tokenizer: Any, rows: TrainingRows, device: Any
) -> tuple[str, dict[str, Any]]:
    """The teacher cut to ``num_layers`` blocks chosen by measured influence on training rows
    (reused when a finished one of that size is on disk); its folder and shrink report."""
    from spectrumkd.models import load_model, shrink

    assert exp.shrink is not None
    folder = shrunk_dir(exp)
    report_file = folder / "shrink_report.json"
    if report_file.is_file():  # written last by shrink(): a finished student
        report = json.loads(report_file.read_text(encoding="utf-8"))
        if len(report["keep_layers"]) == exp.shrink["num_layers"]:
            return str(folder), report
    # Layer influence is measured in float32 whatever dtype the teacher runs in later.
    teacher = load_model(exp.teacher, dtype="float32", device=device)
    calibration = dataclasses.replace(rows.dataset, examples=rows.train)
    batches = jobs.calibration_batches(
        calibration, tokenizer.pad_token_id, rows=exp.shrink["calibration_rows"]
    )
    _, report = shrink(
        teacher,
        tokenizer,
        batches,
        num_layers=exp.shrink["num_layers"],
        method=exp.shrink["method"],
        out_dir=folder,
    )
    return str(folder), report.to_dict()


def heal_data(exp: Experiment, tokenizer: Any, test_prompts: set[str]):
    """The heal data's config and texts, refused when a prompt is also a train or test prompt."""
    assert exp.heal is not None
    config = data_config(exp.heal.get("data") or {}, "heal.data")
    texts = config.load_texts(tokenizer)
    train_prompts = {
        json.loads(line)["prompt"] for line in train_file(exp).read_text().splitlines() if line
    }
    shared = {e.prompt for e in texts} & (test_prompts | train_prompts)
    if shared:
        raise ValueError(
            f"{len(shared)} heal prompts are also train or test prompts; the heal data must be "
            "disjoint from both"
        )
    return config, texts


def heal_student(
    exp: Experiment,
    student: str,
    tokenizer: Any,
    test_prompts: set[str],
    *,
    progress: bool,
) -> dict[str, Any]:
    """Plain KD of ``student`` on the heal data (``jobs.distill`` without curation, resumable)."""
    assert exp.heal is not None
    config, texts = heal_data(exp, tokenizer, test_prompts)
    data = {k: v for k, v in dataclasses.asdict(config).items() if k != "fields"}
    run = RunConfig.from_dict(
        {
            "teacher": exp.teacher,
            "student": student,
            "output_dir": str(exp.setup_dir / "heal"),
            "dtype": exp.dtype,
            "device": exp.device,
            "data": {**data, "fields": config.fields},  # a FieldMap stays one
            "train": dict(exp.heal.get("train") or {}),
        }
    )
    began = time.perf_counter()
    state = jobs.distill(run, progress=progress)
    tokenized = config.tokenize(texts, tokenizer)
    return {
        "rows": len(texts),
        "kept": len(tokenized.examples),
        "dropped_too_long": len(tokenized.dropped),
        "epochs": state["epoch"],
        "steps": state["step"],
        "best": state.get("best"),
        "seconds_this_run": round(time.perf_counter() - began, 1),
    }


def parity_epochs(exp: Experiment, ids: Sequence[str], difficulties: Any) -> dict[str, int]:
    """Step parity (paper C.3): SpectrumKD trains on a window of M of the N rows per epoch, so
    it gets round(n_baseline N / M) epochs; its warm-up is a fixed share of them."""
    from spectrumkd.curation.schedule import SpectrumKD, step_parity_epochs

    config = SpectrumKDConfig(
        **{k: v for k, v in exp.spectrumkd.items() if k != "warmup_fraction"},
        epochs=2,  # the zones depend on N and the ratios only
        warmup_epochs=1,
    )
    window = SpectrumKD(config).spectrum(ids, difficulties).sizes.window
    epochs = step_parity_epochs(exp.baseline_epochs, len(ids), window)
    return {
        "n_examples": len(ids),
        "window": window,
        "baseline_epochs": exp.baseline_epochs,
        "epochs": epochs,
        "warmup_epochs": int(exp.spectrumkd["warmup_fraction"] * epochs),
    }


def run_setup(exp: Experiment, *, progress: bool = True) -> dict[str, Any]:
    """Build the initial student and everything the cells share; write ``setup.json``."""
    import torch
    from scipy.stats import spearmanr

    from spectrumkd.evaluation import summarize_quality
    from spectrumkd.models import load_model, load_tokenizer
    from spectrumkd.scoring import score_examples

    started, cpu_started = time.perf_counter(), time.process_time()
    log = print if progress else (lambda *a, **k: None)
    exp.setup_dir.mkdir(parents=True, exist_ok=True)
    device, dtype = _device_dtype(exp)
    tokenizer = load_tokenizer(exp.teacher)
    suite, test_kept, test_dropped = load_test(exp, tokenizer)
    test_prompts = {example.prompt for example in suite.examples}
    rows = prepare_training_rows(exp, tokenizer, test_prompts)
    log(
        f"setup: {rows.source_rows} training-source rows, {len(rows.overlap)} share a test "
        f"prompt, {len(rows.dataset.dropped)} too long; {len(rows.train)} train + "
        f"{len(rows.validation)} validation"
    )
    if exp.heal is not None:  # refuse overlapping heal data before any training
        heal_data(exp, tokenizer, test_prompts)

    shrink_report = heal_summary = None
    start_from = exp.student_init
    if exp.shrink is not None:
        start_from, shrink_report = shrunk_student(exp, tokenizer, rows, device)
        log(f"setup: shrunk student in {_shown(Path(start_from))}")
    if exp.heal is not None:
        assert start_from is not None
        heal_summary = heal_student(exp, start_from, tokenizer, test_prompts, progress=progress)
        log(f"setup: healed student in {_shown(Path(initial_student(exp)))}")

    # Difficulties of the training rows: the initial student's is the spectrum every
    # +SpectrumKD cell curates from; the teacher's is what it is compared with.
    student_path = initial_student(exp)
    teacher = load_model(exp.teacher, dtype=dtype, device=device)
    student = load_model(student_path, dtype=torch.float32, device=device)
    tables = {
        name: score_examples(
            model,
            rows.train,
            pad_token_id=tokenizer.pad_token_id,
            out_dir=exp.setup_dir / f"scores-{name}",
            progress=progress,
        )
        for name, model in (("student", student), ("teacher", teacher))
    }
    if list(tables["student"].ids) != list(tables["teacher"].ids):
        raise AssertionError("the two difficulty tables list different examples")
    rho, p_value = spearmanr(tables["student"].loss_mean, tables["teacher"].loss_mean)

    # Each model's own scores on the test rows (the teacher's CE; the students' CE and KL).
    models = [("teacher", teacher, None)]
    if exp.shrink is not None and exp.heal is not None:
        shrunk = load_model(start_from, dtype=torch.float32, device=device)
        models.append(("shrunk", shrunk, teacher))
    models.append(("healed" if exp.heal is not None else "initial", student, teacher))
    scores: dict[str, Any] = {}
    for label, model, reference in models:
        quality, too_long = quality_rows(exp, model, tokenizer, test_kept, reference)
        scores[label] = summarize_quality(quality, len(too_long))
        log(f"setup: {label} CE {scores[label]['ce']:.4f} nats/token on the test rows")

    parity = parity_epochs(exp, tables["student"].ids, tables["student"].loss_mean)
    result = {
        "cell": SETUP,
        "settings": setup_settings(exp),
        "profile": exp.profile,
        "teacher": exp.teacher,
        "initial_student": student_path,
        "shrink": shrink_report,
        "heal": heal_summary,
        "data": {
            "source_rows": rows.source_rows,
            "removed_test_prompt_overlap": rows.overlap,
            "dropped_too_long": len(rows.dataset.dropped),
            "kept": len(rows.dataset.examples),
            "train": len(rows.train),
            "validation": len(rows.validation),
        },
        "test": {
            "source": exp.test.source,
            "rows": len(suite),
            "dropped_prompts": len(test_dropped),
            "quality_examples": len(test_kept) - len(too_long),
            "quality_dropped_too_long": len(too_long),
        },
        "scores": scores,
        "spearman": {
            "rho": float(rho),
            "p_value": float(p_value),
            "n": len(rows.train),
            "between": "initial student's and teacher's mean response CE on the train rows",
        },
        "spectrumkd": parity,
        "wall_time_s": {"total": round(time.perf_counter() - started, 1)},
        "cpu_time_s": round(time.process_time() - cpu_started, 1),
        "machine": machine(),
        "finished_at": _now(),
    }
    write_json(result_path(exp, SETUP), _relative_paths(result))
    log(
        f"setup: Spearman rho {float(rho):.3f}; SpectrumKD {parity['epochs']} epochs (warm-up "
        f"{parity['warmup_epochs']}) for {exp.baseline_epochs} baseline epochs"
    )
    return result


def setup_ready(exp: Experiment) -> dict[str, Any] | None:
    """The finished setup, when its result is current and its files are still on disk."""
    result = read_result(result_path(exp, SETUP))
    if result is None:
        return None
    changed = changed_settings(result.get("settings"), setup_settings(exp))
    if changed:
        raise ValueError(
            f"{_shown(result_path(exp, SETUP))} was computed with other "
            f"{', '.join(changed[:4])}; delete it and the cell results (or restore the config)"
        )
    student = Path(initial_student(exp))
    local = exp.student_init is None or exp.shrink is not None or exp.heal is not None
    if not train_file(exp).is_file() or not difficulties_file(exp).is_file():
        return None
    if local and not (student / "config.json").is_file():
        return None
    return result


# ------------------------------------------------------------------------------- cells


def cell_run_config(exp: Experiment, cell: Cell, setup: Mapping[str, Any]) -> RunConfig:
    """The distillation of one cell; the arms differ only in ``curation`` (an ablation is the
    +SpectrumKD arm with its changes)."""
    train = {**exp.train, **cell.objective, "seed": cell.seed, "epochs": exp.baseline_epochs}
    curation = None
    if cell.arm != "baseline":
        parity = setup["spectrumkd"]
        settings = {
            **exp.spectrumkd,
            **{k: v for k, v in cell.changes.items() if k in ABLATION_CURATION_KEYS},
        }
        curation = {
            "difficulties": str(difficulties_file(exp)),
            **{k: v for k, v in settings.items() if k != "warmup_fraction"},
            "epochs": parity["epochs"],
            "warmup_epochs": parity["warmup_epochs"],
        }
    return RunConfig.from_dict(
        {
            "teacher": exp.teacher,
            "student": initial_student(exp),
            "output_dir": str(exp.runs_dir / cell.name),
            "data": dataclasses.asdict(training_data(exp)),
            "train": train,
            "curation": curation,
            "dtype": exp.dtype,
            "device": exp.device,
            "teacher_cache_k": cell.changes.get("teacher_cache_k", exp.teacher_cache_k),
            # One cache for every cell: it is keyed by teacher and data, which all cells share.
            "teacher_cache_root": str(exp.runs_dir / "teacher-cache"),
        }
    )


def evaluate_student(
    exp: Experiment, model_dir: Path, out: Path, *, progress: bool = True
) -> dict[str, Any]:
    """Per-example metrics of the student in ``model_dir`` on the test rows."""
    import torch
    from rich.console import Console

    from spectrumkd.evaluation import Decoding, evaluate_instruction_following
    from spectrumkd.evaluation.compare import rouge_per_example
    from spectrumkd.evaluation.quality import summarize_quality
    from spectrumkd.models import load_model, load_tokenizer

    device, dtype = _device_dtype(exp)
    tokenizer = load_tokenizer(exp.teacher)
    model = load_model(model_dir, dtype=torch.float32, device=device)
    teacher = load_model(exp.teacher, dtype=dtype, device=device)
    suite, kept, dropped = load_test(exp, tokenizer)
    rows, too_long = quality_rows(exp, model, tokenizer, kept, teacher)
    del teacher
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "quality.jsonl", rows)
    quality = summarize_quality(rows, len(too_long))
    per_example: dict[str, dict[str, float]] = {
        "tokens": {row["id"]: row["tokens"] for row in rows},
        **{m: {row["id"]: row[m] for row in rows} for m in QUALITY_METRICS},
    }
    means: dict[str, float | None] = {m: quality[m] for m in QUALITY_METRICS}
    counts = {
        "test_rows": len(suite),
        "dropped_prompts": len(dropped),
        "quality_examples": len(rows),
        "quality_dropped_too_long": len(too_long),
    }

    decodings = []
    if exp.test.rouge_rows != 0:
        common = {"max_new_tokens": exp.test.max_new_tokens, "batch_size": exp.test.batch_size}
        if exp.test.greedy:
            decodings.append(("rougeL_greedy", "greedy", Decoding(greedy=True, **common)))
        if exp.test.sample_seeds:
            sampled = Decoding(seeds=exp.test.sample_seeds, temperature=1.0, **common)
            decodings.append(("rougeL_sampled", "sampled", sampled))
    for metric, folder, decoding in decodings:
        evaluate_instruction_following(
            model,
            tokenizer,
            out / folder,
            suites=[SUITE],
            sources={SUITE: exp.test.source},
            decoding=decoding,
            max_prompt_tokens=exp.test.max_prompt_tokens,
            limit=exp.test.rouge_rows,
            quality=False,
            model_spec=_shown(model_dir),
            progress=progress,
            console=Console(quiet=not progress),
        )
        # Each example's ROUGE-L, averaged over the generation seeds.
        paired = rouge_per_example(out / folder / SUITE, [stem for stem, _ in decoding.runs()])
        per_example[metric] = paired.values
        means[metric] = statistics.fmean(paired.values.values()) if paired.values else None
        counts[f"{metric}_examples"] = len(paired.values)
    for metric in ROUGE_METRICS:
        means.setdefault(metric, None)
    return {"means": means, "counts": counts, "per_example": per_example}


def validation_curve(metrics_file: Path) -> list[dict[str, Any]]:
    """Each epoch's validation metrics and distillation temperature, from the trainer's
    metrics.jsonl (a resumed run appends again: the last row of an epoch wins)."""
    epochs: dict[int, dict[str, Any]] = {}
    temperatures: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines() if metrics_file.is_file() else ():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if "val_ce" in row:
            epochs[row["epoch"]] = {
                "epoch": row["epoch"],
                "step": row["step"],
                "val_ce": row["val_ce"],
                "val_kd": row.get("val_kd"),
            }
        elif "temperature" in row:
            temperatures[row["epoch"]] = row["temperature"]
    return [{**epochs[e], "temperature": temperatures.get(e)} for e in sorted(epochs)]


def run_cell(
    exp: Experiment, cell: Cell, setup: Mapping[str, Any], *, progress: bool = True
) -> dict[str, Any]:
    """Train one cell (resuming its checkpoint), evaluate it, write its result file."""
    started, cpu_started = time.perf_counter(), time.process_time()
    run = cell_run_config(exp, cell, setup)
    folder = Path(run.output_dir)
    state_file = folder / "checkpoint" / "trainer_state.json"
    resumed = json.loads(state_file.read_text())["step"] if state_file.is_file() else None
    state = jobs.distill(run, progress=progress)
    trained = time.perf_counter()
    chosen = folder / "best" if (folder / "best").is_dir() else folder / "final"
    metrics = evaluate_student(exp, chosen, folder / "eval", progress=progress)
    finished = time.perf_counter()
    result = {
        "cell": cell.name,
        "objective_key": cell.key,
        "objective": cell.objective["objective"],
        "arm": cell.arm,
        "seed": cell.seed,
        "settings": cell_settings(exp, cell),
        "profile": exp.profile,
        "run_config": run.to_dict(),
        "training": {
            "epochs": state["epoch"],
            "steps": state["step"],
            "strategy": state["strategy"],
            "best": state.get("best"),
            "evaluated": chosen.name,
            "resumed_from_step": resumed,
            # val_kd is at each epoch's temperature (comparable across epochs only at one tau)
            "validation": validation_curve(folder / "metrics.jsonl"),
        },
        **metrics,
        # This process's time only: a resumed cell's earlier processes are not counted. CPU
        # time (all threads) is the steadier measure of the work on a machine shared with others.
        "wall_time_s": {
            "train": round(trained - started, 1),
            "evaluate": round(finished - trained, 1),
            "total": round(finished - started, 1),
        },
        "cpu_time_s": round(time.process_time() - cpu_started, 1),
        "machine": machine(),
        "finished_at": _now(),
    }
    write_json(result_path(exp, cell.name), _relative_paths(result))
    if exp.prune_finished:  # the optimiser state is dead weight once the result is written
        shutil.rmtree(folder / "checkpoint", ignore_errors=True)
    return result


def run(
    exp: Experiment, patterns: Sequence[str] | None = None, *, progress: bool = True
) -> list[str]:
    """Run the selected cells that are not finished, setup first when needed; returns the names
    of what ran. A finished cell is skipped; one finished with other settings is refused."""
    log = print if progress else (lambda *a, **k: None)
    cells = {cell.name: cell for cell in exp.cells()}
    chosen = select([SETUP, *cells], patterns)
    pending, finished = [], []
    for name in chosen:
        state, detail = status(exp, name)
        if state == "stale":
            raise ValueError(
                f"{_shown(result_path(exp, name))} was {detail}; delete it to rerun the cell "
                "(or restore the config)"
            )
        if state == "done" and name != SETUP:
            finished.append(name)
        elif name != SETUP:
            pending.append(name)
    if exp.threads is not None:
        import torch

        torch.set_num_threads(exp.threads)
    executed: list[str] = []
    setup = setup_ready(exp)
    if setup is None and (pending or SETUP in chosen):
        log("setup: running")
        setup = run_setup(exp, progress=progress)
        executed.append(SETUP)
    elif SETUP in chosen:
        log("setup: finished, skipped")
    for name in finished:
        log(f"{name}: finished, skipped")
    for name in pending:
        log(f"{name}: running")
        result = run_cell(exp, cells[name], setup, progress=progress)
        log(f"{name}: done in {_duration(result['wall_time_s']['total'])}")
        executed.append(name)
    return executed


# ------------------------------------------------------------------------------- summary


def read_cell_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every cell result file in the folder (by name: ``<key>-<arm>-seed<k>.json``)."""
    results = []
    for path in sorted(results_dir.glob("*.json")):
        if CELL_NAME.match(path.stem):
            result = read_result(path)
            if result is None or result.get("cell") != path.stem:
                raise ValueError(f"{path} is not the result file of cell {path.stem}")
            results.append(result)
    return results


def _seed_average(cells: Iterable[Mapping[str, Any]], metric: str) -> dict[str, float]:
    """Each example's value averaged over ``cells`` (the examples every cell has)."""
    tables = [cell["per_example"][metric] for cell in cells]
    ids = [i for i in tables[0] if all(i in table for table in tables[1:])]
    return {i: statistics.fmean(table[i] for table in tables) for i in ids}


def summarize(results_dir: Path) -> dict[str, Any]:
    """Per objective and metric: baseline and +SpectrumKD mean ± std over the seeds both arms
    finished, the relative gain of the means, and a two-sided Wilcoxon signed-rank test on the
    per-example values averaged over those seeds (``compare.compare_metric``); each ablation
    the same way against both arms, on the seeds all three finished."""
    results = read_cell_results(results_dir)
    if not results:
        raise ValueError(f"no cell result files in {results_dir}; run some cells first")

    def shared(settings: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k not in ("objective", "ablation")}

    reference = shared(results[0]["settings"])
    for result in results[1:]:
        settings = shared(result["settings"])
        changed = changed_settings(reference, settings)
        if changed:
            raise ValueError(
                f"{result['cell']} and {results[0]['cell']} were computed with different "
                f"{', '.join(changed[:4])}; one table cannot mix them"
            )
    setup = read_result(results_dir / f"{SETUP}.json")
    objectives: list[dict[str, Any]] = []
    for key in dict.fromkeys(r["objective_key"] for r in results):
        group = [r for r in results if r["objective_key"] == key]
        by_arm = {arm: {r["seed"]: r for r in group if r["arm"] == arm} for arm in ARMS}
        seeds = sorted(set(by_arm["baseline"]) & set(by_arm["spectrumkd"]))
        unpaired = sorted(
            f"{arm}-seed{seed}" for arm in ARMS for seed in by_arm[arm] if seed not in seeds
        )
        entry: dict[str, Any] = {
            "key": key,
            "objective": group[0]["objective"],
            "seeds": seeds,
            "unpaired": unpaired,
            "steps": {arm: [by_arm[arm][s]["training"]["steps"] for s in seeds] for arm in ARMS},
            "epochs": {arm: [by_arm[arm][s]["training"]["epochs"] for s in seeds] for arm in ARMS},
            "validation": {
                arm: _mean_curve([by_arm[arm][s] for s in seeds]) for arm in ARMS if seeds
            },
            "rows": [],
        }
        for metric in METRICS if seeds else ():
            cells = {arm: [by_arm[arm][s] for s in seeds] for arm in ARMS}
            if any(c["means"].get(metric) is None for arm in ARMS for c in cells[arm]):
                continue
            stats = {arm: _arm_stats(cells[arm], metric) for arm in ARMS}
            versus = _compare_arms(metric, cells["baseline"], cells["spectrumkd"])
            better = {"candidate": "spectrumkd", "reference": "baseline"}.get(
                versus["better"], versus["better"]
            )
            entry["rows"].append(
                {
                    "metric": metric,
                    "direction": "lower" if metric in LOWER_IS_BETTER else "higher",
                    **stats,
                    **versus,
                    "better": better,
                }
            )
        if seeds:
            entry["by_difficulty"] = difficulty_quartiles(
                {arm: [by_arm[arm][s] for s in seeds] for arm in ARMS}
            )
        entry["ablations"] = [
            _ablation_entry(name, [r for r in group if r["arm"] == name], by_arm)
            for name in dict.fromkeys(r["arm"] for r in group if r["arm"] not in ARMS)
        ]
        objectives.append(entry)
    return {
        "results_dir": _shown(results_dir),
        "files": len(results),
        "test": (
            "two-sided Wilcoxon signed-rank (scipy.stats.wilcoxon, zero differences dropped) on "
            "per-example values averaged over the seeds both compared arms finished"
        ),
        "setup": setup,
        "objectives": objectives,
        "cells": [_cell_cost(result) for result in results],
    }


def _arm_stats(cells: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    values = [c["means"][metric] for c in cells]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "per_seed": values,
    }


def _compare_arms(
    metric: str, reference: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """``candidate`` against ``reference`` (the same seeds, in order) on one metric: the relative
    gain of the seed means, the seeds on which the candidate is better, and a two-sided Wilcoxon
    signed-rank test on the per-example values averaged over the seeds."""
    from spectrumkd.evaluation.compare import Paired, compare_metric, relative_gain

    lower = metric in LOWER_IS_BETTER
    weights = None
    if metric in QUALITY_METRICS:  # token-weighted, as the quality summary is
        weights = {i: float(n) for i, n in reference[0]["per_example"]["tokens"].items()}
    test = compare_metric(
        "test",
        metric if metric in QUALITY_METRICS else "rougeL",
        Paired(_seed_average(reference, metric), weights=weights),
        Paired(_seed_average(candidate, metric), weights=weights),
    )
    ref_seeds = [c["means"][metric] for c in reference]
    new_seeds = [c["means"][metric] for c in candidate]
    base, new = statistics.fmean(ref_seeds), statistics.fmean(new_seeds)
    # Same-seed pairs where the candidate is better: the consistency across training seeds,
    # which the per-example test (on seed averages) does not see.
    seed_wins = sum((n < b) == lower and n != b for b, n in zip(ref_seeds, new_seeds, strict=True))
    return {
        "gain_pct": relative_gain(base, new),
        "better": "tie" if new == base else ("candidate" if (new < base) == lower else "reference"),
        "seed_wins": seed_wins,
        "p_value": test["p_value"],
        "n_pairs": test["n_pairs"],
        "n_nonzero": test["n_nonzero"],
        "note": test.get("note", ""),
    }


def _ablation_entry(
    name: str,
    results: Sequence[Mapping[str, Any]],
    by_arm: Mapping[str, Mapping[int, Mapping[str, Any]]],
) -> dict[str, Any]:
    """One ablation against both arms of its objective, on the seeds all three finished."""
    changes = results[0]["settings"].get("ablation", {})
    for result in results[1:]:
        if result["settings"].get("ablation", {}) != changes:
            raise ValueError(
                f"{result['cell']} and {results[0]['cell']} are ablation {name} with different "
                "changes; one table cannot mix them (delete the outdated result files)"
            )
    mine = {r["seed"]: r for r in results}
    seeds = sorted(set(mine) & set(by_arm["baseline"]) & set(by_arm["spectrumkd"]))
    cells = {
        "baseline": [by_arm["baseline"][s] for s in seeds],
        "spectrumkd": [by_arm["spectrumkd"][s] for s in seeds],
        "ablation": [mine[s] for s in seeds],
    }
    rows = []
    for metric in METRICS if seeds else ():
        if any(c["means"].get(metric) is None for group in cells.values() for c in group):
            continue
        rows.append(
            {
                "metric": metric,
                "direction": "lower" if metric in LOWER_IS_BETTER else "higher",
                **{arm: _arm_stats(group, metric) for arm, group in cells.items()},
                "vs_baseline": _compare_arms(metric, cells["baseline"], cells["ablation"]),
                "vs_spectrumkd": _compare_arms(metric, cells["spectrumkd"], cells["ablation"]),
            }
        )
    return {
        "name": name,
        "changes": changes,
        "seeds": seeds,
        "unpaired": sorted(f"seed{s}" for s in mine if s not in seeds),
        "steps": [c["training"]["steps"] for c in cells["ablation"]],
        "validation": _mean_curve(cells["ablation"]) if seeds else None,
        "rows": rows,
    }


def difficulty_quartiles(cells: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Where the arms differ: the test examples in four groups by difficulty, each group's
    token-weighted mean difference (+SpectrumKD − baseline) of every quality metric.

    An example's difficulty is its CE averaged over both arms (and the seeds), so that neither
    arm's noise decides the groups; groups are quartiles of that order (ties by id), the first
    ones one example larger when the count does not divide by four."""
    metrics = [
        m
        for m in QUALITY_METRICS
        if all(cell["per_example"].get(m) for arm in ARMS for cell in cells[arm])
    ]
    if "ce" not in metrics:
        return []
    values = {arm: {m: _seed_average(cells[arm], m) for m in metrics} for arm in ARMS}
    tokens = cells["baseline"][0]["per_example"]["tokens"]
    ids = [i for i in values["baseline"]["ce"] if i in values["spectrumkd"]["ce"]]
    difficulty = {i: (values["baseline"]["ce"][i] + values["spectrumkd"]["ce"][i]) / 2 for i in ids}
    ordered = sorted(ids, key=lambda i: (difficulty[i], i))
    size, extra = divmod(len(ordered), 4)
    groups, start = [], 0
    for q in range(4):
        end = start + size + (q < extra)
        groups.append(ordered[start:end])
        start = end
    rows = []
    for q, group in enumerate(groups, start=1):
        if not group:
            continue
        weight = sum(float(tokens[i]) for i in group)
        row: dict[str, Any] = {
            "quartile": q,
            "examples": len(group),
            "mean_ce": statistics.fmean(difficulty[i] for i in group),
            "spectrumkd_worse_ce": sum(
                values["spectrumkd"]["ce"][i] > values["baseline"]["ce"][i] for i in group
            ),
        }
        for metric in metrics:
            row[f"diff_{metric}"] = (
                sum(
                    (values["spectrumkd"][metric][i] - values["baseline"][metric][i])
                    * float(tokens[i])
                    for i in group
                )
                / weight
            )
        rows.append(row)
    return rows


def _mean_curve(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """Validation CE per epoch averaged over ``cells`` (None when a cell has no curve)."""
    curves = [cell["training"].get("validation") for cell in cells]
    if not curves or any(not curve for curve in curves) or len({len(c) for c in curves}) > 1:
        return None
    return [
        {
            "epoch": rows[0]["epoch"],
            "val_ce": statistics.fmean(row["val_ce"] for row in rows),
            "temperature": rows[0]["temperature"],
        }
        for rows in zip(*curves, strict=True)
    ]


def _cell_cost(result: Mapping[str, Any]) -> dict[str, Any]:
    training, machine_info = result["training"], result.get("machine") or {}
    best = training.get("best") or {}
    return {
        "cell": result["cell"],
        "epochs": training["epochs"],
        "steps": training["steps"],
        "evaluated": training.get("evaluated"),
        "best_epoch": best.get("epoch"),
        "resumed_from_step": training.get("resumed_from_step"),
        "wall_time_s": result.get("wall_time_s") or {},
        "cpu_time_s": result.get("cpu_time_s"),
        "torch_threads": machine_info.get("torch_threads"),
        "device": machine_info.get("device"),
        "finished_at": result.get("finished_at"),
    }


def _number(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if metric in ROUGE_METRICS else f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _curve_text(curve: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(
        f"{row['epoch']}: {row['val_ce']:.4f} (tau {row['temperature']:g})"
        if row["temperature"] is not None
        else f"{row['epoch']}: {row['val_ce']:.4f}"
        for row in curve
    )


def _versus(comparison: Mapping[str, Any], seeds: int) -> str:
    gain = "–" if comparison["gain_pct"] is None else f"{comparison['gain_pct']:+.2f}"
    return f"{gain} (p {_p(comparison['p_value'])}; better on {comparison['seed_wins']}/{seeds})"


def _ablation_markdown(ablation: Mapping[str, Any]) -> list[str]:
    changes = ", ".join(f"{k} {v}" for k, v in ablation["changes"].items())
    seeds = ", ".join(map(str, ablation["seeds"])) or "none"
    lines = [
        f"### Ablation `{ablation['name']}`: +SpectrumKD with {changes}",
        "",
        f"Seeds {seeds}, those all three arms finished (the baseline and +SpectrumKD columns "
        f"are over these seeds only); optimiser steps {ablation['steps']}."
        + (f" Unpaired: {', '.join(ablation['unpaired'])}." if ablation["unpaired"] else ""),
        "",
    ]
    if ablation["rows"]:
        lines += [
            "| metric | baseline | +SpectrumKD | ablation | gain % vs baseline (p; seeds "
            "ablation better) | gain % vs +SpectrumKD (p; seeds ablation better) |",
            "|---|---|---|---|---|---|",
        ]
        for row in ablation["rows"]:
            metric = row["metric"]
            arrow = "↓" if row["direction"] == "lower" else "↑"
            means = " | ".join(
                _number(row[arm]["mean"], metric)
                + ("" if row[arm]["std"] is None else f" ± {_number(row[arm]['std'], metric)}")
                for arm in ("baseline", "spectrumkd", "ablation")
            )
            n = len(ablation["seeds"])
            lines.append(
                f"| {METRIC_LABELS[metric]} {arrow} | {means} | {_versus(row['vs_baseline'], n)} "
                f"| {_versus(row['vs_spectrumkd'], n)} |"
            )
        lines.append("")
    if ablation.get("validation"):
        lines += [f"Validation CE by epoch: {_curve_text(ablation['validation'])}.", ""]
    return lines


def summary_markdown(summary: Mapping[str, Any]) -> str:
    lines = [
        "# SpectrumKD evidence: baseline vs +SpectrumKD per KD objective",
        "",
        f"Generated by `experiments/run.py summarize` from {summary['files']} result files in "
        f"`{summary['results_dir']}`. Means over training seeds ± sample standard deviation; "
        "gain = (+SpectrumKD − baseline) / baseline × 100 (negative is better for CE and KL); "
        f"p: {summary['test']}.",
        "",
    ]
    setup = summary.get("setup")
    if setup:
        lines += ["## Setup", ""]
        data, test = setup["data"], setup["test"]
        lines.append(
            f"- Train rows: {data['train']} (+ {data['validation']} validation) of "
            f"{data['source_rows']}; {data['dropped_too_long']} dropped as too long, "
            f"{len(data['removed_test_prompt_overlap'])} removed for sharing a test prompt."
        )
        lines.append(
            f"- Test rows: {test['quality_examples']} of {test['rows']} "
            f"({test['dropped_prompts']} prompts too long, {test['quality_dropped_too_long']} "
            "examples too long)."
        )
        parity = setup["spectrumkd"]
        lines.append(
            f"- Step parity: baseline {parity['baseline_epochs']} epochs on {parity['n_examples']} "
            f"rows; +SpectrumKD {parity['epochs']} epochs (warm-up {parity['warmup_epochs']}) on "
            f"a window of {parity['window']}."
        )
        rho = setup["spearman"]
        lines.append(
            f"- Spearman rho between the initial student's and the teacher's difficulties on "
            f"the train rows: {rho['rho']:.3f} (p {_p(rho['p_value'])}, n {rho['n']})."
        )
        lines += [
            "",
            "| model | CE | KL(teacher ‖ model) | KL(model ‖ teacher) |",
            "|---|---|---|---|",
        ]
        for label, scores in setup["scores"].items():
            lines.append(
                f"| {label} | {_number(scores['ce'], 'ce')} | "
                f"{_number(scores['kl_forward'], 'ce')} | {_number(scores['kl_reverse'], 'ce')} |"
            )
        lines.append("")
    claims = []
    for entry in summary["objectives"]:
        seeds = ", ".join(map(str, entry["seeds"])) or "none"
        lines += [f"## {entry['objective']} (`{entry['key']}`)", ""]
        steps = entry["steps"]
        lines.append(
            f"Seeds {seeds}; optimiser steps baseline {steps['baseline']}, "
            f"+SpectrumKD {steps['spectrumkd']}."
            + (
                f" Unpaired cells left out: {', '.join(entry['unpaired'])}."
                if entry["unpaired"]
                else ""
            )
        )
        lines += [
            "",
            "| metric | baseline | +SpectrumKD | gain % | better | seeds +SpectrumKD better "
            "| Wilcoxon p | pairs differing / all |",
            "|---|---|---|---|---|---|---|---|",
        ]
        verdicts = {}
        for row in entry["rows"]:
            metric = row["metric"]
            arrow = "↓" if row["direction"] == "lower" else "↑"
            cells = []
            for arm in ARMS:
                stats = row[arm]
                std = "" if stats["std"] is None else f" ± {_number(stats['std'], metric)}"
                cells.append(f"{_number(stats['mean'], metric)}{std}")
            gain = "–" if row["gain_pct"] is None else f"{row['gain_pct']:+.2f}"
            better = ARM_LABELS.get(row["better"], row["better"])
            lines.append(
                f"| {METRIC_LABELS[metric]} {arrow} | {cells[0]} | {cells[1]} | {gain} | {better} "
                f"| {row['seed_wins']}/{len(entry['seeds'])} "
                f"| {_p(row['p_value'])} | {row['n_nonzero']}/{row['n_pairs']} |"
            )
            if metric in PRIMARY:
                significant = row["p_value"] is not None and row["p_value"] < 0.05
                verdicts[metric] = (
                    f"{better} better, p {_p(row['p_value'])}"
                    if significant
                    else f"no significant difference (p {_p(row['p_value'])})"
                )
        claims.append((entry, verdicts))
        lines.append("")
        if entry.get("by_difficulty"):
            lines += [
                "By difficulty (test examples in quartiles of their CE averaged over both arms; "
                "token-weighted mean difference +SpectrumKD − baseline, negative favours "
                "+SpectrumKD):",
                "",
                "| quartile | examples | mean CE | Δ CE | Δ KL(teacher ‖ student) "
                "| Δ KL(student ‖ teacher) | +SpectrumKD worse on CE |",
                "|---|---|---|---|---|---|---|",
            ]
            for row in entry["by_difficulty"]:
                lines.append(
                    f"| {row['quartile']} | {row['examples']} | {row['mean_ce']:.2f} "
                    f"| {_signed(row.get('diff_ce'))} | {_signed(row.get('diff_kl_forward'))} "
                    f"| {_signed(row.get('diff_kl_reverse'))} "
                    f"| {row['spectrumkd_worse_ce']} of {row['examples']} |"
                )
            lines.append("")
        curves = entry.get("validation") or {}
        if all(curves.get(arm) for arm in ARMS):
            lines.append(
                "Validation CE by epoch (the held-out training rows, mean over the seeds; "
                "tau of the epoch in brackets):"
            )
            lines.append("")
            for arm in ARMS:
                lines.append(f"- {ARM_LABELS[arm]}: {_curve_text(curves[arm])}")
            lines.append("")
        for ablation in entry.get("ablations") or ():
            lines += _ablation_markdown(ablation)
    if claims:
        lines += [
            "## The claim, on the primary metrics",
            "",
            "| objective | seeds | " + " | ".join(METRIC_LABELS[m] for m in PRIMARY) + " |",
            "|---|---|" + "---|" * len(PRIMARY),
        ]
        for entry, verdicts in claims:
            lines.append(
                f"| {entry['objective']} | {len(entry['seeds'])} | "
                + " | ".join(verdicts.get(m, "–") for m in PRIMARY)
                + " |"
            )
        lines.append("")
    if summary.get("cells"):
        lines += [
            "## Cells",
            "",
            "Wall and CPU time of the process that finished each cell (a resumed cell's earlier "
            "processes are not counted).",
            "",
            "| cell | epochs | steps | kept epoch | train | evaluate | total | CPU time "
            "| torch threads | device | finished (UTC) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for cost in summary["cells"]:
            wall = cost["wall_time_s"]
            kept = cost["best_epoch"] if cost["evaluated"] == "best" else cost["evaluated"]
            lines.append(
                f"| {cost['cell']} | {cost['epochs']} | {cost['steps']} | {kept} "
                f"| {_duration(wall.get('train'))} | {_duration(wall.get('evaluate'))} "
                f"| {_duration(wall.get('total'))} | {_duration(cost['cpu_time_s'])} "
                f"| {cost['torch_threads']} | {cost['device']} | {cost['finished_at']} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_summary(exp: Experiment) -> tuple[Path, str]:
    summary = summarize(exp.results_dir)
    text = summary_markdown(summary)
    write_json(exp.results_dir / "summary.json", summary)
    path = exp.results_dir / "summary.md"
    from spectrumkd.io import atomic_write_text

    atomic_write_text(path, text)
    return path, text


# ------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="experiments/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment YAML")
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting of the merged profile, e.g. test.rouge_rows=16",
    )
    parser.add_argument("--list", action="store_true", help="print the cells and their status")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("cells", help="print the cells and their status")
    run_parser = commands.add_parser("run", help="run the cells that are not finished")
    run_parser.add_argument(
        "--cell",
        action="append",
        default=None,
        metavar="PATTERN",
        help="only cells matching this name or glob (repeatable), e.g. 'fkl-*-seed1' (the "
        "pair and any ablation of seed 1) or setup",
    )
    commands.add_parser("summarize", help="write results/summary.md from the result files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        exp = load_experiment(args.config, args.profile, args.set)
        if args.list or args.command in (None, "cells"):
            print(cells_table(exp))
        elif args.command == "run":
            executed = run(exp, args.cell, progress=not args.quiet)
            print(f"ran {len(executed)}: {', '.join(executed) or 'nothing (all finished)'}")
        else:
            path, text = write_summary(exp)
            print(text)
            print(f"wrote {_shown(path)}")
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
