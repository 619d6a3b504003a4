"""The report's figures: pure functions, data in, :class:`~matplotlib.figure.Figure` out.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global figure registry to leak memory across calls and no GUI backend to pick, so they render
the same in a test, a CLI run or a worker without a display (saving uses the Agg canvas).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from spectrumkd.curation.analyzer import LogNormalFit
from spectrumkd.report.readers import as_number

ZONE_COLOURS = {
    "early": "#4c9be8",
    "continuous": "#5cb85c",
    "late": "#f0ad4e",
    "excluded": "#d9534f",
}
ZONE_LABELS = {"early": "Early", "continuous": "Continuous", "late": "Late", "excluded": "Excluded"}
LOSS_UNIT = "nats per response token"
MAX_LINE_POINTS = 4000  # a million-point line draws as a solid band anyway; thin it first
# What each objective's KD term measures, in the direction the trainer computes it
# (spectrumkd.distillation.objectives: forward_kl is KL(teacher || student)).
DIVERGENCE_NAMES = {
    "forward_kl": "KL(teacher||student)",
    "reverse_kl": "KL(student||teacher)",
    "jsd": "JSD(teacher, student)",
    "tvd": "TVD(teacher, student)",
    "skew_kl": "skew KL(teacher||student)",
    "skew_reverse_kl": "skew KL(student||teacher)",
}
# Validation KD is measured at this temperature whatever an epoch trained at, so epochs (and
# runs with different schedules) compare; the trainer may log the training-temperature value
# beside it as ``val_kd_train_tau``.
EVAL_TEMPERATURE = 1


def divergence_name(objective: str | None) -> str:
    """A reader's name for the KD term of ``objective`` ("KD" when unknown)."""
    return DIVERGENCE_NAMES.get(objective or "", objective or "KD")


