"""One YAML file holds a whole distillation run; ``--set a.b=value`` overrides any field.

teacher: smollm2                  # model spec (see spectrumkd.models)
student: runs/demo/student
output_dir: runs/distill
data: {source: embedded:dolly, template: instruction, max_length: 256}
teacher_cache_k: 64               # optional: train from the teacher's cached top-64 logits
curation:                         # omit for the plain baseline
  strategy: spectrumkd            # or pocl, srd, baby_step, ... (curation.strategies)
  difficulties: runs/demo/scores/difficulties.jsonl   # omit to score the student first
  metric: null                    # with no difficulties: the strategy's default metric
  lambda_a: 0.1                   # the strategy's own settings, flat
  lambda_b: 0.1
  epochs: 25
  warmup_epochs: 5
train: {objective: forward_kl, alpha: 0.3, batch_size: 8, learning_rate: 5.0e-5}
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spectrumkd.curation.config import SpectrumKDConfig
from spectrumkd.curation.schedule import SpectrumKD
from spectrumkd.curation.strategies import strategy_settings, strategy_spec
from spectrumkd.data.config import DataConfig
from spectrumkd.distillation.train_config import TrainConfig

DEFAULT_STRATEGY = SpectrumKD.name  # what a curation section without a strategy means


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string (it wants ``1.0e-4``); learning rates are written
    the first way, so floats in exponent notation without a dot are recognised too."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# The curation section's own keys; every other key is a setting of the chosen strategy.
CURATION_KEYS = ("strategy", "difficulties", "metric", "metric_options")


@dataclass(frozen=True)
class CurationConfig:
    """``curation: {strategy, difficulties, metric, metric_options, <the strategy's settings,
    flat>}``.

    ``settings`` is the strategy's settings dataclass (``SpectrumKDConfig`` for the default
    ``spectrumkd``); ``metric`` is the difficulty the student is scored by when there is no
    ``difficulties`` table (None: the strategy's default metric), with ``metric_options`` (e.g.
    ``{problems: mbpp.jsonl}`` for code_execution, a generation cap for reflection_rouge).
    """

    difficulties: str | None = None  # a difficulty JSONL; None: score the student first
    settings: Any = field(default_factory=SpectrumKDConfig)
    strategy: str = DEFAULT_STRATEGY
    metric: str | None = None
    metric_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = strategy_spec(self.strategy).settings
        if not isinstance(self.settings, expected):
            raise ValueError(
                f"the {self.strategy} strategy takes {expected.__name__} settings, "
                f"not {type(self.settings).__name__}"
            )
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric):
            raise ValueError(f"curation.metric takes a metric name or null, not {self.metric!r}")
        if not isinstance(self.metric_options, dict):
            raise ValueError(
                f"curation.metric_options takes a mapping of options, not {self.metric_options!r}"
            )
        if strategy_spec(self.strategy).planned_by_distill and (
            self.difficulties is not None or self.metric is not None or self.metric_options
        ):
            raise ValueError(
                f"the {self.strategy} strategy measures the run's models instead of ranking by "
                "a difficulty table: drop curation.difficulties, metric and metric_options"
            )
        if self.difficulties is not None and (self.metric is not None or self.metric_options):
            raise ValueError(
                "curation.metric and metric_options choose how the student is scored when "
                "there is no difficulties table; drop them or set difficulties to null"
            )

    @property
    def spectrumkd(self) -> SpectrumKDConfig:
        """The SpectrumKD settings (what ``run.curation.spectrumkd`` always meant)."""
        if not isinstance(self.settings, SpectrumKDConfig):
            raise ValueError(f"curation.strategy is {self.strategy}, not spectrumkd")
        return self.settings

    @property
    def scoring_metric(self) -> str | None:
        """The metric a student is scored by when the run has no difficulty table (None for a
        strategy that measures the models itself: DDK, fixed mixing, DA-KD)."""
        return self.metric or strategy_spec(self.strategy).default_metric

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CurationConfig:
        if not isinstance(values, dict):
            raise ValueError("'curation' must be a mapping of settings (or null for no curation)")
        values = dict(values)
        strategy = values.pop("strategy", None) or DEFAULT_STRATEGY
        if not isinstance(strategy, str):
            raise ValueError(f"curation.strategy takes a strategy name, not {strategy!r}")
        spec = strategy_spec(strategy)  # an unknown name: one line listing the known ones
        difficulties = values.pop("difficulties", None)
        if difficulties is not None and not isinstance(difficulties, str):
            raise ValueError(
                f"curation.difficulties takes a file path or null, not {difficulties!r}"
            )
        metric = values.pop("metric", None)
        metric_options = values.pop("metric_options", None) or {}
        known = {f.name for f in dataclasses.fields(spec.settings)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown curation setting(s) {', '.join(unknown)} for strategy {strategy}; "
                f"known: {', '.join([*CURATION_KEYS, *sorted(known)])}"
            )
        _refuse_wrong_types("curation", values, spec.settings)
        settings = strategy_settings(strategy, values)
        return cls(difficulties, settings, strategy, metric, metric_options)

    def to_dict(self) -> dict[str, Any]:
        """Flat, as a config file writes it; ``strategy`` and ``metric`` only where they are not
        the defaults, so a SpectrumKD run's ``run_config.yaml`` reads as it always did."""
        values: dict[str, Any] = {}
        if self.strategy != DEFAULT_STRATEGY:
            values["strategy"] = self.strategy
        values["difficulties"] = self.difficulties
        if self.metric is not None:
            values["metric"] = self.metric
        if self.metric_options:
            values["metric_options"] = dict(self.metric_options)
        return {**values, **settings_dict(self.settings)}


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as plain YAML values (tuples as lists: ``yaml.safe_dump`` writes
    neither tuples nor dataclasses)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(settings).items()}


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML config file's top-level mapping, with one-line errors for a missing file, invalid
    YAML or a top level that is not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of settings at the top level")
    return values


