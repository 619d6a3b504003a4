"""The evaluation run: generate, score and summarise every set, resumably and atomically.

Layout of an output folder ``OUT`` (a report reads these; every file is written atomically):

- ``OUT/<set>/<run>.jsonl``, ``<run>`` = ``seed10`` ... ``seed50`` (sampling) or ``greedy``:
  one row per evaluated example, in file order, ``{id, prediction, references, rougeL}``.
- ``OUT/<set>/quality.jsonl``: ``{id, ce, kl_forward, kl_reverse, tokens}`` (KL null without a
  teacher; means per response token, nats).
- ``OUT/<set>/dropped.jsonl``: ``{id, reason, prompt_tokens}`` of prompts over the limit.
- ``OUT/<set>/manifest.json``: what the files were computed from (model fingerprint, decoding,
  data fingerprint) and the seconds and score of each finished run.
- ``OUT/summary.json``: per-set means, the average over sets, settings, counts, wall time.

A rerun skips every (set, run) file already finished, after checking that the set's manifest
matches this run's model, decoding and data: a folder never mixes two configurations.

Other suites (maths, code) join the same command through
:data:`spectrumkd.evaluation.registry.SUITE_RUNNERS` (:func:`register_suite`).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrumkd.batching import prompt_token_ids
from spectrumkd.evaluation.instruction.quality import distillation_quality, summarize_quality
from spectrumkd.evaluation.instruction.suites import (
    INSTRUCTION_SUITE_NAMES,
    INSTRUCTION_SUITES,
    EvalExample,
    Suite,
    load_suite,
)
from spectrumkd.evaluation.registry import SUITE_RUNNERS, SuiteContext, SuiteRunner
from spectrumkd.evaluation.rouge import rouge_l_scores
from spectrumkd.io import read_jsonl, write_json, write_jsonl
from spectrumkd.models.decode_workers import auto_workers
from spectrumkd.models.generation import generate

DEFAULT_SEEDS: tuple[int, ...] = (10, 20, 30, 40, 50)
MAX_PROMPT_TOKENS = 256


def register_suite(name: str, runner: SuiteRunner) -> None:
    """Make ``name`` a valid ``--suites`` entry dispatched to ``runner``."""
    if name in INSTRUCTION_SUITES:
        raise ValueError(f"{name!r} is an instruction-following suite and cannot be replaced")
    SUITE_RUNNERS[name] = runner


def available_suites() -> list[str]:
    """Every name ``--suites`` accepts: the instruction sets first, then registered suites."""
    return [*INSTRUCTION_SUITE_NAMES, *SUITE_RUNNERS]


def _check_names(suites: Sequence[str]) -> list[str]:
    """The requested suite names, stripped; unknown, missing or repeated names raise with the
    list of choices."""
    names = [name.strip() for name in suites if name.strip()]
    if not names:
        raise ValueError(f"no suites given; choose from {', '.join(available_suites())}")
    unknown = [
        name for name in names if name not in INSTRUCTION_SUITES and name not in SUITE_RUNNERS
    ]
    if unknown:
        raise ValueError(
            f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(available_suites())}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"suite listed twice in {', '.join(names)}")
    return names


@dataclass(frozen=True)
class Decoding:
    """Decoding of the instruction sets; the MiniLLM protocol is the default."""

    greedy: bool = False
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    # Rows decoded at a time, refilled as rows end (64: the fastest of 16, 64 and 128 on the
    # project's CPU, benchmarks/README.md "Generation"). Part of the settings: with the workers
    # below it fixes which rows share a batch and a sampling stream.
    batch_size: int = 64
    # CPU processes decoding a share of the prompts each (None: two on a CPU where torch has two
    # threads or more, else one; spectrumkd.models.decode_workers). In the settings when not 1.
    workers: int | None = None
    # Compute precision of the forwards (auto: bf16 where the device has fast bf16). Resolved
    # per device and recorded in the manifest unless float32 (see generation_key below).
    precision: str = "auto"

    def __post_init__(self) -> None:
        if not self.greedy and not self.seeds:
            raise ValueError("sampling needs at least one seed (or use greedy decoding)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"sampling temperature must be > 0, got {self.temperature}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 (None: automatic), got {self.workers}")

    def runs(self) -> list[tuple[str, int]]:
        """(file stem, seed) of every generation run."""
        if self.greedy:
            return [("greedy", 0)]
        return [(f"seed{seed}", seed) for seed in self.seeds]

    def as_dict(self) -> dict[str, Any]:
        if self.greedy:
            return {
                "mode": "greedy",
                "max_new_tokens": self.max_new_tokens,
                "batch_size": self.batch_size,
            }
        return {
            "mode": "sampling",
            "temperature": self.temperature,
            "top_k": 0,
            "top_p": self.top_p,
            "seeds": list(self.seeds),
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
        }


def filter_prompts(
    examples: Sequence[EvalExample], tokenizer: Any, max_prompt_tokens: int = MAX_PROMPT_TOKENS
) -> tuple[list[EvalExample], list[dict[str, Any]]]:
    """Keep prompts of at most ``max_prompt_tokens`` tokens; the others as ``dropped`` rows."""
    lengths = [len(ids) for ids in prompt_token_ids(tokenizer, [e.prompt for e in examples])]
    kept, dropped = [], []
    for example, length in zip(examples, lengths, strict=True):
        if length > max_prompt_tokens:
            reason = f"prompt longer than {max_prompt_tokens} tokens"
            dropped.append({"id": example.id, "reason": reason, "prompt_tokens": length})
        else:
            kept.append(example)
    return kept, dropped


def evaluate_instruction_following(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    suites: Sequence[str] = INSTRUCTION_SUITE_NAMES,
    data_root: str | Path | None = None,
    sources: Mapping[str, str | Path] | None = None,
    decoding: Decoding | None = None,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    limit: int | None = None,
    teacher: Any = None,
    quality: bool = True,
    quality_max_length: int = 768,
    quality_batch_size: int = 8,
    model_spec: str | None = None,
    teacher_spec: str | None = None,
    suite_options: Mapping[str, Any] | None = None,
    other_max_new_tokens: int | None = None,
    progress: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``suites`` and write ``OUT`` (see the module docstring).

    Instruction sets: ROUGE-L per run (mean over seeds per set, then the mean over sets), plus
    the student's CE on the references and, given ``teacher``, forward/reverse KL to it, on
    examples of at most ``quality_max_length`` tokens (default 768: a 256-token prompt plus the
    protocol's 512 new tokens, the longest sequence the protocol itself generates),
    ``quality_batch_size`` of them at a time (each holds the logits of both models). Names in
    :data:`SUITE_RUNNERS` are dispatched to their runners, which get ``limit``,
    ``decoding.batch_size``, ``other_max_new_tokens`` (None: their own default) and
    ``suite_options``. Returns the summary it writes.
    """
    started = time.perf_counter()
    decoding = decoding or Decoding()
    out = Path(out_dir)
    names = _check_names(suites)
    sources = dict(sources or {})
    unknown_sources = sorted(set(sources) - set(names))
    if unknown_sources:
        raise ValueError(f"sources given for suites not being run: {', '.join(unknown_sources)}")
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if console is None:
        from rich.console import Console

        console = Console(quiet=not progress)

    # Load every instruction set first: a missing file fails before hours of generation.
    loaded: dict[str, Suite] = {
        name: load_suite(name, data_root, source=sources.get(name), limit=limit)
        for name in names
        if name in INSTRUCTION_SUITES
    }
    from spectrumkd.scoring.scorer import model_fingerprint

    model_print = model_fingerprint(model)
    teacher_print = model_fingerprint(teacher) if teacher is not None else None
    model_name = model_spec or _name_of(model)
    teacher_name = teacher_spec or (_name_of(teacher) if teacher is not None else None)

    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name in loaded:
            results[name] = _run_instruction_suite(
                loaded[name],
                model,
                tokenizer,
                out / name,
                decoding=decoding,
                max_prompt_tokens=max_prompt_tokens,
                model_print=model_print,
                teacher=teacher,
                teacher_print=teacher_print,
                quality=quality,
                quality_max_length=quality_max_length,
                quality_batch_size=quality_batch_size,
                progress=progress,
                console=console,
            )
        else:
            context = SuiteContext(
                model=model,
                tokenizer=tokenizer,
                out_dir=out / name,
                data_root=Path(data_root) if data_root is not None else None,
                limit=limit,
                batch_size=decoding.batch_size,
                max_new_tokens=other_max_new_tokens,
                progress=progress,
                options=dict(suite_options or {}),
                precision=decoding.precision,
            )
            results[name] = {"kind": "registered", **SUITE_RUNNERS[name](context)}

    scored = [r["rougeL"] for r in results.values() if r.get("kind") == "instruction"]
    summary = {
        "model": model_name,
        "model_fingerprint": model_print,
        "teacher": teacher_name,
        "teacher_fingerprint": teacher_print,
        "decoding": {**decoding.as_dict(), "precision": _resolved_precision(model, decoding)},
        "runs": [stem for stem, _ in decoding.runs()],
        "max_prompt_tokens": max_prompt_tokens,
        "quality_max_length": quality_max_length if quality else None,
        "limit": limit,
        "suites": results,
        "average": {
            "rougeL": sum(scored) / len(scored) if scored else None,
            "sets": [n for n, r in results.items() if r.get("kind") == "instruction"],
        },
        "generation_seconds": sum(
            run["seconds"]
            for r in results.values()
            if r.get("kind") == "instruction"
            for run in r["runs"].values()
        ),
        "wall_time_s": round(time.perf_counter() - started, 3),
        "versions": _versions(),
    }
    write_json(out / "summary.json", summary)
    console.print(summary_table(summary))
    console.print(f"wrote {out / 'summary.json'}")
    return summary


