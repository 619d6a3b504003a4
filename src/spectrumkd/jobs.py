"""Whole jobs, each a function a user can call from Python: score, curate, shrink, heal, distill,
evaluate.

A job takes plain arguments or the config dataclasses (``DataConfig``, ``SpectrumKDConfig``,
``RunConfig``), loads what it needs (models on the device and dtype named, data), writes its
results into one folder, atomically, and returns what it found. A rerun resumes or reuses what
is already there. The command line (``spectrumkd.cli``), the demo and the experiment runner
only gather arguments and call these.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from spectrumkd.curation import (
    CurriculumPlan,
    Spectrum,
    SpectrumKD,
    SpectrumKDConfig,
    build_spectrum,
    choose_ratios,
    spectrum_rows,
    write_curation,
)
from spectrumkd.data import (
    DataConfig,
    Example,
    TokenizedDataset,
    TokenizedExample,
    split_validation,
)
from spectrumkd.distillation import RunConfig, TrainConfig, apply_override
from spectrumkd.io import atomic_write_text, write_json, write_jsonl
from spectrumkd.models import (
    ShrinkReport,
    VocabAlignment,
    calibration_batches,
    check_pair,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    shrunk_student,
)
from spectrumkd.scoring import DifficultyTable, ScoringSettings, read_difficulties, score_examples
from spectrumkd.scoring.difficulty import Reduction

__all__ = [
    "DistillInputs",
    "HealResult",
    "ScoreResult",
    "curate",
    "curation_plan",
    "distill",
    "evaluate",
    "heal",
    "heal_config",
    "load_distill_inputs",
    "score",
    "score_dataset",
    "shrink",
    "train_student",
]


# --------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreResult:
    table: DifficultyTable
    spectrum: Spectrum
    seconds: float
    tokens: int
    precision: str | None = None  # the forward's precision, when the job resolved it

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
    """Score ``dataset`` with a loaded ``model`` into ``out_dir``: ``difficulties.jsonl``
    (dataset order), ``spectrum.jsonl`` (rank order, zones for ``lambda_a``/``lambda_b``),
    ``dropped.jsonl`` (examples the length limit removed) and ``score_summary.json``. A killed
    run resumes from its finished shards."""
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


def score(
    model: str,
    data: DataConfig,
    out_dir: str | Path,
    *,
    settings: ScoringSettings | None = None,
    reduction: Reduction = "mean",
    lambda_a: float = 0.1,
    lambda_b: float = 0.1,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    progress: bool = True,
    console: Any = None,
) -> ScoreResult:
    """``spectrumkd score``: load ``model`` (a spec: ``smollm2``, a ``.gguf``, a folder or a hub
    id) and ``data``, then :func:`score_dataset`. The data is loaded (and refused, if it is bad)
    before the model; ``console`` (a ``rich`` console) hears what the data holds."""
    settings = settings or ScoringSettings()
    resolved_device = resolve_device(device)
    load = {"trust_remote_code": trust_remote_code, "gguf_file": gguf_file}
    tokenizer = load_tokenizer(model, **load)
    dataset = data.load(tokenizer)
    if console is not None:
        console.print(f"data: {dataset.summary()}")
    loaded = load_model(
        model, dtype=resolve_dtype(dtype, resolved_device), device=resolved_device, **load
    )
    precision = settings.resolved(resolved_device).precision
    result = score_dataset(
        loaded,
        dataset,
        out_dir,
        pad_token_id=tokenizer.pad_token_id,
        settings=settings,
        reduction=reduction,
        lambda_a=lambda_a,
        lambda_b=lambda_b,
        progress=progress,
        description={
            "model": model,
            "data": data.source,
            "template": data.template,
            "max_length": data.max_length,
            "precision": precision,
        },
    )
    return dataclasses.replace(result, precision=precision)


# --------------------------------------------------------------------------------------------
# curate
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# shrink
# --------------------------------------------------------------------------------------------


def shrink(
    teacher: str,
    out_dir: str | Path,
    data: DataConfig,
    *,
    keep_layers: Sequence[int] | None = None,
    num_layers: int | None = None,
    method: str = "block_influence",
    calibration_rows: int = 32,
    device: str = "auto",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    reuse: bool = False,
) -> ShrinkReport:
    """``spectrumkd shrink``: a student cut from ``teacher`` into ``out_dir``, keeping
    ``keep_layers`` or the ``num_layers`` blocks ``method`` measures as most important on the
    first ``calibration_rows`` rows of ``data`` (see :func:`spectrumkd.models.shrunk_student`).
    Layer influence is measured in float32. With ``reuse``, a finished student in ``out_dir``
    that matches the request is kept as it is."""
    resolved_device = resolve_device(device)
    load = {"trust_remote_code": trust_remote_code, "gguf_file": gguf_file}
    tokenizer = load_tokenizer(teacher, **load)
    model = load_model(teacher, dtype="float32", device=resolved_device, **load)
    dataset = data.load(tokenizer)
    batches = calibration_batches(dataset, tokenizer.pad_token_id, rows=calibration_rows)
    return shrunk_student(
        out_dir,
        model,
        tokenizer,
        batches,
        keep_layers=keep_layers,
        num_layers=num_layers,
        method=method,
        reuse=reuse,
    ).report


# --------------------------------------------------------------------------------------------
# distill, in named steps: load, curate, train
# --------------------------------------------------------------------------------------------


@dataclass
class DistillInputs:
    """What a distillation trains on, loaded: the models, the tokenizer they share and the rows.

    :func:`distill` loads these from a ``RunConfig``; the demo builds its own (rows of its
    choosing, a teacher already in memory) and trains through the same :func:`train_student`.
    """

    tokenizer: Any
    teacher: torch.nn.Module | None  # None once a teacher cache replaced it
    student: torch.nn.Module
    train_examples: list[TokenizedExample]
    validation: list[TokenizedExample]
    alignment: VocabAlignment | None = None  # None: the two vocabularies are used as they are
    device: torch.device | None = None  # where a teacher cache's tensors go
    # The rendered texts by id, for validation by generation (``train.val_rouge``).
    texts: dict[str, Example] = dataclasses.field(default_factory=dict)


def load_distill_inputs(run: RunConfig) -> DistillInputs:
    """The teacher (in ``run.dtype``), the student (float32: trained with autocast), the pair
    check, the data and its seeded validation split."""
    device = resolve_device(run.device)
    dtype = resolve_dtype(run.dtype, device)
    tokenizer = load_tokenizer(run.teacher)
    teacher = load_model(run.teacher, dtype=dtype, device=device)
    student = load_model(run.student, dtype=torch.float32, device=device)
    alignment = check_pair(tokenizer, load_tokenizer(run.student), teacher.config, student.config)
    texts = run.data.load_texts(tokenizer)
    dataset = run.data.tokenize(texts, tokenizer)
    train_examples, validation = split_validation(
        dataset.examples, run.data.validation_ratio, run.data.validation_seed
    )
    return DistillInputs(
        tokenizer=tokenizer,
        teacher=teacher,
        student=student,
        train_examples=train_examples,
        validation=validation,
        device=device,
        alignment=alignment,
        texts={example.id: example for example in texts},
    )


def forward_settings(train: TrainConfig) -> ScoringSettings:
    """``train.mixed_precision`` is the precision of every forward of the run: the scoring and
    the teacher cache here, the student and the live teacher in the trainer."""
    return ScoringSettings(precision=train.mixed_precision)


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


def epoch_validators(train: TrainConfig, inputs: DistillInputs) -> list:
    """Validation by generation each epoch, when ``train.val_rouge`` asks for it."""
    from spectrumkd.evaluation.validation import rouge_validator

    if train.val_rouge == "off" or not inputs.validation:
        return []
    rows = [inputs.texts[example.id] for example in inputs.validation]
    rows = rows[: train.val_rouge_rows]
    return [
        rouge_validator(
            inputs.tokenizer,
            [row.prompt for row in rows],
            [row.response for row in rows],
            sampled=train.val_rouge == "sampled",
            max_new_tokens=train.val_max_new_tokens,
            seed=train.seed,
            precision=train.mixed_precision,
        )
    ]


def teacher_signal(
    inputs: DistillInputs,
    train: TrainConfig,
    *,
    cache_k: int = 0,
    cache_root: str | Path = "runs/teacher-cache",
    progress: bool = True,
) -> Any:
    """The live teacher, or with ``cache_k`` its cached top-k logits (built first, or found in
    ``cache_root``); the teacher then leaves memory before training."""
    from spectrumkd.distillation import CachedTeacher, LiveTeacher, build_teacher_cache

    if not cache_k:
        return LiveTeacher(inputs.teacher, inputs.alignment)
    if inputs.alignment is None:
        raise ValueError("a teacher cache needs the pair's vocabulary alignment (check_pair)")
    # Every training and validation row, not only the schedule's: the cache is keyed by the
    # data, so the baseline, other strategies and other seeds find the same one.
    folder = build_teacher_cache(
        inputs.teacher,
        [*inputs.train_examples, *inputs.validation],
        cache_root,
        k=cache_k,
        settings=forward_settings(train),
        pad_token_id=inputs.tokenizer.pad_token_id,
        progress=progress,
        vocab_size=inputs.alignment.vocab_size,
    )
    inputs.teacher = None  # trained from the cache, without the teacher in memory
    return CachedTeacher(folder, inputs.alignment.vocab_size, device=inputs.device)


def train_student(
    inputs: DistillInputs,
    train: TrainConfig,
    out_dir: str | Path,
    *,
    plan: CurriculumPlan | None = None,
    teacher_cache_k: int = 0,
    teacher_cache_root: str | Path = "runs/teacher-cache",
    progress: bool = True,
) -> dict[str, Any]:
    """Distil the teacher into ``inputs.student`` with ``train`` on ``inputs``' rows, following
    ``plan`` (None: the baseline), from the live teacher or its top-``teacher_cache_k`` cache.
    Writes ``metrics.jsonl``, ``checkpoint/``, ``best/`` and ``final/`` into ``out_dir`` and
    returns the trainer's final state. :func:`distill` and the demo both train through here."""
    from spectrumkd.distillation import train as train_loop

    validators = epoch_validators(train, inputs)
    signal = teacher_signal(
        inputs, train, cache_k=teacher_cache_k, cache_root=teacher_cache_root, progress=progress
    )
    return train_loop(
        inputs.student,
        signal,
        inputs.train_examples,
        train,
        Path(out_dir),
        plan=plan,
        pad_token_id=inputs.tokenizer.pad_token_id,
        eos_token_id=inputs.tokenizer.eos_token_id,
        validation=inputs.validation,
        validators=validators,
        tokenizer=inputs.tokenizer,  # saved into best/ and final/ with the student, in one swap
        progress=progress,
    )


