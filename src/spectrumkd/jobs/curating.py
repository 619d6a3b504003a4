"""The curate job: any strategy's plan from difficulties, written as ``schedule.json``; and the
plan of a run config (scoring the student first when the run has no difficulty table)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spectrumkd.curation import (
    SCHEDULE_FILE,
    CurriculumPlan,
    SpectrumKD,
    choose_ratios,
    write_curation,
)
from spectrumkd.curation.strategies import (
    STRATEGIES,
    build_strategy,
    strategy_names,
    strategy_settings,
    strategy_spec,
)
from spectrumkd.distillation import RunConfig
from spectrumkd.distillation.run_config import DEFAULT_STRATEGY, settings_dict
from spectrumkd.io import write_json
from spectrumkd.jobs.inputs import DistillInputs, forward_settings
from spectrumkd.jobs.measured_plans import measured_plan
from spectrumkd.jobs.scoring import student_difficulties
from spectrumkd.scoring import DifficultyTable, read_difficulties


def strategy_of(config: Any, strategy: str | None) -> str:
    """The strategy a call means: ``strategy`` when named, else the one whose settings class
    ``config`` is (SpectrumKD for None or a mapping)."""
    if strategy is not None:
        strategy_spec(strategy)  # an unknown name: one line listing the known ones
        return strategy
    if config is None or isinstance(config, Mapping):
        return DEFAULT_STRATEGY
    owners = [name for name, spec in STRATEGIES.items() if type(config) is spec.settings]
    if len(owners) == 1:
        return owners[0]
    if not owners:
        raise ValueError(
            f"{type(config).__name__} is no strategy's settings; give a mapping or the settings "
            f"of one of {', '.join(strategy_names())}"
        )
    raise ValueError(
        f"{type(config).__name__} is the settings of {' and '.join(owners)}: name the strategy "
        "(strategy=... or --strategy)"
    )


def curate(
    ids: list[str],
    difficulties: np.ndarray,
    config: Any,
    out_dir: str | Path,
    *,
    strategy: str | None = None,
    auto_lambda_b: bool = False,
    quantile: float = 0.9,
    table: DifficultyTable | None = None,
) -> CurriculumPlan:
    """The plan of ``strategy`` (any of :data:`~spectrumkd.curation.STRATEGIES`; by default the
    one whose settings ``config`` is, SpectrumKD for None or a mapping) over ``difficulties``
    (lower = easier), written as ``out_dir/schedule.json``: one format for every strategy, the
    strategy and its settings recorded. ``config`` is the strategy's settings dataclass, a
    mapping of its settings, or None for its defaults.

    SpectrumKD also writes its spectrum (``out_dir/spectrum.jsonl``, ranks and zones); with
    ``auto_lambda_b`` the analyzer chooses ``lambda_b`` from a log-normal fit of the losses
    (:mod:`spectrumkd.curation.analyzer`) and the schedule records what it chose and why;
    ``table`` (the cross-entropy the difficulties came from) adds its columns to the spectrum."""
    name = strategy_of(config, strategy)
    spec = strategy_spec(name)
    settings = config if isinstance(config, spec.settings) else strategy_settings(name, config)
    if name != "spectrumkd":
        if auto_lambda_b:
            raise ValueError(
                f"an automatic lambda_b is SpectrumKD's; the {name} strategy has no lambda_b"
            )
        plan = build_strategy(name, settings).plan(ids, difficulties)
        plan = with_settings(plan, settings)
        write_json(Path(out_dir) / SCHEDULE_FILE, plan.to_dict())
        return plan
    analysis = None
    if auto_lambda_b:
        analysis = choose_ratios(difficulties, lambda_a=settings.lambda_a, quantile=quantile)
        settings = dataclasses.replace(settings, lambda_b=analysis.lambda_b)
    spectrumkd = SpectrumKD(settings)
    spectrum = spectrumkd.spectrum(ids, difficulties)
    plan = with_settings(spectrumkd.plan_from_spectrum(spectrum), settings)
    if analysis is not None:
        plan = dataclasses.replace(plan, metadata={**plan.metadata, "analyzer": analysis.to_dict()})
    write_curation(plan, spectrum, out_dir, table)
    return plan


def with_settings(plan: CurriculumPlan, settings: Any) -> CurriculumPlan:
    """The plan with its strategy's settings in ``metadata["settings"]`` (where the strategy
    did not record them itself), so every ``schedule.json`` says how it was made."""
    if "settings" in plan.metadata:
        return plan
    return dataclasses.replace(
        plan, metadata={"settings": settings_dict(settings), **plan.metadata}
    )


def curation_plan(
    run: RunConfig, inputs: DistillInputs, *, progress: bool = True
) -> CurriculumPlan | None:
    """The run's curriculum (None for the baseline), written into ``run.output_dir``: from the
    difficulty table ``run.curation.difficulties``, or from scoring the untrained student on
    the training rows first (into ``output_dir/scores``) with ``run.curation.metric`` (the
    strategy's default metric when unset)."""
    if run.curation is None:
        return None
    if strategy_spec(run.curation.strategy).planned_by_distill:  # DDK, mixing, DA-KD
        return measured_plan(run, inputs)
    out = Path(run.output_dir)
    if run.curation.difficulties is not None:
        ids, values = read_difficulties(run.curation.difficulties)
        # The table may cover held-out or length-dropped rows: curate the training rows only.
        training = {e.id for e in inputs.train_examples}
        keep = [i for i, id_ in enumerate(ids) if id_ in training]
        ids, values = [ids[i] for i in keep], values[keep]
    else:
        scored = student_difficulties(
            run.curation.scoring_metric,
            inputs.student,
            inputs.tokenizer,
            inputs.train_examples,
            out / "scores",
            texts=list(inputs.texts.values()) or None,
            settings=forward_settings(run.train),
            progress=progress,
            **run.curation.metric_options,
        )
        ids, values = scored.ids, scored.difficulties
    return curate(ids, values, run.curation.settings, out, strategy=run.curation.strategy)
