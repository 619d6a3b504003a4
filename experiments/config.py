"""The experiment's settings: ``config.yaml`` with a profile merged over it and ``--set`` applied,
validated once into an :class:`Experiment` (and the :class:`Cell` list it implies), so that a
mistake in the config is refused before anything runs."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrumkd.curation import SpectrumKDConfig
from spectrumkd.data import DataConfig, FieldMap
from spectrumkd.distillation import TrainConfig, apply_override, read_yaml_mapping

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "experiments" / "config.yaml"
PROFILES = ("cpu", "gpu", "paper_cpu")
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
    "lr_selection",
}
# Settings that change where things are written or how fast, not what is computed.
NOT_RESULT_SETTINGS = ("results_dir", "runs_dir", "threads", "prune_finished")
PER_CELL_TRAIN = ("objective", "objective_params", "seed", "epochs")
TEST_METRICS = ("ce", "kl_forward", "kl_reverse", "rougeL_greedy", "rougeL_sampled")
SPECTRUMKD_KEYS = {
    "lambda_a",
    "lambda_b",
    "tau_start",
    "tau_end",
    "step_mode",
    "direction",
    "warmup_fraction",
}


@dataclass(frozen=True)
class TestSettings:
    """Which test rows, and how each cell's student is evaluated on them."""

    source: str
    limit: int | None = None
    max_prompt_tokens: int = 256
    quality_max_length: int = 768
    batch_size: int = 8  # CE/KL of prompt + reference (with the teacher's logits)
    # Rows decoded at a time (continuous batching refills freed rows); None: batch_size.
    decode_batch_size: int | None = None
    rouge_rows: int | None = 160  # None: every row; 0: no generation
    greedy: bool = True
    sample_seeds: tuple[int, ...] = (10,)
    max_new_tokens: int = 128
    # The checkpoint of the lowest validation CE evaluated beside the selected one (when the
    # run selects on validation ROUGE-L and the two epochs differ).
    evaluate_ce_selected: bool = False
    # The metrics the summary's claim is made on (the paper's regime: sampled ROUGE-L).
    primary: tuple[str, ...] = ("ce", "kl_forward")

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample_seeds", tuple(self.sample_seeds or ()))
        object.__setattr__(self, "primary", tuple(self.primary or ()))
        for name in ("max_prompt_tokens", "quality_max_length", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"test.{name}={getattr(self, name)} must be >= 1")
        if self.decode_batch_size is not None and self.decode_batch_size < 1:
            raise ValueError(f"test.decode_batch_size={self.decode_batch_size} must be >= 1")
        if self.rouge_rows is not None and self.rouge_rows < 0:
            raise ValueError(f"test.rouge_rows={self.rouge_rows} must be >= 0 (null: every row)")
        if len(set(self.sample_seeds)) != len(self.sample_seeds):
            raise ValueError(f"test.sample_seeds {list(self.sample_seeds)} must be distinct")
        unknown = sorted(set(self.primary) - set(TEST_METRICS))
        if unknown or not self.primary:
            raise ValueError(
                f"test.primary={list(self.primary)} must name some of {', '.join(TEST_METRICS)}"
            )


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
class LrSelection:
    """The learning rate chosen once, on the validation rows, by the baseline of one objective
    and seed trained at each rate of ``grid``; every cell then trains at the chosen rate."""

    grid: tuple[float, ...]
    objective: str
    seed: int


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
    lr_selection: LrSelection | None = None

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
        for k in TOP_LEVEL - {"heal", "threads", "prune_finished", "ablations", "lr_selection"}
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
    lr_selection = _lr_selection(settings.get("lr_selection"), train, objectives, seeds)
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
        lr_selection=lr_selection,
    )


def _lr_selection(
    value: Any, train: Mapping[str, Any], objectives: Mapping[str, Any], seeds: list[int]
) -> LrSelection | None:
    """``lr_selection: {grid, objective, seed}``; the cells' rate then comes from the choice, so
    ``train.learning_rate`` must be left unset."""
    if value is None:
        return None
    values = _mapping(value, "lr_selection", {"grid", "objective", "seed"})
    grid = values.get("grid")
    if (
        not isinstance(grid, list)
        or not grid
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in grid)
        or len(set(grid)) != len(grid)
    ):
        raise ValueError(f"lr_selection.grid={grid!r} must list distinct learning rates > 0")
    objective = values.get("objective", next(iter(objectives)))
    if objective not in objectives:
        raise ValueError(
            f"lr_selection.objective={objective!r} is not one of {', '.join(objectives)}"
        )
    seed = values.get("seed", seeds[0])
    if seed not in seeds:
        raise ValueError(f"lr_selection.seed={seed!r} is not one of seeds {seeds}")
    if "learning_rate" in train:
        raise ValueError(
            "train.learning_rate is chosen by lr_selection; remove it (or remove lr_selection)"
        )
    return LrSelection(tuple(float(v) for v in grid), objective, seed)
