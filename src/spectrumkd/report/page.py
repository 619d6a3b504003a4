"""``spectrumkd report``: one self-contained HTML page per run, its PNG figures beside it.

The page carries its CSS inline and loads nothing but the PNGs next to it (no scripts, fonts or
stylesheets from anywhere: the machines that read it may be offline). Each figure and the page
are written atomically, figures first, so a reader never sees a page pointing at a missing or
half-written image.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from spectrumkd.curation.analyzer import LogNormalFit, fit_lognormal
from spectrumkd.report import figures
from spectrumkd.report.comparison_tables import comparison_tables, find_key
from spectrumkd.report.html import (
    RenderedFigure,
    escape,
    format_value,
    html_document,
    html_section,
    html_table,
    render_figure,
    safe_name,
    set_label,
    write_page,
)
from spectrumkd.report.mixture import is_mixture, mixture_section, mixture_skip
from spectrumkd.report.readers import RunData, as_number, read_run

REPORT_DIR = "report"
# Every PNG name this module writes: stale ones from an earlier report of the same folder are
# removed, and nothing else in a user-chosen --out folder is touched.
OWN_PNG = re.compile(
    r"^(difficulty|spectrum|schedule|mixture|training|evaluation-[\w.-]+|comparison-\d+)\.png$"
)

# Headline metric of an evaluation set, in order of preference, with its unit.
HEADLINE_METRICS = (
    ("rougeL", "ROUGE-L F1 x 100"),
    ("pass_at_1", "% of problems solved"),
    ("win_rate", "share of judged pairs won"),
    ("ce", figures.LOSS_UNIT),
)

# ---- sections: each returns (html, figures) ---------------------------------------------------


def _difficulty_section(run: RunData) -> tuple[str, list[RenderedFigure]]:
    if run.difficulties is None and is_mixture(run):
        skip = mixture_skip(run, "difficulty histogram")
        return html_section("Difficulty distribution", [skip], [], []), []
    notes = list(run.notes.get("Difficulties", []))
    parts, rendered = [], []
    if run.difficulties is not None:
        fit: LogNormalFit | None = None
        try:
            fit = fit_lognormal(run.difficulties)
        except ValueError as error:
            notes.append(f"no log-normal fit: {error}")
        values = run.difficulties
        caption = (
            f"Histogram of the {values.size:,} per-example losses of the initial student "
            f"(from {run.difficulty_source})"
        )
        if fit is not None:
            caption += (
                f" with a robust log-normal fit (median/MAD of log-loss: mu={fit.mu:.3f}, "
                f"sigma={fit.sigma:.3f}); Kolmogorov-Smirnov D={fit.ks_statistic:.3f}, "
                f"p={fit.ks_pvalue:.2g} (p is optimistic: the parameters were fitted on the same data)."
            )
        else:
            caption += "."
        rendered.append(
            render_figure(
                "difficulty.png",
                figures.difficulty_figure(values, fit),
                "histogram of the losses with a log-normal fit",
                caption,
            )
        )
        stats = {
            "examples": values.size,
            "min": float(values.min()),
            "median": float(np.median(values)),
            "mean": float(values.mean()),
            "max": float(values.max()),
        }
        parts.append(html_table([stats]))
    return html_section("Difficulty distribution", parts, rendered, notes), rendered


def _spectrum_section(run: RunData) -> tuple[str, list[RenderedFigure]]:
    if run.spectrum is None and is_mixture(run):
        skip = mixture_skip(run, "difficulty spectrum")
        return html_section("Difficulty spectrum", [skip], [], []), []
    notes = []
    parts, rendered = [], []
    spectrum = run.spectrum
    if spectrum is None:
        notes.append("no spectrum: the student was not scored yet")
    else:
        if not spectrum.zones:
            notes.append(
                "no zones (spectrum.jsonl rows carry no 'zone' and there is no schedule.json)"
            )
        zone_text = ", ".join(
            f"{figures.ZONE_LABELS[z]} {s:,}-{e:,}" for z, (s, e) in spectrum.zones.items()
        )
        caption = (
            f"The {spectrum.difficulties.size:,} examples sorted by difficulty (from "
            f"{spectrum.source}); shaded: the curation zones by rank"
            + (f" ({zone_text})." if zone_text else ".")
        )
        rendered.append(
            render_figure(
                "spectrum.png",
                figures.spectrum_figure(spectrum.difficulties, spectrum.zones),
                "sorted losses with the four zones shaded",
                caption,
            )
        )
        if run.schedule and isinstance(run.schedule.get("zones"), dict):
            rows = []
            for name, zone in run.schedule["zones"].items():
                if isinstance(zone, dict):
                    rows.append(
                        {
                            "zone": figures.ZONE_LABELS.get(name, name),
                            "ranks": f"{zone.get('start_rank')}-{zone.get('end_rank')}",
                            "examples": zone.get("size"),
                            "min loss": zone.get("min_difficulty"),
                            "max loss": zone.get("max_difficulty"),
                        }
                    )
            parts.append(html_table(rows))
    return html_section("Difficulty spectrum", parts, rendered, notes), rendered


def _schedule_section(run: RunData) -> tuple[str, list[RenderedFigure]]:
    """Any strategy's plan, drawn the same way: each epoch's examples as a band over the
    difficulty ranks (SpectrumKD's window, a stage), temperature and KD weight per epoch."""
    notes = list(run.notes.get("Schedule", []))
    parts, rendered = [], []
    schedule = run.schedule
    if is_mixture(run):
        skip = mixture_skip(run, "ranks per epoch (its epochs are update intervals)")
        return html_section("Curriculum schedule", [skip], [], notes), []
    if schedule is not None:
        epochs = [
            e
            for e in schedule["epochs"]
            if isinstance(e, dict)
            and as_number(e.get("epoch")) is not None
            and as_number(e.get("temperature")) is not None
            and figures.epoch_ranks(e) is not None
        ]
        if len(epochs) < len(schedule["epochs"]):
            notes.append(
                f"{len(schedule['epochs']) - len(epochs)} epoch(s) of {run.schedule_source} lack "
                "the ranks they train on (window or stage ranks) or a temperature; not drawn"
            )
        if epochs:
            strategy = str(schedule.get("strategy", "curation"))
            n = int(
                as_number(schedule.get("n_examples"))
                or as_number(schedule.get("num_examples"))
                or max(figures.epoch_ranks(e)[1] for e in epochs)
            )
            zones = run.spectrum.zones if run.spectrum and strategy == "spectrumkd" else {}
            windowed = all("window_start_rank" in e for e in epochs)
            caption = (
                _window_caption(run, schedule, epochs)
                if windowed
                else _stage_caption(run, schedule, epochs)
            )
            rendered.append(
                render_figure(
                    "schedule.png",
                    figures.schedule_figure(epochs, n, zones, strategy),
                    "per-epoch ranks trained on, temperature and KD weight",
                    caption,
                )
            )
            rows = []
            for e in epochs:
                first, last = figures.epoch_ranks(e)
                rows.append(
                    {
                        "epoch": e["epoch"],
                        **({} if windowed else {"stage": e.get("stage", 1)}),
                        **({} if windowed else {"restart": "yes" if e.get("restart") else ""}),
                        ("window ranks" if windowed else "ranks"): f"{first}-{last}",
                        "examples": e.get("num_examples"),
                        "mean difficulty": e.get("mean_difficulty"),
                        "temperature": e["temperature"],
                        **({} if windowed else {"KD weight": e.get("kd_weight")}),
                    }
                )
            parts.append(f"<details><summary>Epoch table</summary>{html_table(rows)}</details>")
    return html_section("Curriculum schedule", parts, rendered, notes), rendered


def _window_caption(run: RunData, schedule: dict, epochs: list[dict]) -> str:
    first, last = epochs[0], epochs[-1]
    means = (as_number(first.get("mean_difficulty")), as_number(last.get("mean_difficulty")))
    return (
        f"{schedule.get('strategy', 'curation')} schedule from {run.schedule_source}: "
        f"{len(epochs)} epochs of a {schedule.get('window_size', '?')}-example window moving "
        f"from ranks {first['window_start_rank']}-{first['window_end_rank']} to "
        f"{last['window_start_rank']}-{last['window_end_rank']}; "
        + (f"mean difficulty {means[0]:.3f} -> {means[1]:.3f} nats, " if None not in means else "")
        + f"temperature {first['temperature']:g} -> {last['temperature']:g}."
    )


def _stage_caption(run: RunData, schedule: dict, epochs: list[dict]) -> str:
    """One clause per stage: its epochs, ranks, temperature and KD weight; then the restarts."""
    stages: dict[int, list[dict]] = {}
    for epoch in epochs:
        stages.setdefault(int(as_number(epoch.get("stage")) or 1), []).append(epoch)
    clauses = []
    for number, members in stages.items():
        first, last = figures.epoch_ranks(members[0])
        weight = members[0].get("kd_weight")
        clauses.append(
            f"stage {number}: epochs {members[0]['epoch']}-{members[-1]['epoch']}, ranks "
            f"{first}-{last}, tau {float(members[0]['temperature']):g}"
            + (f", KD weight {float(weight):g}" if as_number(weight) is not None else "")
        )
    restarts = [str(e["epoch"]) for e in epochs if e.get("restart") is True]
    settings = schedule.get("settings")
    described = (
        " (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"
        if isinstance(settings, dict)
        else ""
    )
    return (
        f"{schedule.get('strategy', 'curation')}{described} schedule from "
        f"{run.schedule_source}: {len(epochs)} epochs in {len(stages)} stage(s); "
        + "; ".join(clauses)
        + (
            f". The optimiser and LR schedule restart at epoch(s) {', '.join(restarts)}."
            if restarts
            else "."
        )
    )


def _training_section(run: RunData) -> tuple[str, list[RenderedFigure]]:
    notes = list(run.notes.get("Training", []))
    parts, rendered = [], []
    state = run.trainer_state or {}
    best = state.get("best") if isinstance(state.get("best"), dict) else None
    if run.steps or run.epochs or state:
        planned = run.planned_epochs
        done = state.get("epoch")
        status: list[str] = []  # HTML fragments, each escaped where it is built
        if isinstance(done, int):
            # "epoch 4 of 3" would mean the total is not this run's: say so instead.
            total = f" of {planned}" if planned and done <= planned else ""
            status.append(escape(f"epoch {done}{total} finished (step {state.get('step', '?')})"))
            if planned and done < planned:
                status.append('<span class="warn">in progress or stopped</span>')
            elif planned and done == planned:
                status.append('<span class="ok">complete</span>')
            elif planned:
                status.append(
                    '<span class="warn">'
                    + escape(
                        f"more than the {planned} epochs of {run.schedule_source or 'its config'}"
                    )
                    + "</span>"
                )
        if best:
            where = "in best/" if run.has_best else "best/ missing"
            metric = best.get("metric")
            named = {
                "val_kd": f"{figures.divergence_name(run.objective)} at tau "
                f"{figures.EVAL_TEMPERATURE}",
                "val_ce": "CE",
                "val_rouge": "ROUGE-L",
            }.get(str(metric))
            order = "highest" if metric == "val_rouge" else "lowest"
            status.append(
                escape(
                    f"kept epoch {best.get('epoch')}: {order} validation "
                    f"{named + f' ({metric})' if named else metric} = "
                    f"{format_value(best.get('value'))} ({where})"
                )
            )
        status.append(escape("final student in final/" if run.has_final else "no final/ yet"))
        parts.append(f"<p>{'; '.join(status)}.</p>")
        logged_alpha = bool(run.steps) and all(
            as_number(r.get("alpha")) is not None for r in run.steps
        )
        if run.alpha is None and not logged_alpha and run.steps:
            notes.append(
                "alpha unknown (no checkpoint/trainer_state.json or run_config.yaml yet): "
                "the total loss is not drawn"
            )
        if (
            run.schedule
            and any(
                isinstance(e, dict) and e.get("kd_weight") is not None
                for e in run.schedule["epochs"]
            )
            and not logged_alpha
        ):
            notes.append(
                "the plan sets per-epoch KD weights but the steps carry no alpha: "
                "the drawn total uses the run's alpha"
            )
        last_step = run.steps[-1] if run.steps else None
        kd_name = figures.divergence_name(run.objective)
        at_eval = f"at tau {figures.EVAL_TEMPERATURE}"
        has_train_tau = any(as_number(r.get("val_kd_train_tau")) is not None for r in run.epochs)
        caption = (
            f"Per-token CE and {kd_name} (at each step's temperature) for {len(run.steps)} "
            "logged steps"
            + (
                ", total with each step's logged alpha"
                if logged_alpha
                else f", total with alpha={run.alpha:g} from {run.alpha_source}"
                if run.alpha is not None
                else ""
            )
            + f"; validation CE and {kd_name} {at_eval} for {len(run.epochs)} epoch(s)"
            + (
                f" ({kd_name} at the epoch's training temperature drawn as its own series)"
                if has_train_tau
                else ""
            )
            + (f", kept epoch {best['epoch']} starred" if best else "")
            + (f"; last logged step {last_step['step']}" if last_step else "")
            + "."
        )
        rendered.append(
            render_figure(
                "training.png",
                figures.training_figure(
                    run.steps, run.epochs, alpha=run.alpha, best=best, kd_name=kd_name
                ),
                "training loss curves and validation metrics",
                caption,
            )
        )
        if run.epochs:
            tau = _training_temperatures(run)
            kd_column = f"val {kd_name} {at_eval} (val_kd)"
            train_column = f"val {kd_name} at training tau (val_kd_train_tau)"
            rows = [
                {
                    "epoch": r.get("epoch"),
                    "step": r.get("step"),
                    "training tau": tau.get(r.get("epoch")),
                    "val CE (val_ce)": r.get("val_ce"),
                    kd_column: r.get("val_kd"),
                    **({train_column: r.get("val_kd_train_tau")} if has_train_tau else {}),
                    "val tokens": r.get("val_tokens"),
                    "kept": "*" if best and r.get("epoch") == best.get("epoch") else "",
                }
                for r in run.epochs
            ]
            parts.append(
                "<details><summary>Validation table (per response token, nats; "
                f"{escape(kd_name)} {at_eval} whatever the epoch trained at)</summary>"
                f"{html_table(rows)}</details>"
            )
    return html_section("Training", parts, rendered, notes), rendered


def _training_temperatures(run: RunData) -> dict[Any, float]:
    """Each epoch's training temperature, from its logged steps or else the plan."""
    tau: dict[Any, float] = {}
    if run.schedule:
        for entry in run.schedule["epochs"]:
            if isinstance(entry, dict) and as_number(entry.get("temperature")) is not None:
                tau[entry.get("epoch")] = float(entry["temperature"])
    for row in run.steps:  # what the trainer actually used wins over the plan
        if as_number(row.get("temperature")) is not None:
            tau[row.get("epoch")] = float(row["temperature"])
    return tau


def _evaluation_section(run: RunData) -> tuple[str, list[RenderedFigure]]:
    notes = list(run.notes.get("Evaluation", []))
    parts, rendered = [], []
    if run.eval_sets:
        columns = list(dict.fromkeys(k for s in run.eval_sets for k in s.metrics))
        # Headline metrics first, in HEADLINE_METRICS order, then the rest as found.
        ordered = [m for m, _ in HEADLINE_METRICS if m in columns]
        ordered += [c for c in columns if c not in ordered]
        rows = [{"set": set_label(s), **s.metrics} for s in run.eval_sets]
        parts.append(html_table(rows, ["set", *ordered]))
        per_run = [{"set": set_label(s), **s.per_run} for s in run.eval_sets if s.per_run]
        if per_run:
            parts.append(
                "<details><summary>Per generation run (mean ROUGE-L of each sampling seed, "
                f"or greedy)</summary>{html_table(per_run)}</details>"
            )
        groups: dict[str, dict[str, float]] = {}
        for entry in run.eval_sets:
            for metric, _ in HEADLINE_METRICS:
                if metric in entry.metrics:
                    groups.setdefault(metric, {})[set_label(entry)] = entry.metrics[metric]
                    break
        units = dict(HEADLINE_METRICS)
        for metric, values in groups.items():
            rendered.append(
                render_figure(
                    f"evaluation-{safe_name(metric)}.png",
                    figures.evaluation_figure(values, metric, units[metric]),
                    f"{metric} per evaluation set",
                    f"{metric} ({units[metric]}) on {len(values)} set(s), from {run.eval_source}/"
                    + (" (mean over sampling seeds)." if metric == "rougeL" else "."),
                )
            )
    return html_section("Evaluation", parts, rendered, notes), rendered


def _comparison_section(run: RunData) -> tuple[str, list[RenderedFigure]]:
    notes = list(run.notes.get("Comparison", []))
    parts, rendered = [], []
    for source, value in run.comparisons:
        header, tables = comparison_tables(value)
        parts.append(f"<h3>{escape(source)}</h3>")
        if header:
            parts.append(
                "<p>"
                + "; ".join(f"{escape(k)}: {escape(format_value(v))}" for k, v in header.items())
                + "</p>"
            )
        if not tables:
            notes.append(f"{source}: no per-set table found in it")
        for rows in tables:
            parts.append(html_table(rows))
            gain = find_key(rows, "gain", "delta", "diff")
            p_key = find_key(rows, "p_value", "pvalue", "p-value") or (
                "p" if any(as_number(r.get("p")) is not None for r in rows) else None
            )
            name_key = next((k for k in ("set", "name", "benchmark") if k in rows[0]), None)
            if gain and name_key:

                def label(row: dict, name_key: str = name_key) -> str:
                    # spectrumkd compare has one row per (set, metric): keep them apart.
                    metric = row.get("metric")
                    return f"{row[name_key]} {metric}" if metric else str(row[name_key])

                gains = {
                    label(r): float(r[gain]) for r in rows if as_number(r.get(gain)) is not None
                }
                pvalues = {label(r): as_number(r.get(p_key)) if p_key else None for r in rows}
                relative = ("%", "percent", "pct", "rel", "p.")
                unit = "% relative" if any(r in gain.lower() for r in relative) else "metric units"
                index = len(rendered) + 1
                rendered.append(
                    render_figure(
                        f"comparison-{index}.png",
                        figures.comparison_figure(gains, pvalues, unit),
                        "per-set gains with p-values",
                        f"Column '{gain}' of {source} per set"
                        + (
                            f", labelled with '{p_key}' (Wilcoxon signed-rank where the comparison used it)."
                            if p_key
                            else "; no p-values in the file."
                        ),
                    )
                )
    if not run.comparisons:
        notes.append("no compare*.json / comparison*.json: no comparison with another run")
    return html_section("Comparison", parts, rendered, notes), rendered


def _facts_html(run: RunData) -> str:
    if not run.facts:
        return ""
    rows = "".join(
        f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(v)}</td></tr>'
        for k, v in run.facts.items()
    )
    return f"<table>{rows}</table>"


