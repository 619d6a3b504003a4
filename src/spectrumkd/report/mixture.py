"""The "Domain mixture" section of a run page: a ``ddk`` or ``domain_mix`` run's domain weights
over optimiser steps, DDK's per-domain perplexity ratios, one table row per update and the cost
of the updates (the student's extra forwards on the domain validation rows).

Where the numbers come from (see ``spectrumkd.curation.ddk`` and ``spectrumkd.distillation.
dynamic``): step 0 is ``schedule.json``'s ``mixture`` (the plan's weights and, for DDK, the
teacher's and the untrained student's perplexity per domain); each later point is a
``plan_update`` row of ``metrics.jsonl``, logged at the step before the interval it decides;
``checkpoint/trainer_state.json`` holds the updater's history and the total update seconds.
A mixture plan ranks no examples by difficulty, so the difficulty, spectrum and rank-schedule
sections show one line instead (:func:`mixture_skip`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure

from spectrumkd.report.html import (
    RenderedFigure,
    escape,
    format_value,
    html_section,
    html_table,
    render_figure,
)
from spectrumkd.report.readers import RunData, as_number

MIXTURE_STRATEGIES = ("ddk", "domain_mix")
FIGURE = "mixture.png"


def is_mixture(run: RunData) -> bool:
    """Whether the run trained on a domain-mixture plan (its schedule, its trainer state or a
    logged plan update says so)."""
    schedule = run.schedule or {}
    return (
        isinstance(schedule.get("mixture"), dict)
        or schedule.get("strategy") in MIXTURE_STRATEGIES
        or run.strategy in MIXTURE_STRATEGIES
        or bool(_mixture_updates(run))
    )


def _mixture_updates(run: RunData) -> list[dict[str, Any]]:
    """The logged updates of a mixture plan (other dynamic plans, DA-KD's, log their own)."""
    return [r for r in run.plan_updates if r.get("plan_update") in MIXTURE_STRATEGIES]


def mixture_strategy(run: RunData) -> str:
    strategy = (run.schedule or {}).get("strategy") or run.strategy
    return str(strategy) if strategy else "domain-mixture"


def mixture_skip(run: RunData, what: str) -> str:
    """The one line a difficulty-based section shows for a mixture run instead of ``what``."""
    return f"<p>{escape(f'A {mixture_strategy(run)} plan draws each interval by domain weights and ranks no examples by difficulty: no {what}; see Domain mixture.')}</p>"


@dataclass
class MixturePoint:
    """The weights in force from ``step`` on, and what the update that chose them measured."""

    step: int
    epoch: int | None
    weights: dict[str, float]
    student_perplexity: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    update_seconds: float | None = None
    validation_tokens: float | None = None
    source: str = "update (metrics.jsonl)"


@dataclass
class Mixture:
    strategy: str
    domains: list[str]
    points: list[MixturePoint]  # step 0 (the plan's weights, when known) first, then updates
    teacher_perplexity: dict[str, float]
    end_step: int  # the last step the run is known to have reached
    notes: list[str]


def _numbers(value: Any, domains: Sequence[str]) -> dict[str, float] | None:
    """``{domain: number}`` for every domain, or None when any is missing or not a number."""
    if not isinstance(value, Mapping):
        return None
    numbers = {d: as_number(value.get(d)) for d in domains}
    return None if any(v is None for v in numbers.values()) else numbers  # type: ignore[return-value]


def _ratios(student: dict[str, float], teacher: dict[str, float]) -> dict[str, float]:
    if not student or not teacher or any(teacher[d] == 0 for d in student):
        return {}
    return {d: student[d] / teacher[d] for d in student}


def _history(run: RunData) -> list[Any]:
    """The updater's history in ``checkpoint/trainer_state.json`` (empty when absent)."""
    updater = (run.trainer_state or {}).get("plan_updater")
    history = updater.get("history") if isinstance(updater, dict) else None
    return history if isinstance(history, list) else []


def read_mixture(run: RunData) -> Mixture:
    """The mixture's points from whatever the run folder holds; gaps become notes."""
    strategy = mixture_strategy(run)
    notes: list[str] = []
    meta = (run.schedule or {}).get("mixture")
    meta = meta if isinstance(meta, dict) else {}
    domains = [str(d) for d in meta.get("domains") or [] if isinstance(d, str)]
    if not domains:
        # Without the plan, the domains of the fullest update (a torn row names fewer).
        rows = [*_mixture_updates(run), *_history(run)]
        named = [
            r["weights"] for r in rows if isinstance(r, dict) and isinstance(r.get("weights"), dict)
        ]
        domains = [str(d) for d in max(named, key=len, default={})]
    teacher = _numbers(meta.get("teacher_perplexity"), domains) or {}
    points: list[MixturePoint] = []
    initial = _numbers(meta.get("weights"), domains)
    if initial is not None:
        student = _numbers(meta.get("student_perplexity"), domains) or {}
        ratios = _ratios(student, teacher)
        points.append(MixturePoint(0, 1, initial, student, ratios, source="plan (schedule.json)"))
    elif run.schedule is not None:
        notes.append(f"{run.schedule_source}: no mixture weights per domain; step 0 not drawn")
    else:
        notes.append("no schedule.json: the plan's initial weights (step 0) are unknown")
    by_epoch: dict[Any, MixturePoint] = {}
    skipped = 0
    for row in _mixture_updates(run):
        step, weights = as_number(row.get("step")), _numbers(row.get("weights"), domains)
        if step is None or weights is None:
            skipped += 1
            continue
        student = _numbers(row.get("student_perplexity"), domains) or {}
        epoch = as_number(row.get("epoch"))
        # A resumed run logs an update again only if its first log was dropped; the later wins.
        by_epoch[epoch if epoch is not None else step] = MixturePoint(
            int(step),
            int(epoch) if epoch is not None else None,
            weights,
            student,
            _numbers(row.get("ratios"), domains) or _ratios(student, teacher),
            as_number(row.get("update_seconds")),
            as_number(row.get("validation_tokens")),
        )
    if skipped:
        notes.append(
            f"metrics.jsonl: {skipped} plan update row(s) lack a step or a weight for every "
            "domain; not drawn"
        )
    updates = sorted(by_epoch.values(), key=lambda p: p.step)
    points.extend(updates)
    history = _history(run)
    if len(history) > len(updates):
        notes.append(
            f"checkpoint/trainer_state.json's updater history holds {len(history)} update(s), "
            f"metrics.jsonl {len(updates)}: the rows of the others are missing"
        )
    state_step = as_number((run.trainer_state or {}).get("step"))
    ends = [p.step for p in points] + [int(as_number(r.get("step")) or 0) for r in run.steps]
    end = max([*ends, int(state_step or 0)], default=0)
    return Mixture(strategy, domains, points, teacher, end, notes)


def mixture_figure(mixture: Mixture) -> Figure:
    """The weights as stepped lines over optimiser steps (each in force until the next update),
    the uniform 1/D level dashed; for DDK a second panel of the student's perplexity over the
    teacher's per domain at each measurement (1: the student matches the teacher)."""
    points, domains = mixture.points, mixture.domains
    with_ratios = any(p.ratios for p in points)
    figure = Figure(figsize=(8, 6.4 if with_ratios else 3.8), layout="constrained")
    axes = figure.subplots(2 if with_ratios else 1, 1, sharex=True, squeeze=False)[:, 0]
    steps = [p.step for p in points]
    end = max(mixture.end_step, steps[-1])
    colours = [f"C{i % 10}" for i in range(len(domains))]
    for domain, colour in zip(domains, colours, strict=True):
        values = [p.weights[domain] for p in points]
        axes[0].step([*steps, end], [*values, values[-1]], where="post", color=colour, label=domain)
        axes[0].plot(steps, values, "o", color=colour, markersize=3)
    axes[0].axhline(
        1 / len(domains),
        color="#777",
        linestyle="--",
        linewidth=1,
        label=f"uniform 1/{len(domains)}",
    )
    axes[0].set_ylim(0, max(max(p.weights.values()) for p in points) * 1.12)
    axes[0].set_ylabel("domain weight (sampling probability)")
    axes[0].set_title(f"{mixture.strategy}: domain weights over training")
    axes[0].legend(fontsize=8, ncol=min(4, len(domains) + 1), loc="upper right")
    if with_ratios:
        measured = [p for p in points if p.ratios]
        for domain, colour in zip(domains, colours, strict=True):
            axes[1].plot(
                [p.step for p in measured],
                [p.ratios[domain] for p in measured],
                "o-",
                color=colour,
                markersize=4,
                label=domain,
            )
        axes[1].axhline(1.0, color="#777", linestyle="--", linewidth=1, label="student = teacher")
        axes[1].set_ylabel("student / teacher perplexity")
        axes[1].legend(fontsize=8, ncol=min(4, len(domains) + 1), loc="upper right")
    axes[-1].set_xlabel("optimiser step (weights in force from each point on)")
    axes[-1].set_xlim(0, max(end, 1))
    return figure


def _table(mixture: Mixture) -> str:
    rows = []
    for point in mixture.points:
        row: dict[str, Any] = {
            "step": point.step,
            "decides interval": point.epoch,
            "from": point.source,
        }
        row.update({f"weight {d}": point.weights[d] for d in mixture.domains})
        row.update({f"student ppl {d}": point.student_perplexity.get(d) for d in mixture.domains})
        row.update({f"ratio {d}": point.ratios.get(d) for d in mixture.domains})
        row["update s"] = point.update_seconds
        rows.append(row)
    if not any(p.student_perplexity or p.ratios or p.update_seconds for p in mixture.points):
        for row in rows:  # fixed weights: nothing measured
            for key in [k for k in row if k.startswith(("student ppl", "ratio", "update s"))]:
                del row[key]
    return html_table(rows)


def _overhead(run: RunData, mixture: Mixture) -> str:
    updates = [p for p in mixture.points if p.update_seconds is not None]
    meta = (run.schedule or {}).get("mixture") or {}
    initial = as_number(meta.get("measure_seconds")) if isinstance(meta, dict) else None
    if not updates and not _mixture_updates(run) and mixture.strategy != "ddk":
        return "<p>Fixed weights: no updates, so no extra forwards beyond training.</p>"
    logged = sum(p.update_seconds or 0.0 for p in updates)
    tokens = [p.validation_tokens for p in updates if p.validation_tokens is not None]
    state = as_number((run.trainer_state or {}).get("plan_update_seconds"))
    text = (
        f"Cost of the updates: {len(updates)} update(s), {logged:.2f} s in total "
        "(sum of update_seconds in metrics.jsonl"
        + (f"; checkpoint/trainer_state.json totals {state:.2f} s" if state is not None else "")
        + ")"
        + (f", student forwards on {format_value(sum(tokens))} validation tokens" if tokens else "")
        + "."
        + (
            f" Before training, the plan measured the teacher and the untrained student in "
            f"{initial:.2f} s (schedule.json)."
            if initial is not None
            else ""
        )
    )
    trained = as_number((run.trainer_state or {}).get("train_seconds"))
    if trained:
        spent = (state if state is not None else logged) + (initial or 0.0)
        text += (
            f" Share of the run: {spent:.1f} s of {trained + (initial or 0.0):.1f} s "
            f"({100 * spent / (trained + (initial or 0.0)):.1f} %; the run's seconds are "
            "trainer_state.json's train_seconds, the finished epochs' wall time, plus the "
            "plan's measurement before training)."
        )
    else:
        text += (
            " The share of the run this is needs the run's wall time, which this run folder "
            "does not record (trainer_state.json has no train_seconds: a trainer older than "
            "the field, or no finished epoch)."
        )
    return f"<p>{escape(text)}</p>"


def mixture_section(run: RunData) -> tuple[str, list[RenderedFigure]]:
    """The section of a mixture run; ``("", [])`` for any other run (its page is unchanged)."""
    if not is_mixture(run):
        return "", []
    mixture = read_mixture(run)
    notes = list(mixture.notes)
    parts, rendered = [], []
    if not mixture.domains or not mixture.points:
        notes.append("no domain weights recorded yet (schedule.json's mixture or a plan update)")
        return html_section("Domain mixture", parts, rendered, notes), rendered
    uniform = 1 / len(mixture.domains)
    last = mixture.points[-1]
    spread = ", ".join(f"{d} {last.weights[d]:.3f}" for d in mixture.domains)
    provisional = sum(
        1
        for e in (run.schedule or {}).get("epochs", [])
        if isinstance(e, dict) and e.get("provisional")
    )
    caption = (
        f"{mixture.strategy} weights of {len(mixture.domains)} domains over steps 0-"
        f"{max(mixture.end_step, last.step)}: step 0 from schedule.json, then "
        f"{len(mixture.points) - (mixture.points[0].step == 0)} logged update(s); "
        f"uniform 1/{len(mixture.domains)} = {uniform:.3f} dashed; weights at step {last.step}: "
        f"{spread}."
        + (
            " Lower panel: the student's perplexity over the teacher's per domain at each "
            "measurement (DDK raises the weight of the domains where it is highest)."
            if any(p.ratios for p in mixture.points)
            else ""
        )
        + (
            f" schedule.json's {provisional} later interval(s) were drawn from the initial "
            "weights before training (provisional); the updates replaced them."
            if provisional
            else ""
        )
    )
    rendered.append(
        render_figure(
            FIGURE,
            mixture_figure(mixture),
            "domain weights over optimiser steps",
            caption,
        )
    )
    parts.append(_table(mixture))
    parts.append(_overhead(run, mixture))
    return html_section("Domain mixture", parts, rendered, notes), rendered
