"""One page comparing training runs side by side (``spectrumkd report RUN_A RUN_B``, and the
demo's baseline against +SpectrumKD).

The first run is the base. The page shows the validation curves of every run on shared axes
(against the optimiser step, so runs with different epoch counts at step parity line up), the
metrics side by side at each run's kept epoch and at its last one, and, when both runs were
evaluated (``spectrumkd evaluate`` into ``eval/``), the per-example comparison of
:func:`spectrumkd.evaluation.compare.compare_runs` with its Wilcoxon tests. Validation KD is at
tau 1 in every run (the trainer measures it there), so the numbers compare whatever
temperatures the runs trained at. Like the run page, it is self-contained and written
atomically, figures first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spectrumkd.evaluation.compare import HIGHER_IS_BETTER, compare_runs, relative_gain
from spectrumkd.report import figures
from spectrumkd.report.html import (
    PAGE,
    RenderedFigure,
    escape,
    html_document,
    html_section,
    html_table,
    render_figure,
    set_label,
    write_page,
)
from spectrumkd.report.page import HEADLINE_METRICS
from spectrumkd.report.readers import EVAL_DIRS, RunData, as_number, read_run

# Every PNG name this module writes (stale ones are removed after a rewrite, nothing else).
OWN_PNG = re.compile(r"^(validation-comparison|evaluation-comparison)\.png$")


def _kd_name(runs: Sequence[tuple[str, RunData]]) -> str:
    """The KD term's name when every run used the same objective, else the generic "KD"."""
    names = {figures.divergence_name(run.objective) for _, run in runs}
    return names.pop() if len(names) == 1 else "KD"


def _kept(run: RunData) -> tuple[dict[str, Any] | None, str]:
    """The validation row of the epoch the run kept (its ``best/``) and why it was kept; the
    last epoch when the trainer recorded no best."""
    best = (run.trainer_state or {}).get("best")
    if isinstance(best, dict):
        row = next((r for r in run.epochs if r.get("epoch") == best.get("epoch")), None)
        metric = str(best.get("metric"))
        kd_name = figures.divergence_name(run.objective)
        why = {
            "val_kd": f"lowest val {kd_name} at tau {figures.EVAL_TEMPERATURE}",
            "val_ce": "lowest val CE",
            "val_rouge": "highest val ROUGE-L",
        }.get(metric, f"best {metric}")
        return row, why
    return (run.epochs[-1] if run.epochs else None), "last epoch (no best recorded)"


def _epochs_text(run: RunData) -> str | None:
    done = (run.trainer_state or {}).get("epoch")
    if not isinstance(done, int):
        done = int(run.epochs[-1]["epoch"]) if run.epochs else None
    if done is None:
        return None
    planned = run.planned_epochs
    return f"{done} of {planned}" if planned and done <= planned else str(done)


