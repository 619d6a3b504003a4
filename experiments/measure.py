"""What the experiment measures of a student on the test rows: per-example CE and KL to the
teacher (the primary metrics) and ROUGE-L of greedy and sampled answers (the secondary ones),
through the library's evaluation."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.cells import shown_path
from experiments.config import Experiment
from spectrumkd.io import write_jsonl
from spectrumkd.models import resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch

    from spectrumkd.evaluation import EvalExample, Suite

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


def load_test(
    exp: Experiment, tokenizer: Any
) -> tuple[Suite, list[EvalExample], list[dict[str, Any]]]:
    """The test suite and its rows whose prompt fits (the others as dropped rows)."""
    from spectrumkd.evaluation import filter_prompts, load_suite

    suite = load_suite(SUITE, source=exp.test.source, limit=exp.test.limit)
    kept, dropped = filter_prompts(suite.examples, tokenizer, exp.test.max_prompt_tokens)
    return suite, kept, dropped


def quality_rows(
    exp: Experiment, model: Any, tokenizer: Any, examples: list[EvalExample], teacher: Any
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
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


def device_and_dtype(exp: Experiment) -> tuple[torch.device, torch.dtype]:
    """Where the experiment's models run and the dtype the teacher loads in (students stay
    float32: they are trained)."""
    device = resolve_device(exp.device)
    return device, resolve_dtype(exp.dtype, device)


def evaluate_student(
    exp: Experiment, model_dir: Path, out: Path, *, progress: bool = True
) -> dict[str, Any]:
    """Per-example metrics of the student in ``model_dir`` on the test rows."""
    import torch
    from rich.console import Console

    from spectrumkd.evaluation import (
        Decoding,
        evaluate_instruction_following,
        rouge_per_example,
        summarize_quality,
    )
    from spectrumkd.models import load_model, load_tokenizer

    device, dtype = device_and_dtype(exp)
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
        decode_batch = exp.test.decode_batch_size or exp.test.batch_size
        common = {"max_new_tokens": exp.test.max_new_tokens, "batch_size": decode_batch}
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
            model_spec=shown_path(model_dir),
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


def copy_answers(out: Path, destination: Path) -> list[Path]:
    """The generated answers of an evaluation in ``out`` (one JSONL per decoding run, ``greedy``
    and ``seed<k>``: id, prediction, references, rougeL), copied to ``destination``, which is
    committed beside the cell's result so that the scores can be recomputed without rerunning."""
    import shutil

    copied = []
    for folder in ("greedy", "sampled"):
        manifest = out / folder / SUITE / "manifest.json"
        if not manifest.is_file():
            continue
        for stem in json.loads(manifest.read_text(encoding="utf-8"))["runs"]:
            destination.mkdir(parents=True, exist_ok=True)
            target = destination / f"{stem}.jsonl"
            shutil.copyfile(out / folder / SUITE / f"{stem}.jsonl", target)
            copied.append(target)
    return copied