def distill(run: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """``spectrumkd distill``: pair check, data, (scoring and) curation, training, final student.

    Writes into ``run.output_dir``: ``run_config.yaml``, ``scores/`` when the student had to be
    scored, ``schedule.json`` with curation, ``metrics.jsonl``, ``checkpoint/`` (resumable),
    ``best/`` (the best validation epoch) and ``final/`` (the distilled student; both
    safetensors folders with the tokenizer, loadable with ``from_pretrained``). With
    ``teacher_cache_k`` the teacher's top-k logits are cached first (or found in
    ``teacher_cache_root``) and the teacher leaves memory before training.
    """
    out = Path(run.output_dir)
    inputs = load_distill_inputs(run)
    # Written once the models and data have loaded, and, over a folder that holds a checkpoint,
    # only once the trainer has accepted it as this run's: a refused run leaves the folder's
    # config describing the checkpoint it holds.
    out.mkdir(parents=True, exist_ok=True)
    config_text = yaml.safe_dump(run.to_dict(), sort_keys=False)
    if not (out / "checkpoint").exists():
        atomic_write_text(out / "run_config.yaml", config_text)
    plan = curation_plan(run, inputs, progress=progress)
    state = train_student(
        inputs,
        run.train,
        out,
        plan=plan,
        teacher_cache_k=run.teacher_cache_k,
        teacher_cache_root=run.teacher_cache_root,
        progress=progress,
    )
    atomic_write_text(out / "run_config.yaml", config_text)
    return state


# --------------------------------------------------------------------------------------------
# heal
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def evaluate(
    model: str,
    out_dir: str | Path,
    *,
    teacher: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``spectrumkd evaluate``: load ``model`` (and ``teacher``, checked as a pair, for CE/KL to
    it) on the device and dtype named, then
    :func:`~spectrumkd.evaluation.evaluate_instruction_following` with ``options`` (suites,
    data_root, sources, decoding, limit, ...). Returns the summary it writes."""
    from spectrumkd.evaluation import evaluate_instruction_following

    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    load = {"trust_remote_code": trust_remote_code, "gguf_file": gguf_file}
    tokenizer = load_tokenizer(model, **load)
    loaded = load_model(model, dtype=resolved_dtype, device=resolved_device, **load)
    loaded_teacher = None
    if teacher is not None:
        # The GGUF file names a file of the evaluated model's repository, not the teacher's.
        teacher_tokenizer = load_tokenizer(teacher, trust_remote_code=trust_remote_code)
        loaded_teacher = load_model(
            teacher,
            dtype=resolved_dtype,
            device=resolved_device,
            trust_remote_code=trust_remote_code,
        )
        check_pair(teacher_tokenizer, tokenizer, loaded_teacher.config, loaded.config)
    return evaluate_instruction_following(
        loaded,
        tokenizer,
        out_dir,
        teacher=loaded_teacher,
        model_spec=model,
        teacher_spec=teacher,
        **options,
    )
