"""Whole jobs, each a function a user can call from Python: score, curate, distill, heal.

The CLI (``spectrumkd.cli``) only parses flags and calls these. Every job writes its results
into one folder, atomically, and a rerun resumes or reuses what is already there.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "HealResult",
    "ScoreResult",
    "curate",
    "distill",
    "heal",
    "heal_config",
    "score_dataset",
    # Moved to spectrumkd.models / spectrumkd.data; importable here until their callers move.
    "calibration_batches",
    "resolve_device",
    "resolve_dtype",
    "split_validation",
]

import numpy as np
import torch
import yaml

from spectrumkd.curation.analyzer import choose_ratios
from spectrumkd.curation.config import SpectrumKDConfig
from spectrumkd.curation.files import spectrum_rows, write_curation
from spectrumkd.curation.plan import CurriculumPlan
from spectrumkd.curation.schedule import SpectrumKD
from spectrumkd.curation.spectrum import Spectrum, build_spectrum
from spectrumkd.data import split_validation
from spectrumkd.data.tokenize import TokenizedDataset
from spectrumkd.distillation.run_config import RunConfig
from spectrumkd.io import atomic_write_text, write_json, write_jsonl
from spectrumkd.models import calibration_batches, resolve_device, resolve_dtype
from spectrumkd.scoring.difficulty import DifficultyTable, Reduction, read_difficulties
from spectrumkd.scoring.scorer import ScoringSettings, score_examples


@dataclass(frozen=True)
class ScoreResult:
    table: DifficultyTable
    spectrum: Spectrum
    seconds: float
    tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def score_dataset(
    model: torch.nn.Module,
    dataset: TokenizedDataset,
    out_dir: str | Path,
    *,
    pad_token_id: int,
    settings: ScoringSettings | None = None,
    reduction: Reduction = "mean",
    lambda_a: float = 0.1,
    lambda_b: float = 0.1,
    progress: bool = True,
    description: dict[str, Any] | None = None,
) -> ScoreResult:
    """Score ``dataset`` into ``out_dir``: ``difficulties.jsonl`` (dataset order), ``spectrum.jsonl``
    (rank order, zones for ``lambda_a``/``lambda_b``), ``dropped.jsonl`` (examples the length
    limit removed) and ``score_summary.json``. A killed run resumes from its finished shards."""
    out = Path(out_dir)
    start = time.perf_counter()
    table = score_examples(
        model,
        dataset.examples,
        pad_token_id=pad_token_id,
        settings=settings,
        out_dir=out,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    spectrum = build_spectrum(table.ids, table.difficulties(reduction), lambda_a, lambda_b)
    write_jsonl(out / "spectrum.jsonl", spectrum_rows(spectrum, table))
    write_jsonl(out / "dropped.jsonl", [{"id": i, "reason": r} for i, r in dataset.dropped])
    tokens = sum(len(e.input_ids) for e in dataset.examples)
    write_json(
        out / "score_summary.json",
        {
            **(description or {}),
            "examples_scored": len(table),
            "examples_dropped": len(dataset.dropped),
            "reduction": reduction,
            "lambda_a": lambda_a,
            "lambda_b": lambda_b,
            "tokens": tokens,
            "seconds_this_run": round(seconds, 2),
        },
    )
    return ScoreResult(table=table, spectrum=spectrum, seconds=seconds, tokens=tokens)


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


def rouge_validator(
    tokenizer,
    prompts: list[str],
    references: list[str],
    *,
    sampled: bool,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 8,
    precision: str = "auto",
):
    """A per-epoch validator: mean ROUGE-L x 100 of the student's answers to ``prompts`` (greedy,
    or sampled at temperature 1 with a fixed seed, so epochs differ only by the weights), generated
    at ``precision`` (``auto``: bf16 autocast where the device has fast bf16)."""
    from spectrumkd.evaluation.rouge import rouge_l_scores
    from spectrumkd.models.generation import generate

    def validate(model) -> dict[str, float]:
        answers = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=1.0 if sampled else 0.0,
            seed=seed,
            batch_size=batch_size,
            precision=precision,
        )
        scores = rouge_l_scores(answers, references)
        return {"val_rouge": float(np.mean(scores)) if scores else 0.0}

    return validate


def distill(run: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """``spectrumkd distill``: pair check, data, (scoring and) curation, training, final student.

    Writes into ``run.output_dir``: ``run_config.yaml``, ``scores/`` when the student had to be
    scored, ``schedule.json`` with curation, ``metrics.jsonl``, ``checkpoint/`` (resumable),
    ``best/`` (the best validation epoch) and ``final/`` (the distilled student; both
    safetensors folders with the tokenizer, loadable with ``from_pretrained``). With
    ``teacher_cache_k`` the teacher's top-k logits are cached first (or found in
    ``teacher_cache_root``) and the teacher leaves memory before training.
    """
    from spectrumkd.distillation.signals import LiveTeacher
    from spectrumkd.distillation.trainer import train
    from spectrumkd.models import check_pair, load_model, load_tokenizer

    out = Path(run.output_dir)
    device = resolve_device(run.device)
    dtype = resolve_dtype(run.dtype, device)
    tokenizer = load_tokenizer(run.teacher)
    teacher = load_model(run.teacher, dtype=dtype, device=device)
    student = load_model(
        run.student, dtype=torch.float32, device=device
    )  # trained in fp32 (+ autocast)
    alignment = check_pair(tokenizer, load_tokenizer(run.student), teacher.config, student.config)

    data = run.data
    texts = data.load_texts(tokenizer)
    dataset = data.tokenize(texts, tokenizer)
    train_examples, validation = split_validation(
        dataset.examples, data.validation_ratio, data.validation_seed
    )
    # Written once the models and data have loaded, and, over a folder that holds a checkpoint,
    # only once the trainer has accepted it as this run's: a refused run leaves the folder's
    # config describing the checkpoint it holds.
    out.mkdir(parents=True, exist_ok=True)
    config_text = yaml.safe_dump(run.to_dict(), sort_keys=False)
    if not (out / "checkpoint").exists():
        atomic_write_text(out / "run_config.yaml", config_text)
    # train.mixed_precision is the precision of every forward of the run: the scoring and the
    # teacher cache here, the student and the live teacher in the trainer.
    forward_settings = ScoringSettings(precision=run.train.mixed_precision)
    plan = None
    if run.curation is not None:
        if run.curation.difficulties is not None:
            ids, values = read_difficulties(run.curation.difficulties)
            # The table may cover held-out or length-dropped rows: curate the training rows only.
            training = {e.id for e in train_examples}
            keep = [i for i, id_ in enumerate(ids) if id_ in training]
            ids, values = [ids[i] for i in keep], values[keep]
        else:
            table = score_examples(
                student,
                train_examples,
                pad_token_id=tokenizer.pad_token_id,
                settings=forward_settings,
                out_dir=out / "scores",
                progress=progress,
            )
            ids, values = list(table.ids), table.loss_mean
        plan = curate(ids, values, run.curation.spectrumkd, out)
    validators = []
    if run.train.val_rouge != "off" and validation:
        by_id = {example.id: example for example in texts}
        rows = [by_id[example.id] for example in validation][: run.train.val_rouge_rows]
        validators.append(
            rouge_validator(
                tokenizer,
                [row.prompt for row in rows],
                [row.response for row in rows],
                sampled=run.train.val_rouge == "sampled",
                max_new_tokens=run.train.val_max_new_tokens,
                seed=run.train.seed,
                precision=run.train.mixed_precision,
            )
        )
    signal = LiveTeacher(teacher, alignment)
    if run.teacher_cache_k:
        from spectrumkd.distillation.teacher_cache import CachedTeacher, build_teacher_cache

        # Every training and validation row, not only the schedule's: the cache is keyed by the
        # data, so the baseline, other strategies and other seeds find the same one.
        folder = build_teacher_cache(
            teacher,
            [*train_examples, *validation],
            run.teacher_cache_root,
            k=run.teacher_cache_k,
            settings=forward_settings,
            pad_token_id=tokenizer.pad_token_id,
            progress=progress,
            vocab_size=alignment.vocab_size,
        )
        del signal, teacher  # trained from the cache, without the teacher in memory
        signal = CachedTeacher(folder, alignment.vocab_size, device=device)
    state = train(
        student,
        signal,
        train_examples,
        run.train,
        out,
        plan=plan,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        validation=validation,
        validators=validators,
        tokenizer=tokenizer,  # saved into best/ and final/ with the student, in one swap
        progress=progress,
    )
    atomic_write_text(out / "run_config.yaml", config_text)
    return state


@dataclass(frozen=True)
class HealResult:
    """A healed student: the trainer's final state and the folder of the student to use next."""

    state: dict[str, Any]
    student_dir: Path  # best/ when a validation epoch was kept, else final/

    @property
    def best(self) -> dict[str, Any] | None:
        return self.state.get("best")