def png_bytes(figure: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (Agg), for an atomic write beside the page."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _thin(n: int, limit: int = MAX_LINE_POINTS) -> np.ndarray:
    """At most ``limit`` indices of 0..n-1, first and last included, evenly spread."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def difficulty_figure(losses: np.ndarray, fit: LogNormalFit | None) -> Figure:
    """Histogram of the per-example losses (a density) with the fitted log-normal curve and its
    parameters and goodness of fit (paper Figure 3a)."""
    values = np.asarray(losses, dtype=np.float64)
    values = values[np.isfinite(values)]
    figure = Figure(figsize=(8, 4.2), layout="constrained")
    axes = figure.add_subplot()
    # Freedman-Diaconis bins, capped: a million losses would otherwise get thousands of bins.
    edges = np.histogram_bin_edges(values, bins="fd") if values.size > 1 else 10
    if not isinstance(edges, int) and len(edges) > 81:
        edges = np.linspace(values.min(), values.max(), 81)
    axes.hist(values, bins=edges, density=True, color="#8fb8de", edgecolor="white", label="losses")
    if fit is not None:
        grid = np.linspace(max(values.min(), 1e-9), values.max(), 400)
        axes.plot(grid, fit.pdf(grid), color="#c0392b", linewidth=2, label="log-normal fit")
        median = float(np.exp(fit.mu))
        axes.axvline(median, color="#c0392b", linestyle=":", linewidth=1)
        text = (
            f"log(loss) ~ N(mu={fit.mu:.3f}, sigma={fit.sigma:.3f})\n"
            f"median exp(mu) = {median:.3f} nats\n"
            f"KS D = {fit.ks_statistic:.3f}, p = {fit.ks_pvalue:.2g} (n = {fit.n:,})"
        )
        axes.text(
            0.98,
            0.95,
            text,
            transform=axes.transAxes,
            ha="right",
            va="top",
            fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9, "edgecolor": "#999"},
        )
    axes.set_title("Difficulty distribution of the initial student's losses")
    axes.set_xlabel(f"difficulty: mean cross-entropy ({LOSS_UNIT})")
    axes.set_ylabel("density (examples per nat, normalised)")
    axes.legend(loc="upper left", fontsize=9)
    return figure


def spectrum_figure(sorted_losses: np.ndarray, zones: Mapping[str, tuple[int, int]]) -> Figure:
    """Losses in rank order with the four zones shaded and their boundaries labelled (paper
    Figures 2 and 3b). ``zones`` maps a zone name to its 1-based inclusive rank range."""
    values = np.asarray(sorted_losses, dtype=np.float64)
    n = values.size
    figure = Figure(figsize=(8, 4.2), layout="constrained")
    axes = figure.add_subplot()
    keep = _thin(n)
    axes.plot(keep + 1, values[keep], color="#222", linewidth=1.4, label="difficulty")
    top = float(values.max()) if n else 1.0
    for name in ZONE_COLOURS:
        if name not in zones:
            continue
        start, end = zones[name]
        if end < start:
            continue
        axes.axvspan(start - 0.5, end + 0.5, color=ZONE_COLOURS[name], alpha=0.22, linewidth=0)
        share = (end - start + 1) / max(n, 1)
        axes.text(
            (start + end) / 2,
            top,
            f"{ZONE_LABELS[name]}\n{end - start + 1:,} ({share:.0%})",
            ha="center",
            va="top",
            fontsize=8.5,
            color="#333",
        )
        if end < n:  # the boundary after this zone: its rank and the loss there
            axes.axvline(end + 0.5, color=ZONE_COLOURS[name], linewidth=1.2)
            axes.annotate(
                f"rank {end:,}\n{values[end - 1]:.2f}",
                xy=(end + 0.5, values[end - 1]),
                xytext=(4, -18),
                textcoords="offset points",
                fontsize=8,
                color="#333",
            )
    axes.set_xlim(0.5, n + 0.5)
    axes.set_title("Difficulty spectrum: examples sorted by loss, with the curation zones")
    axes.set_xlabel("rank (1 = easiest example)")
    axes.set_ylabel(f"difficulty ({LOSS_UNIT})")
    return figure


# The rank range an epoch trains on, as each kind of plan records it: SpectrumKD's window, or
# a staged strategy's stage (POCL, SRD, Baby Step, One-Pass).
RANK_KEYS = (("window_start_rank", "window_end_rank"), ("first_rank", "last_rank"))
STAGE_COLOURS = ("#34495e", "#2980b9", "#16a085", "#8e44ad", "#d35400", "#7f8c8d")


def epoch_ranks(epoch: Mapping[str, Any]) -> tuple[int, int] | None:
    """The 1-based inclusive ranks of the easy-to-hard order an epoch trains on, or None."""
    for first, last in RANK_KEYS:
        if as_number(epoch.get(first)) is not None and as_number(epoch.get(last)) is not None:
            return int(epoch[first]), int(epoch[last])
    return None


def schedule_figure(
    epochs: Sequence[Mapping[str, Any]],
    n_examples: int,
    zones: Mapping[str, tuple[int, int]],
    strategy: str = "spectrumkd",
) -> Figure:
    """Any strategy's plan drawn the same way. Top: each epoch's examples as a band over the
    difficulty ranks (SpectrumKD's window, a stage's prefix or bucket), coloured by stage, on
    the shaded zones where there are any; a dashed line where the optimiser and LR schedule
    restart. Bottom: the band's mean difficulty per epoch (where the plan records it) and, on
    a second axis, the temperature and the KD weight (where the plan sets one)."""
    numbers = [int(e["epoch"]) for e in epochs]
    ranks = [epoch_ranks(e) or (1, int(e.get("num_examples") or 1)) for e in epochs]
    starts = [start for start, _ in ranks]
    ends = [end for _, end in ranks]
    stages = [int(as_number(e.get("stage")) or 1) for e in epochs]
    staged = max(stages, default=1) > 1
    figure = Figure(figsize=(8, 6.4), layout="constrained")
    band, line = figure.subplots(2, 1, height_ratios=(3, 2))
    for name, colour in ZONE_COLOURS.items():
        if name in zones and zones[name][1] >= zones[name][0]:
            start, end = zones[name]
            band.axvspan(
                start - 0.5,
                end + 0.5,
                color=colour,
                alpha=0.18,
                linewidth=0,
                label=ZONE_LABELS[name],
            )
    for stage in sorted(set(stages)):
        rows = [i for i, s in enumerate(stages) if s == stage]
        band.barh(
            [numbers[i] for i in rows],
            [ends[i] - starts[i] + 1 for i in rows],
            left=[starts[i] - 0.5 for i in rows],
            height=0.6,  # gaps between the bands let the zone shading show through
            color=STAGE_COLOURS[(stage - 1) % len(STAGE_COLOURS)] if staged else "#34495e",
            alpha=0.85,
            label=f"stage {stage}" if staged else "window",
        )
    restarts = [n for n, e in zip(numbers, epochs, strict=True) if e.get("restart") is True]
    for index, epoch in enumerate(restarts):
        band.axhline(
            epoch - 0.5,
            color="#c0392b",
            linestyle="--",
            linewidth=1,
            label="optimiser + LR restart" if index == 0 else None,
        )
    band.set_xlim(0.5, max(n_examples, max(ends, default=1)) + 0.5)
    band.set_ylim(max(numbers, default=1) + 0.7, min(numbers, default=1) - 0.7)  # epoch 1 on top
    band.set_title(
        f"Schedule ({strategy}): "
        + (
            "the examples of each stage over the difficulty ranks"
            if staged
            else "the training window slides over the spectrum"
            if strategy == "spectrumkd"
            else "the examples of each epoch over the difficulty ranks"
        )
    )
    band.set_xlabel("rank in the easy-to-hard order (1 = easiest example)")
    band.set_ylabel("epoch")
    band.yaxis.set_major_locator(MaxNLocator(integer=True))
    # Outside the axes: inside, it would cover the late epochs' bands.
    band.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)

    means = [as_number(e.get("mean_difficulty")) for e in epochs]
    handles = []
    if all(m is not None for m in means):
        handles += line.plot(
            numbers, means, marker="o", markersize=3, color="#2c3e50", label="mean difficulty"
        )
        line.set_ylabel("mean difficulty of\nthe epoch's examples")
    else:
        line.set_yticks([])
    line.set_xlabel("epoch")
    line.xaxis.set_major_locator(MaxNLocator(integer=True))
    second = line.twinx()
    temperatures = [float(e["temperature"]) for e in epochs]
    handles += second.plot(
        numbers, temperatures, color="#c0392b", linestyle="--", label="temperature tau"
    )
    weights = [as_number(e.get("kd_weight")) for e in epochs]
    if any(w is not None for w in weights):
        handles += second.plot(
            [n for n, w in zip(numbers, weights, strict=True) if w is not None],
            [w for w in weights if w is not None],
            color="#8e44ad",
            linestyle=":",
            marker="s",
            markersize=3,
            label="KD weight (share of the loss on KD)",
        )
        second.set_ylabel("temperature tau, KD weight\n(dimensionless)", color="#c0392b")
    else:
        second.set_ylabel("temperature tau (dimensionless)", color="#c0392b")
    line.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    line.set_title("Difficulty, distillation temperature and KD weight per epoch")
    return figure


def _temperature(row: Mapping[str, Any]) -> float:
    """The step's logged temperature; 1 (no scaling) if a row lacks it."""
    value = as_number(row.get("temperature"))
    return 1.0 if value is None else value


def total_loss(ce: float, kd: float, alpha: float, temperature: float) -> float:
    """The trainer's objective per token: alpha CE + (1 - alpha) tau^2 KD."""
    return alpha * ce + (1 - alpha) * temperature**2 * kd


def training_figure(
    steps: Sequence[Mapping[str, Any]],
    epochs: Sequence[Mapping[str, Any]],
    *,
    alpha: float | None,
    best: Mapping[str, Any] | None,
    kd_name: str = "KD",
) -> Figure:
    """Left: CE, KD (at each step's temperature) and the total loss per logged optimiser step
    (epoch ends dotted). Right: validation CE and KD at tau 1 per epoch, the KD at the epoch's
    training temperature as its own series where logged (``val_kd_train_tau``), and the chosen
    (best) epoch marked. Either side may be empty while a run is young; it then says so
    instead of drawing nothing. ``kd_name`` names the KD term (:func:`divergence_name`)."""
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=(3, 2))
    if steps:
        x = [int(r["step"]) for r in steps]
        ce = [float(r["ce"]) for r in steps]
        kd = [float(r["kd"]) for r in steps]
        marker = "o" if len(x) < 30 else None
        left.plot(x, ce, color="#2980b9", marker=marker, markersize=3, label="CE (ground truth)")
        left.plot(
            x,
            kd,
            color="#27ae60",
            marker=marker,
            markersize=3,
            label=f"{kd_name} at the step's tau",
        )
        # The trainer logs each step's alpha (a plan may set per-epoch KD weights); older
        # metrics files do not, and then the run's configured alpha stands for every step.
        alphas = [as_number(r.get("alpha")) for r in steps]
        if all(a is not None for a in alphas) or alpha is not None:
            total = [
                total_loss(c, k, a if a is not None else alpha, _temperature(r))
                for c, k, a, r in zip(ce, kd, alphas, steps, strict=True)
            ]
            shown = {a if a is not None else alpha for a in alphas}
            weight = f"{shown.pop():g}" if len(shown) == 1 else "alpha"
            left.plot(
                x,
                total,
                color="#2c3e50",
                linewidth=2,
                marker=marker,
                markersize=3,
                label=f"total = {weight} CE + (1 - {weight}) tau^2 KD",
            )
        last_of_epoch: dict[int, int] = {}
        for row in steps:
            last_of_epoch[int(row["epoch"])] = int(row["step"])
        for step in sorted(last_of_epoch.values())[:-1]:
            left.axvline(step + 0.5, color="#bbb", linestyle=":", linewidth=1)
        left.legend(fontsize=8)
    else:
        left.text(0.5, 0.5, "no training steps logged yet", ha="center", transform=left.transAxes)
    left.set_title("Training loss per step")
    left.set_xlabel("optimiser step")
    left.set_ylabel(f"loss ({LOSS_UNIT})")

    if epochs:
        x = [int(r["epoch"]) for r in epochs]
        handles = right.plot(
            x, [float(r["val_ce"]) for r in epochs], marker="o", color="#2980b9", label="val CE"
        )
        right.set_ylabel(f"validation CE\n({LOSS_UNIT})", color="#2980b9")
        second = right.twinx()
        handles += second.plot(
            x,
            [float(r["val_kd"]) for r in epochs],
            marker="s",
            color="#27ae60",
            linestyle="--",
            label=f"val {kd_name} at tau {EVAL_TEMPERATURE}",
        )
        trained = [
            (e, as_number(r.get("val_kd_train_tau"))) for e, r in zip(x, epochs, strict=True)
        ]
        trained = [(e, v) for e, v in trained if v is not None]
        if trained:
            # Smaller by construction at a higher tau: a separate series, never the tau-1 line.
            handles += second.plot(
                [e for e, _ in trained],
                [v for _, v in trained],
                marker="^",
                color="#e67e22",
                linestyle=":",
                label=f"val {kd_name} at the epoch's training tau",
            )
        second.set_ylabel(f"validation {kd_name}\n({LOSS_UNIT})", color="#27ae60")
        if best and isinstance(best.get("epoch"), int):
            metric = str(best.get("metric", "val_kd"))
            chosen = next((r for r in epochs if int(r["epoch"]) == best["epoch"]), None)
            right.axvline(best["epoch"], color="#8e44ad", linewidth=1.5, alpha=0.6)
            # Only the two drawn metrics get a star; another (val_rouge) has no axis here.
            axis = {"val_kd": second, "val_ce": right}.get(metric)
            if (
                chosen is not None
                and axis is not None
                and as_number(chosen.get(metric)) is not None
            ):
                shown = (
                    f"val {kd_name} at tau {EVAL_TEMPERATURE}" if metric == "val_kd" else "val CE"
                )
                handles += axis.plot(
                    [best["epoch"]],
                    [float(chosen[metric])],
                    marker="*",
                    markersize=16,
                    color="#8e44ad",
                    linestyle="none",
                    label=f"kept: epoch {best['epoch']} (lowest {shown})",
                )
        # Below the axes: the two y scales share the plot area, so no inside spot is free.
        right.legend(
            handles=handles,
            fontsize=8,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            ncol=2,
            frameon=False,
        )
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        right.text(
            0.5, 0.5, "no validation epoch finished yet", ha="center", transform=right.transAxes
        )
    right.set_title("Validation per epoch")
    right.set_xlabel("epoch")
    return figure