def _run_instruction_suite(
    suite: Suite,
    model: Any,
    tokenizer: Any,
    folder: Path,
    *,
    decoding: Decoding,
    max_prompt_tokens: int,
    model_print: str,
    teacher: Any,
    teacher_print: str | None,
    quality: bool,
    quality_max_length: int,
    quality_batch_size: int,
    progress: bool,
    console: Any,
) -> dict[str, Any]:
    examples, dropped = filter_prompts(suite.examples, tokenizer, max_prompt_tokens)
    if not examples:
        raise ValueError(
            f"{suite.label}: all {len(suite)} prompts are longer than {max_prompt_tokens} tokens"
        )
    # What the files depend on, by content: a model or data file loaded from another path (or
    # under another name) still resumes. The seed list is left out: each seed has its own
    # file, so a rerun may add seeds.
    generation_key = {
        "model_fingerprint": model_print,
        "decoding": {k: v for k, v in decoding.as_dict().items() if k != "seeds"},
        "max_prompt_tokens": max_prompt_tokens,
        "data_fingerprint": _data_fingerprint(examples),
    }
    precision = _resolved_precision(model, decoding)
    if precision != "float32":  # folders from before the setting existed were float32
        generation_key["precision"] = precision
    workers = decoding.workers
    if workers is None:
        workers = auto_workers(next(model.parameters()).device, len(examples))
    if workers != 1:  # folders from before the setting existed decoded in one process
        generation_key["workers"] = workers
    manifest = _open_manifest(folder, generation_key)
    write_jsonl(folder / "dropped.jsonl", dropped)
    ids = [e.id for e in examples]
    references = [list(e.references) for e in examples]

    for stem, seed in decoding.runs():
        path = folder / f"{stem}.jsonl"
        if stem in manifest["runs"] and path.is_file():
            _check_run_file(path, ids)
            continue
        console.print(f"{suite.label}: {stem}, {len(examples)} prompts")
        start = time.perf_counter()
        predictions = generate(
            model,
            tokenizer,
            [e.prompt for e in examples],
            max_new_tokens=decoding.max_new_tokens,
            temperature=0.0 if decoding.greedy else decoding.temperature,
            top_p=decoding.top_p,
            seed=seed,
            batch_size=decoding.batch_size,
            progress=progress,
            precision=precision,
            workers=workers,
        )
        seconds = time.perf_counter() - start
        scores = rouge_l_scores(predictions, references)
        write_jsonl(
            path,
            (
                {"id": i, "prediction": p, "references": r, "rougeL": s}
                for i, p, r, s in zip(ids, predictions, references, scores, strict=True)
            ),
        )
        manifest["runs"][stem] = {
            "rougeL": sum(scores) / len(scores),
            "seconds": round(seconds, 3),
            "seed": None if decoding.greedy else seed,
        }
        write_json(folder / "manifest.json", manifest)

    per_run = {stem: manifest["runs"][stem] for stem, _ in decoding.runs()}
    values = [run["rougeL"] for run in per_run.values()]
    result: dict[str, Any] = {
        "kind": "instruction",
        "label": suite.label,
        "source": suite.source,
        "note": suite.note,
        "rows": len(suite),
        "examples": len(examples),
        "dropped_prompts": len(dropped),
        "dropped_ids": [row["id"] for row in dropped],
        "prompt_mismatches": suite.prompt_mismatches,
        "rougeL": statistics.fmean(values),
        "rougeL_std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "runs": per_run,
    }
    if quality:
        result["quality"] = _quality(
            folder,
            manifest,
            model,
            tokenizer,
            examples,
            teacher=teacher,
            key={"teacher_fingerprint": teacher_print, "max_length": quality_max_length},
            max_length=quality_max_length,
            batch_size=quality_batch_size,
            progress=progress,
        )
    return result