def render_page(run: RunData) -> tuple[str, list[RenderedFigure]]:
    """The page's HTML and its figures, without writing anything."""
    sections, all_figures = [], []
    for build in (
        _difficulty_section,
        _spectrum_section,
        _schedule_section,
        mixture_section,
        _training_section,
        _evaluation_section,
        _comparison_section,
    ):
        text, rendered = build(run)
        sections.append(text)
        all_figures.extend(rendered)
    page = html_document(
        f"SpectrumKD report: {run.run_dir.resolve().name}",
        f"{escape(run.run_dir.resolve())} &middot; ",
        f" &middot; {len(all_figures)} figure(s)",
        f"{_facts_html(run)}{''.join(sections)}",
    )
    return page, all_figures


def write_report(
    run_dir: str | Path, out_dir: str | Path | None = None, *, run: RunData | None = None
) -> Path:
    """Read ``run_dir`` and write ``out_dir/index.html`` (default ``run_dir/report``) with its
    PNG figures beside it; returns the page's path. Parts of the run that are missing or
    truncated are named on the page, never an error; ``run`` skips reading when the caller
    already read the folder (:func:`spectrumkd.report.readers.read_run`)."""
    run = run if run is not None else read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    return write_page(out, *render_page(run), own_png=OWN_PNG)