def comparison_rows(runs: Sequence[tuple[str, RunData]]) -> list[dict[str, Any]]:
    """The metrics side by side: one row per metric, one column per run and, for two runs,
    ``diff`` (second - first), ``gain %`` ((second - first) / first x 100) and ``better``
    (in the metric's direction; CE and KD: lower)."""
    kd_name = _kd_name(runs)
    kept = {name: _kept(run) for name, run in runs}
    last = {name: (run.epochs[-1] if run.epochs else None) for name, run in runs}

    def value(row: dict[str, Any] | None, key: str) -> float | None:
        return as_number(row.get(key)) if row else None

    specs: list[tuple[str, str | None, dict[str, Any]]] = [  # (label, direction, per run)
        ("strategy", None, {n: r.strategy for n, r in runs}),
        ("objective", None, {n: r.objective for n, r in runs}),
        ("epochs finished", None, {n: _epochs_text(r) for n, r in runs}),
        ("optimiser steps", None, {n: (r.trainer_state or {}).get("step") for n, r in runs}),
        (
            "kept epoch (why)",
            None,
            {n: f"{row.get('epoch')} ({why})" if row else None for n, (row, why) in kept.items()},
        ),
        ("val CE at the kept epoch", "lower", {n: value(k[0], "val_ce") for n, k in kept.items()}),
        (
            f"val {kd_name} at tau {figures.EVAL_TEMPERATURE} at the kept epoch",
            "lower",
            {n: value(k[0], "val_kd") for n, k in kept.items()},
        ),
        ("val CE at the last epoch", "lower", {n: value(r, "val_ce") for n, r in last.items()}),
        (
            f"val {kd_name} at tau {figures.EVAL_TEMPERATURE} at the last epoch",
            "lower",
            {n: value(r, "val_kd") for n, r in last.items()},
        ),
        ("validation tokens", None, {n: value(r, "val_tokens") for n, r in last.items()}),
    ]
    units = dict(HEADLINE_METRICS)
    set_names = list(dict.fromkeys(set_label(s) for _, run in runs for s in run.eval_sets))
    for set_name in set_names:
        entries = {
            n: next((s for s in run.eval_sets if set_label(s) == set_name), None) for n, run in runs
        }
        metric = next(
            (
                m
                for m, _ in HEADLINE_METRICS
                if any(e is not None and m in e.metrics for e in entries.values())
            ),
            None,
        )
        if metric is None:
            continue
        higher = HIGHER_IS_BETTER.get("pass@1" if metric == "pass_at_1" else metric, True)
        specs.append(
            (
                f"{set_name} {metric} ({units[metric]})",
                "higher" if higher else "lower",
                {n: e.metrics.get(metric) if e else None for n, e in entries.items()},
            )
        )
    rows = []
    names = [name for name, _ in runs]
    for label, direction, values in specs:
        row: dict[str, Any] = {"metric": label, **{n: values.get(n) for n in names}}
        if len(names) == 2:
            base, new = (as_number(values.get(n)) for n in names)
            numeric = base is not None and new is not None
            row["diff"] = new - base if numeric else None  # type: ignore[operator]
            row["gain %"] = relative_gain(base, new) if numeric and direction else None
            if numeric and direction:
                better = (new > base) == (direction == "higher")  # type: ignore[operator]
                row["better"] = "tie" if new == base else (names[1] if better else names[0])
            else:
                row["better"] = None
        rows.append(row)
    return rows


def _notes(runs: Sequence[tuple[str, RunData]]) -> list[str]:
    notes = []
    for name, run in runs:
        if not run.epochs:
            notes.append(f"{name}: no validation epoch in {run.run_dir}/metrics.jsonl")
    tokens = {name: as_number(run.epochs[-1].get("val_tokens")) for name, run in runs if run.epochs}
    if len({t for t in tokens.values() if t is not None}) > 1:
        shown = ", ".join(f"{n} {t:g}" for n, t in tokens.items() if t is not None)
        notes.append(
            f"the runs were validated on different rows (validation tokens: {shown}): "
            "their validation numbers do not compare"
        )
    objectives = {name: run.objective for name, run in runs}
    if len(set(objectives.values())) > 1:
        shown = ", ".join(f"{n} {o}" for n, o in objectives.items())
        notes.append(
            f"the runs distil different objectives ({shown}): their KD values differ in kind"
        )
    return notes


def _eval_folder(run: RunData) -> Path | None:
    return next(
        (run.run_dir / d for d in EVAL_DIRS if (run.run_dir / d / "summary.json").is_file()), None
    )


def _evaluation_part(
    runs: Sequence[tuple[str, RunData]],
) -> tuple[list[str], list[RenderedFigure], list[str]]:
    """The per-example comparison of two evaluated runs (``spectrumkd compare``)."""
    folders = [_eval_folder(run) for _, run in runs]
    if len(runs) != 2 or not all(folders):
        missing = [name for (name, _), f in zip(runs, folders, strict=True) if f is None]
        why = (
            f"not evaluated: {', '.join(missing)} (no eval/summary.json; run spectrumkd "
            "evaluate on each run's best/ for a per-example comparison with Wilcoxon tests)"
            if missing
            else "a per-example comparison needs exactly two runs"
        )
        return [], [], [why]
    try:
        result = compare_runs(folders[0], folders[1])  # type: ignore[arg-type]
    except (OSError, ValueError) as error:
        return [], [], [f"spectrumkd compare failed: {error}"]
    columns = ("set", "metric", "direction", "base", "new", "diff", "gain_pct", "better")
    rows = [
        {
            **{c: r.get(c) for c in columns},
            "p": r.get("p_value"),
            "n": r.get("n_pairs"),
            "note": r.get("note"),
        }
        for r in result["rows"]
    ]
    parts = [
        f"<p>{escape(result['test'])}; {escape(result['gain'])}. Base {escape(runs[0][0])}, "
        f"new {escape(runs[1][0])}.</p>",
        html_table(rows),
    ]
    rendered = []
    gains = {
        f"{r['set']} {r['metric']}": float(r["gain_pct"])
        for r in result["rows"]
        if as_number(r.get("gain_pct")) is not None
    }
    if gains:
        pvalues = {f"{r['set']} {r['metric']}": r.get("p_value") for r in result["rows"]}
        rendered.append(
            render_figure(
                "evaluation-comparison.png",
                figures.comparison_figure(gains, pvalues, "% relative"),
                "per-set relative gains with p-values",
                f"Relative gain of {runs[1][0]} over {runs[0][0]} per set and metric (for CE "
                "and KL a negative gain is an improvement), labelled with the Wilcoxon p-value.",
            )
        )
    notes = [f"{s['set']}: {s['reason']}" for s in result["skipped"]]
    return parts, rendered, notes