def heal_config(
    teacher: str,
    student: str,
    output_dir: str | Path,
    data: dict[str, Any],
    *,
    train: dict[str, Any] | None = None,
    dtype: str = "auto",
    device: str = "auto",
    overrides: Sequence[str] = (),
) -> RunConfig:
    """The run config of healing ``student`` (a shrunk one) on ``data``: plain KD, no curation.

    ``data`` and ``train`` hold :class:`~spectrumkd.data.DataConfig` and ``TrainConfig`` fields;
    ``overrides`` are ``--set``-style ``section.field=value`` strings applied on top.
    """
    from spectrumkd.distillation.run_config import apply_override

    values: dict[str, Any] = {
        "teacher": teacher,
        "student": student,
        "output_dir": str(output_dir),
        "dtype": dtype,
        "device": device,
        "data": dict(data),
        "train": dict(train or {}),
    }
    for override in overrides:
        apply_override(values, override)
    return RunConfig.from_dict(values)


def heal(run: RunConfig, *, progress: bool = True) -> HealResult:
    """Plain KD of a shrunk student (``run.student``) on data of the user's choice, so that it
    starts as a working model, as the paper's pretrained students do: :func:`distill` of a run
    config from :func:`heal_config` (resumable), and the student to go on with, the best
    validation epoch's when one was kept."""
    state = distill(run, progress=progress)
    chosen = "best" if state.get("best") else "final"
    return HealResult(state=state, student_dir=Path(run.output_dir) / chosen)
