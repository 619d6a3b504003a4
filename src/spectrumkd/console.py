"""Readable terminal summaries (rich) of a spectrum and a curriculum plan."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from spectrumkd.curation.plan import CurriculumPlan


def zones_table(plan: CurriculumPlan) -> Table:
    table = Table(title="Difficulty spectrum zones (loss = response cross-entropy, nats/token)")
    for column in ("zone", "ranks", "examples", "min loss", "max loss"):
        table.add_column(column, justify="right" if column != "zone" else "left")
    for name, zone in plan.metadata["zones"].items():
        ranks = f"{zone['start_rank']}-{zone['end_rank']}" if zone["size"] else "-"
        low, high = zone["min_difficulty"], zone["max_difficulty"]
        table.add_row(
            name,
            ranks,
            str(zone["size"]),
            "-" if low is None else f"{low:.3f}",
            "-" if high is None else f"{high:.3f}",
        )
    return table


def epochs_table(plan: CurriculumPlan) -> Table:
    table = Table(
        title=f"{plan.strategy} schedule: {plan.num_epochs} epochs of {plan.metadata.get('window_size', '?')} examples"
    )
    for column in ("epoch", "window ranks", "mean loss", "total loss", "temperature"):
        table.add_column(column, justify="right")
    for epoch in plan.epochs:
        info = epoch.info
        table.add_row(
            str(epoch.epoch),
            f"{info['window_start_rank']}-{info['window_end_rank']}",
            f"{info['mean_difficulty']:.3f}",
            f"{info['total_difficulty']:.1f}",
            f"{epoch.temperature:.3f}",
        )
    return table


def generic_epochs_table(plan: CurriculumPlan) -> Table:
    """Any strategy's epochs: stage (and whether the optimiser and LR schedule restart there),
    the ranks of the easy-to-hard order trained on when the plan records them, the examples,
    the temperature and the KD weight."""
    settings = plan.metadata.get("settings")
    described = ", ".join(f"{k}={v}" for k, v in settings.items()) if settings else ""
    table = Table(
        title=f"{plan.strategy} schedule: {plan.num_epochs} epochs in {plan.num_stages} stage(s)"
        + (f"\n({described})" if described else "")
    )
    for column in ("epoch", "stage", "ranks", "examples", "temperature", "KD weight"):
        table.add_column(column, justify="right")
    for epoch in plan.epochs:
        info = epoch.info
        first, last = info.get("first_rank"), info.get("last_rank")
        ranks = f"{first}-{last}" if first is not None and last is not None else "-"
        weight = "-" if epoch.kd_weight is None else f"{epoch.kd_weight:.2f}"
        stage = f"{epoch.stage}" + (" (restart)" if epoch.restart else "")
        table.add_row(
            str(epoch.epoch),
            stage,
            ranks,
            str(len(epoch.ids)),
            f"{epoch.temperature:.3f}",
            weight,
        )
    return table


def print_plan(plan: CurriculumPlan, console: Console | None = None) -> None:
    """Zones and windows for a SpectrumKD plan; sizes and temperatures for any other strategy."""
    console = console or Console()
    if "zones" in plan.metadata:
        console.print(zones_table(plan))
    windowed = all("window_start_rank" in e.info for e in plan.epochs)
    console.print(epochs_table(plan) if windowed else generic_epochs_table(plan))
    line = visits_line(plan)
    if line:
        console.print(line)


def visits_line(plan: CurriculumPlan) -> str | None:
    """What the plan costs in training: its example visits as full-data epochs (at one batch
    size, the optimiser steps), so SRD's saving or a staged plan's budget reads at a glance."""
    examples = plan.metadata.get("num_examples")
    if not isinstance(examples, int) or examples <= 0:
        return None
    visits = plan.total_visits
    line = f"{visits:,} example visits = {visits / examples:.2f} full-data epochs of {examples:,}"
    discarded = plan.metadata.get("num_discarded")
    if discarded:
        line += f" ({discarded:,} hardest never trained on)"
    return line
