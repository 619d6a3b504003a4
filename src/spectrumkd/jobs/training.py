"""The distill job in named steps: load (:mod:`spectrumkd.jobs.inputs`), curate
(:func:`spectrumkd.jobs.curating.curation_plan`), train (:func:`train_student`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from spectrumkd.curation import CurriculumPlan
from spectrumkd.distillation import RunConfig, TrainConfig
from spectrumkd.io import atomic_write_text
from spectrumkd.jobs.curating import curation_plan
from spectrumkd.jobs.inputs import DistillInputs, forward_settings, load_distill_inputs
from spectrumkd.jobs.reranking import check_rerank, distill_reranked, reranks
from spectrumkd.jobs.scoring import known_metric


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
    extra_validators: Sequence[Any] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Distil the teacher into ``inputs.student`` with ``train`` on ``inputs``' rows, following
    ``plan`` (None: the baseline), from the live teacher or its top-``teacher_cache_k`` cache.
    Writes ``metrics.jsonl``, ``checkpoint/``, ``best/`` and ``final/`` into ``out_dir`` and
    returns the trainer's final state. :func:`distill` and the demo both train through here.
    ``extra_validators`` run each epoch after the configured ones (the trainer's
    ``validators``)."""
    from spectrumkd.distillation import train as train_loop

    validators = [*epoch_validators(train, inputs), *extra_validators]
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


def distill(
    run: RunConfig, *, progress: bool = True, extra_validators: Sequence[Any] = ()
) -> dict[str, Any]:
    """``spectrumkd distill``: pair check, data, (scoring and) curation, training, final student.

    Writes into ``run.output_dir``: ``run_config.yaml``, ``scores/`` when the student had to be
    scored, ``schedule.json`` with curation, ``metrics.jsonl``, ``checkpoint/`` (resumable),
    ``best/`` (the best validation epoch) and ``final/`` (the distilled student; both
    safetensors folders with the tokenizer, loadable with ``from_pretrained``). With
    ``teacher_cache_k`` the teacher's top-k logits are cached first (or found in
    ``teacher_cache_root``) and the teacher leaves memory before training. SRD with
    ``rerank_between_stages`` trains stage by stage in ``stages/`` and re-ranks in between.
    """
    out = Path(run.output_dir)
    if run.curation is not None and run.curation.difficulties is None:
        metric = run.curation.scoring_metric  # None for a domain mixture: nothing is scored
        if metric is not None:  # refused before the models load
            known_metric(metric, run.curation.metric_options)
    check_rerank(run)
    inputs = load_distill_inputs(run)
    # Written once the models and data have loaded, and, over a folder that holds a checkpoint,
    # only once the trainer has accepted it as this run's: a refused run leaves the folder's
    # config describing the checkpoint it holds.
    out.mkdir(parents=True, exist_ok=True)
    config_text = yaml.safe_dump(run.to_dict(), sort_keys=False)
    if not (out / "checkpoint").exists():
        atomic_write_text(out / "run_config.yaml", config_text)
    plan = curation_plan(run, inputs, progress=progress)
    if plan is not None and reranks(run):  # SRD stage by stage (spectrumkd.jobs.reranking)
        signal = teacher_signal(
            inputs,
            run.train,
            cache_k=run.teacher_cache_k,
            cache_root=run.teacher_cache_root,
            progress=progress,
        )
        validators = [*epoch_validators(run.train, inputs), *extra_validators]
        state = distill_reranked(run, inputs, plan, signal, validators, progress=progress)
        atomic_write_text(out / "run_config.yaml", config_text)
        return state
    state = train_student(
        inputs,
        run.train,
        out,
        plan=plan,
        teacher_cache_k=run.teacher_cache_k,
        teacher_cache_root=run.teacher_cache_root,
        extra_validators=extra_validators,
        progress=progress,
    )
    atomic_write_text(out / "run_config.yaml", config_text)
    return state