def _runs_html(runs: Sequence[tuple[str, RunData]], out_dir: Path | None) -> str:
    """Each run's folder and, where it has one, a link to its own page (relative to the
    comparison page, so the folder tree can move as a whole)."""
    rows = []
    for name, run in runs:
        page = run.run_dir / "report" / PAGE
        link = ""
        if out_dir is not None and page.is_file():
            href = Path(os.path.relpath(page.resolve(), out_dir.resolve())).as_posix()
            link = f'<a href="{escape(href)}">its report</a>'
        rows.append(
            f'<tr><th class="l">{escape(name)}</th><td class="l">{escape(run.run_dir.resolve())}</td>'
            f'<td class="l">{link}</td></tr>'
        )
    return f"<table>{''.join(rows)}</table>"


def render_comparison(
    runs: Sequence[tuple[str, RunData]], out_dir: Path | None = None
) -> tuple[str, list[RenderedFigure]]:
    """The comparison page's HTML and its figures, without writing anything; ``out_dir`` (where
    the page will be) lets it link each run's own page."""
    if len(runs) < 2:
        raise ValueError(f"a comparison needs at least two runs, got {len(runs)}")
    kd_name = _kd_name(runs)
    kept = {name: (_kept(run)[0] or {}).get("epoch") for name, run in runs}
    curves = figures.validation_comparison_figure(
        {name: run.epochs for name, run in runs}, kept, kd_name=kd_name
    )
    names = " vs ".join(name for name, _ in runs)
    curve_figure = render_figure(
        "validation-comparison.png",
        curves,
        f"validation CE and {kd_name} of {names} per epoch",
        f"Validation CE and {kd_name} at tau {figures.EVAL_TEMPERATURE} of each run on shared "
        "axes, against the optimiser step at each epoch's end (runs at step parity end at the "
        "same step); each point is labelled with its epoch, each run's kept epoch starred. "
        f"{kd_name} is measured at tau {figures.EVAL_TEMPERATURE} whatever tau an epoch "
        "trained at, so the curves compare.",
    )
    columns = ["metric", *(name for name, _ in runs)]
    if len(runs) == 2:
        columns += ["diff", "gain %", "better"]
    table = html_table(comparison_rows(runs), columns)
    if len(runs) == 2:
        table = (
            f"<p>diff = {escape(runs[1][0])} - {escape(runs[0][0])}; gain % = diff / "
            f"{escape(runs[0][0])} x 100; CE and KD per response token in nats, lower is better."
            "</p>" + table
        )
    sections = [
        html_section("Validation curves", [], [curve_figure], []),
        html_section("Metrics side by side", [table], [], _notes(runs)),
    ]
    parts, evaluation_figures, notes = _evaluation_part(runs)
    sections.append(html_section("Evaluation (per example)", parts, evaluation_figures, notes))
    all_figures = [curve_figure, *evaluation_figures]
    page = html_document(
        f"SpectrumKD comparison: {names}",
        "",
        f" &middot; {len(all_figures)} figure(s); base: {escape(runs[0][0])}",
        f"{_runs_html(runs, out_dir)}{''.join(sections)}",
    )
    return page, all_figures


def write_comparison_report(
    runs: Mapping[str, str | Path] | Sequence[tuple[str, str | Path]], out_dir: str | Path
) -> Path:
    """Read each run folder (name -> folder, the first the base) and write
    ``out_dir/index.html`` with its PNG figures beside it; returns the page's path. Missing or
    partial runs are named on the page, never an error (a folder that does not exist is)."""
    pairs = list(runs.items()) if isinstance(runs, Mapping) else list(runs)
    read = [(str(name), read_run(folder)) for name, folder in pairs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)  # render_comparison links the runs relative to it
    return write_page(out, *render_comparison(read, out), own_png=OWN_PNG)