def evaluation_figure(values: Mapping[str, float], metric: str, unit: str) -> Figure:
    """One bar per evaluation set for its headline metric, the value printed on each bar."""
    names = list(values)
    figure = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.8), layout="constrained")
    axes = figure.add_subplot()
    bars = axes.bar(names, [values[n] for n in names], color="#5b8db8")
    axes.bar_label(bars, fmt="%.2f", fontsize=8)
    axes.set_title(f"Evaluation: {metric} per set")
    axes.set_xlabel("evaluation set")
    axes.set_ylabel(f"{metric} ({unit})")
    axes.tick_params(axis="x", labelrotation=20)
    return figure


def comparison_figure(
    gains: Mapping[str, float], pvalues: Mapping[str, float | None], gain_unit: str
) -> Figure:
    """Per-set gain of one run over another, each bar labelled with its p-value; bars with
    p < 0.05 are solid, the others hatched."""
    names = list(gains)
    figure = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.8), layout="constrained")
    axes = figure.add_subplot()
    for index, name in enumerate(names):
        p = pvalues.get(name)
        significant = p is not None and p < 0.05
        axes.bar(
            index,
            gains[name],
            color="#27ae60" if gains[name] >= 0 else "#c0392b",
            alpha=1.0 if significant else 0.45,
            hatch=None if significant else "//",
            edgecolor="#333",
        )
        label = "p = n/a" if p is None else f"p = {p:.2g}"
        axes.annotate(
            label,
            xy=(index, gains[name]),
            xytext=(0, 3 if gains[name] >= 0 else -12),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    axes.axhline(0, color="#333", linewidth=0.8)
    axes.margins(y=0.18)  # room for the p-value labels above and below the bars
    axes.set_xticks(range(len(names)), names, rotation=20)
    axes.set_title("Comparison: gain per set (solid: p < 0.05)")
    axes.set_xlabel("evaluation set")
    axes.set_ylabel(f"gain ({gain_unit})")
    return figure


RUN_COLOURS = ("#2c3e50", "#c0392b", "#2980b9", "#27ae60", "#8e44ad", "#e67e22")


def validation_comparison_figure(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    kept: Mapping[str, int | None],
    *,
    kd_name: str = "KD",
) -> Figure:
    """Validation curves of several runs on shared axes: CE (left) and KD at tau 1 (right)
    against the optimiser step at each epoch's end, so runs with different epoch counts at
    the same steps line up; each point is labelled with its epoch and each run's kept epoch
    is starred. ``curves`` maps a run's name to its validation rows (``epoch``, ``step``,
    ``val_ce``, ``val_kd``)."""
    figure = Figure(figsize=(10, 4.4), layout="constrained")
    panels = figure.subplots(1, 2)
    # Steps make runs comparable (step parity); without them in every row, epochs are the axis.
    by_step = all(as_number(r.get("step")) is not None for rows in curves.values() for r in rows)
    metrics = (("val_ce", "CE"), ("val_kd", f"{kd_name} at tau {EVAL_TEMPERATURE}"))
    for axes, (key, label) in zip(panels, metrics, strict=True):
        drawn = False
        for index, (name, rows) in enumerate(curves.items()):
            points = [
                (int(r["epoch"]), float(r["step"] if by_step else r["epoch"]), float(r[key]))
                for r in rows
                if as_number(r.get(key)) is not None and as_number(r.get("epoch")) is not None
            ]
            if not points:
                continue
            drawn = True
            colour = RUN_COLOURS[index % len(RUN_COLOURS)]
            axes.plot(
                [x for _, x, _ in points],
                [y for _, _, y in points],
                marker="o",
                markersize=4,
                color=colour,
                label=name,
            )
            for epoch, x, y in points:
                axes.annotate(
                    str(epoch),
                    xy=(x, y),
                    xytext=(3, 4),
                    textcoords="offset points",
                    fontsize=7,
                    color=colour,
                )
            chosen = next((p for p in points if p[0] == kept.get(name)), None)
            if chosen is not None:
                axes.plot(
                    [chosen[1]],
                    [chosen[2]],
                    marker="*",
                    markersize=15,
                    color=colour,
                    linestyle="none",
                    label=f"{name}: kept epoch {chosen[0]}",
                )
        if drawn:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "no validation epoch", ha="center", transform=axes.transAxes)
        axes.set_title(f"Validation {label}")
        axes.set_xlabel("optimiser step at the epoch's end (labels: epoch)" if by_step else "epoch")
        axes.set_ylabel(f"validation {label}\n({LOSS_UNIT})")
    return figure
