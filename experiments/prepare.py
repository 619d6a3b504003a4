"""The ``setup`` cell, the shared start of every cell: the training rows without test prompts,
the initial student (shrunk and healed, or given), its difficulty table (the spectrum every
+SpectrumKD cell curates from), each model's scores on the test rows, and step parity."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.cells import (
    changed_settings,
    machine,
    read_result,
    relative_paths,
    result_path,
    setup_settings,
    shown_path,
    utc_now,
)
from experiments.config import SETUP, Experiment, data_config
from experiments.measure import device_and_dtype, load_test, quality_rows
from spectrumkd import jobs
from spectrumkd.curation import SpectrumKDConfig, step_parity
from spectrumkd.data import DataConfig, Example, split_validation
from spectrumkd.io import write_json, write_jsonl
from spectrumkd.models import calibration_batches, load_model, shrunk_student


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
    train, validation = split_validation(
        dataset.examples, data.validation_ratio, data.validation_seed
    )
    if not train:
        raise ValueError(
            "no training rows are left after the length limit and the validation split"
        )
    overlap = [e.id for e in texts if e.prompt in test_prompts]
    return TrainingRows(len(texts), overlap, dataset, train, validation)


def shrink_teacher(
    exp: Experiment, tokenizer: Any, rows: TrainingRows, device: Any
) -> tuple[str, dict[str, Any]]:
    """The teacher cut to ``num_layers`` blocks chosen by measured influence on training rows
    (the library's reuse: a finished student of that request on disk is kept); its folder and
    shrink report."""
    assert exp.shrink is not None

    def calibration() -> list:
        train_rows = dataclasses.replace(rows.dataset, examples=rows.train)
        return calibration_batches(
            train_rows, tokenizer.pad_token_id, rows=exp.shrink["calibration_rows"]
        )

    student = shrunk_student(
        shrunk_dir(exp),
        # Layer influence is measured in float32 whatever dtype the teacher runs in later.
        lambda: load_model(exp.teacher, dtype="float32", device=device),
        tokenizer,
        calibration,
        num_layers=exp.shrink["num_layers"],
        method=exp.shrink["method"],
    )
    return str(student.folder), student.report.to_dict()


def heal_data(
    exp: Experiment, tokenizer: Any, test_prompts: set[str]
) -> tuple[DataConfig, list[Example]]:
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
    """Plain KD of ``student`` on the heal data (``jobs.heal``, resumable)."""
    assert exp.heal is not None
    config, texts = heal_data(exp, tokenizer, test_prompts)
    data = {k: v for k, v in dataclasses.asdict(config).items() if k != "fields"}
    run = jobs.heal_config(
        exp.teacher,
        student,
        exp.setup_dir / "heal",
        {**data, "fields": config.fields},  # a FieldMap stays one
        train=dict(exp.heal.get("train") or {}),
        dtype=exp.dtype,
        device=exp.device,
    )
    began = time.perf_counter()
    state = jobs.heal(run, progress=progress).state
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


def parity_epochs(exp: Experiment, n_examples: int) -> dict[str, int]:
    """Step parity (paper C.3): SpectrumKD trains on a window of M of the N rows per epoch, so
    it gets round(n_baseline N / M) epochs; its warm-up is a fixed share of them."""
    config = SpectrumKDConfig(
        **{k: v for k, v in exp.spectrumkd.items() if k != "warmup_fraction"},
        epochs=2,  # replaced by step parity: the window depends on N and the ratios only
        warmup_epochs=1,
    )
    parity = step_parity(
        config,
        exp.baseline_epochs,
        n_examples,
        warmup_fraction=exp.spectrumkd["warmup_fraction"],
    )
    return parity.to_dict()


def run_setup(exp: Experiment, *, progress: bool = True) -> dict[str, Any]:
    """Build the initial student and everything the cells share; write ``setup.json``."""
    import torch
    from scipy.stats import spearmanr

    from spectrumkd.evaluation import summarize_quality
    from spectrumkd.models import load_tokenizer
    from spectrumkd.scoring import score_examples

    started, cpu_started = time.perf_counter(), time.process_time()
    log = print if progress else (lambda *a, **k: None)
    exp.setup_dir.mkdir(parents=True, exist_ok=True)
    device, dtype = device_and_dtype(exp)
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
        start_from, shrink_report = shrink_teacher(exp, tokenizer, rows, device)
        log(f"setup: shrunk student in {shown_path(Path(start_from))}")
    if exp.heal is not None:
        assert start_from is not None
        heal_summary = heal_student(exp, start_from, tokenizer, test_prompts, progress=progress)
        log(f"setup: healed student in {shown_path(Path(initial_student(exp)))}")

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

    parity = parity_epochs(exp, len(tables["student"].ids))
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
        "finished_at": utc_now(),
    }
    write_json(result_path(exp, SETUP), relative_paths(result))
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
            f"{shown_path(result_path(exp, SETUP))} was computed with other "
            f"{', '.join(changed[:4])}; delete it and the cell results (or restore the config)"
        )
    student = Path(initial_student(exp))
    local = exp.student_init is None or exp.shrink is not None or exp.heal is not None
    if not train_file(exp).is_file() or not difficulties_file(exp).is_file():
        return None
    if local and not (student / "config.json").is_file():
        return None
    return result
