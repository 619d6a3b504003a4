"""The curate job: any strategy's plan from difficulties, written as ``schedule.json``; and the
plan of a run config (scoring the student first when the run has no difficulty table)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from spectrumkd.curation import (
    CurriculumPlan,
    SpectrumKD,
    SpectrumKDConfig,
    choose_ratios,
    write_curation,
)
from spectrumkd.distillation import RunConfig
from spectrumkd.jobs.inputs import DistillInputs, forward_settings
from spectrumkd.scoring import read_difficulties, score_examples


def curate(
    ids: list[str],
    difficulties: np.ndarray,
    config: SpectrumKDConfig,
    out_dir: str | Path,
    *,
    auto_lambda_b: bool = False,
    quantile: float = 0.9,
) -> CurriculumPlan:
    """Spectrum and schedule of ``difficulties`` into ``out_dir/schedule.json`` and
    ``out_dir/spectrum.jsonl``. With ``auto_lambda_b`` the analyzer chooses ``lambda_b`` from a
    log-normal fit of the losses (:mod:`spectrumkd.curation.analyzer`) and the schedule records
    what it chose and why."""
    analysis = None
    if auto_lambda_b:
        analysis = choose_ratios(difficulties, lambda_a=config.lambda_a, quantile=quantile)
        config = dataclasses.replace(config, lambda_b=analysis.lambda_b)
    strategy = SpectrumKD(config)
    spectrum = strategy.spectrum(ids, difficulties)
    plan = strategy.plan_from_spectrum(spectrum)
    if analysis is not None:
        plan = dataclasses.replace(plan, metadata={**plan.metadata, "analyzer": analysis.to_dict()})
    write_curation(plan, spectrum, out_dir)
    return plan


def curation_plan(
    run: RunConfig, inputs: DistillInputs, *, progress: bool = True
) -> CurriculumPlan | None:
    """The run's curriculum (None for the baseline), written into ``run.output_dir``: from the
    difficulty table ``run.curation.difficulties``, or from scoring the untrained student on
    the training rows first (into ``output_dir/scores``)."""
    if run.curation is None:
        return None
    out = Path(run.output_dir)
    if run.curation.difficulties is not None:
        ids, values = read_difficulties(run.curation.difficulties)
        # The table may cover held-out or length-dropped rows: curate the training rows only.
        training = {e.id for e in inputs.train_examples}
        keep = [i for i, id_ in enumerate(ids) if id_ in training]
        ids, values = [ids[i] for i in keep], values[keep]
    else:
        table = score_examples(
            inputs.student,
            inputs.train_examples,
            pad_token_id=inputs.tokenizer.pad_token_id,
            settings=forward_settings(run.train),
            out_dir=out / "scores",
            progress=progress,
        )
        ids, values = list(table.ids), table.loss_mean
    return curate(ids, values, run.curation.spectrumkd, out)