def _quality(
    folder: Path,
    manifest: dict[str, Any],
    model: Any,
    tokenizer: Any,
    examples: list[EvalExample],
    *,
    teacher: Any,
    key: dict[str, Any],
    max_length: int,
    batch_size: int,
    progress: bool,
) -> dict[str, Any]:
    path = folder / "quality.jsonl"
    if manifest.get("quality", {}).get("key") == key and path.is_file():
        rows = list(read_jsonl(path))
        return {**summarize_quality(rows, manifest["quality"]["dropped"]), "max_length": max_length}
    # Computed afresh when missing or when the teacher changed (cheap next to generation).
    result = distillation_quality(
        model,
        tokenizer,
        examples,
        teacher=teacher,
        max_length=max_length,
        batch_size=batch_size,
        progress=progress,
    )
    rows = [row.as_dict() for row in result.rows]
    write_jsonl(path, rows)
    manifest["quality"] = {"key": key, "dropped": len(result.dropped)}
    write_json(folder / "manifest.json", manifest)
    return {**summarize_quality(rows, len(result.dropped)), "max_length": max_length}


def _resolved_precision(model: Any, decoding: Decoding) -> str:
    from spectrumkd.models.precision import resolve_precision

    return resolve_precision(decoding.precision, next(model.parameters()).device)