@dataclass(frozen=True)
class RunConfig:
    teacher: str
    student: str
    output_dir: str
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    curation: CurationConfig | None = None
    dtype: str = "auto"
    device: str = "auto"
    # Offline teacher: train from its top-k logits, computed once (0: the live teacher).
    teacher_cache_k: int = 0
    teacher_cache_root: str = "runs/teacher-cache"

    def __post_init__(self) -> None:
        if self.teacher_cache_k < 0:
            raise ValueError(f"teacher_cache_k={self.teacher_cache_k} must be >= 0 (0: live)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        values = dict(values)
        _refuse_unknown("run config", values, cls)
        for required in ("teacher", "student", "output_dir"):
            if not values.get(required):
                raise ValueError(f"the run config needs '{required}'")
        data = _build(DataConfig, values.pop("data", None) or {}, "data")
        train = _build(TrainConfig, values.pop("train", None) or {}, "train")
        curation = values.pop("curation", None)
        if curation is not None:
            curation = CurationConfig.from_dict(curation)
        return cls(data=data, train=train, curation=curation, **values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] = ()) -> RunConfig:
        values = read_yaml_mapping(path)
        for override in overrides:
            apply_override(values, override)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        if self.curation is not None:
            values["curation"] = self.curation.to_dict()
        return values


def apply_override(values: dict, override: str) -> None:
    """``"train.learning_rate=1e-4"`` -> values["train"]["learning_rate"] = 1e-4 (YAML-typed)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ValueError(
            f"--set {override!r}: write it as section.field=value, e.g. train.epochs=3"
        )
    *sections, name = key.split(".")
    target = values
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ValueError(f"--set {override!r}: {section!r} is not a section")
    target[name] = load_yaml(raw)


def _refuse_unknown(where: str, values: dict, cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown {where} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


SCALARS = (bool, int, float, str)


def _scalar_types(annotation: Any) -> tuple[type, ...] | None:
    """The scalar types a field takes (``int``, ``float | None``, ...), or None for anything
    richer (lists, mappings, literals), which the dataclass checks itself."""
    if annotation in SCALARS:
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if all(member in SCALARS or member is type(None) for member in members):
            return members
    return None


def _refuse_wrong_types(where: str, values: dict, cls: type) -> None:
    # YAML and --set give a word or a fraction where a count belongs without complaint, and
    # the dataclass's range checks would then fail with a TypeError (or, for 2.5 epochs, not
    # at all): one line naming the setting instead.
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation this Python cannot resolve: no check
        return
    for name, value in values.items():
        allowed = _scalar_types(hints.get(name))
        if allowed is None or (value is None and type(None) in allowed):
            continue
        if isinstance(value, bool):
            fits = bool in allowed
        elif isinstance(value, int):
            fits = int in allowed or float in allowed  # 3 is a fine learning-rate-like float
        else:
            fits = isinstance(value, allowed)
        if not fits:
            kinds = " or ".join(t.__name__ if t is not type(None) else "null" for t in allowed)
            raise ValueError(f"{where}.{name} takes {kinds}, not {value!r}")


def _build(cls: type, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"'{where}' must be a mapping of settings")
    _refuse_unknown(f"{where}", values, cls)
    _refuse_wrong_types(where, values, cls)
    return cls(**values)