def _open_manifest(folder: Path, key: dict[str, Any]) -> dict[str, Any]:
    path = folder / "manifest.json"
    if path.is_file():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        old = manifest.get("generation", {})
        if old != key:
            changed = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            raise ValueError(
                f"{folder} holds results computed with different {', '.join(changed)}; use "
                "another --out folder or delete that one"
            )
        return manifest
    manifest = {"generation": key, "runs": {}}
    write_json(path, manifest)
    return manifest


def _check_run_file(path: Path, ids: list[str]) -> None:
    found = [row.get("id") for row in read_jsonl(path)]
    if found != ids:
        raise ValueError(
            f"{path} has {len(found)} rows whose ids do not match the {len(ids)} examples of this "
            "run; delete the file to regenerate it"
        )


def _data_fingerprint(examples: Sequence[EvalExample]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.id, example.prompt, list(example.references)]).encode())
    return digest.hexdigest()[:16]


def _name_of(model: Any) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def summary_table(summary: Mapping[str, Any]) -> Any:
    """A rich table: one row per set, then the average over the instruction sets."""
    from rich.table import Table

    decoding = summary["decoding"]
    if decoding["mode"] == "greedy":
        title = "ROUGE-L (greedy)"
    else:
        title = f"ROUGE-L (mean over seeds {', '.join(map(str, decoding['seeds']))})"
    table = Table(title=f"{title}; CE / KL in nats per reference token")
    for column in ("set", "examples", "dropped", "ROUGE-L", "std", "CE", "KL fwd", "KL rev"):
        table.add_column(column, justify="left" if column == "set" else "right")

    def number(value: Any, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for name, result in summary["suites"].items():
        if result.get("kind") == "instruction":
            q = result.get("quality") or {}
            table.add_row(
                result["label"],
                str(result["examples"]),
                str(result["dropped_prompts"]),
                number(result["rougeL"], 2),
                number(result["rougeL_std"], 2),
                number(q.get("ce"), 3),
                number(q.get("kl_forward"), 3),
                number(q.get("kl_reverse"), 3),
            )
        else:
            score = result.get("score")
            metric = result.get("metric", "score")
            table.add_row(f"{name} ({metric})", "", "", number(score, 2), "", "", "", "")
    average = summary["average"]["rougeL"]
    if average is not None:
        table.add_row("Average", "", "", number(average, 2), "", "", "", "", style="bold")
    notes = [
        f"{r['label']}: {r['note']}"
        for r in summary["suites"].values()
        if r.get("kind") == "instruction" and r.get("note")
    ]
    if notes:
        table.caption = "; ".join(notes)
    return table
