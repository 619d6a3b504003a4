"""The summary as Markdown (``results/summary.md``, committed beside ``summary.json``): the
setup, one table per objective, the difficulty quartiles, the ablations, the claim on the
primary metrics, and each cell's cost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.cells import duration_text
from experiments.config import ARM_LABELS, ARMS, Experiment
from experiments.measure import METRIC_LABELS, PRIMARY, ROUGE_METRICS
from experiments.summary import summarize
from spectrumkd.io import atomic_write_text, write_json


def metric_text(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if metric in ROUGE_METRICS else f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _curve_text(curve: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(
        f"{row['epoch']}: {row['val_ce']:.4f} (tau {row['temperature']:g})"
        if row["temperature"] is not None
        else f"{row['epoch']}: {row['val_ce']:.4f}"
        for row in curve
    )


def _versus(comparison: Mapping[str, Any], seeds: int) -> str:
    gain = "–" if comparison["gain_pct"] is None else f"{comparison['gain_pct']:+.2f}"
    return f"{gain} (p {_p(comparison['p_value'])}; better on {comparison['seed_wins']}/{seeds})"


def _ablation_markdown(ablation: Mapping[str, Any]) -> list[str]:
    changes = ", ".join(f"{k} {v}" for k, v in ablation["changes"].items())
    seeds = ", ".join(map(str, ablation["seeds"])) or "none"
    lines = [
        f"### Ablation `{ablation['name']}`: +SpectrumKD with {changes}",
        "",
        f"Seeds {seeds}, those all three arms finished (the baseline and +SpectrumKD columns "
        f"are over these seeds only); optimiser steps {ablation['steps']}."
        + (f" Unpaired: {', '.join(ablation['unpaired'])}." if ablation["unpaired"] else ""),
        "",
    ]
    if ablation["rows"]:
        lines += [
            "| metric | baseline | +SpectrumKD | ablation | gain % vs baseline (p; seeds "
            "ablation better) | gain % vs +SpectrumKD (p; seeds ablation better) |",
            "|---|---|---|---|---|---|",
        ]
        for row in ablation["rows"]:
            metric = row["metric"]
            arrow = "↓" if row["direction"] == "lower" else "↑"
            means = " | ".join(
                metric_text(row[arm]["mean"], metric)
                + ("" if row[arm]["std"] is None else f" ± {metric_text(row[arm]['std'], metric)}")
                for arm in ("baseline", "spectrumkd", "ablation")
            )
            n = len(ablation["seeds"])
            lines.append(
                f"| {METRIC_LABELS[metric]} {arrow} | {means} | {_versus(row['vs_baseline'], n)} "
                f"| {_versus(row['vs_spectrumkd'], n)} |"
            )
        lines.append("")
    if ablation.get("validation"):
        lines += [f"Validation CE by epoch: {_curve_text(ablation['validation'])}.", ""]
    return lines


def _lr_markdown(stage: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Learning rate",
        "",
        f"Chosen once by the baseline on the validation rows ({stage['metric']} of the selected "
        f"epoch, highest wins): **{stage['chosen']:g}**, then fixed for every arm.",
        "",
        "| learning rate | selected epoch | value | validation by epoch |",
        "|---|---|---|---|",
    ]
    for trial in stage["trials"]:
        curve = ", ".join(
            f"{row['epoch']}: {row.get('val_rouge', float('nan')):.2f} / {row['val_ce']:.4f}"
            for row in trial["validation"]
        )
        best = trial["best"]
        lines.append(
            f"| {trial['learning_rate']:g} | {best.get('epoch')} | {best.get('value', 0):.4f} "
            f"| {curve} (ROUGE-L / CE) |"
        )
    return [*lines, ""]


def _paper_markdown(entry: Mapping[str, Any]) -> list[str]:
    row = next((r for r in entry["rows"] if r["metric"] == "rougeL_sampled"), None)
    if not entry.get("paper") or row is None:
        return []
    gain = "–" if row["gain_pct"] is None else f"{row['gain_pct']:+.2f}"
    ours = f"here {row['baseline']['mean']:.2f} → {row['spectrumkd']['mean']:.2f} ({gain} %)"
    papers = "; ".join(
        f"{p['source']}: {p['baseline']:.2f} → {p['spectrumkd']:.2f} ({p['gain_pct']:+.2f} %)"
        for p in entry["paper"]
    )
    return [
        f"Effect size against the paper's on DollyEval (sampled ROUGE-L): {ours}; {papers}.",
        "",
    ]


def _ce_selected_markdown(ce: Mapping[str, Any], seeds: int) -> list[str]:
    epochs = ", ".join(f"{ARM_LABELS[arm]} {ce['epochs'][arm]}" for arm in ARMS)
    lines = [
        f"With the lowest-validation-CE checkpoint of each cell instead (epochs: {epochs}):",
        "",
        "| metric | baseline | +SpectrumKD | gain % | better | seeds +SpectrumKD better "
        "| Wilcoxon p | pairs differing / all |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in ce["rows"]:
        metric = row["metric"]
        arrow = "↓" if row["direction"] == "lower" else "↑"
        means = " | ".join(
            metric_text(row[arm]["mean"], metric)
            + ("" if row[arm]["std"] is None else f" ± {metric_text(row[arm]['std'], metric)}")
            for arm in ARMS
        )
        gain = "–" if row["gain_pct"] is None else f"{row['gain_pct']:+.2f}"
        lines.append(
            f"| {METRIC_LABELS[metric]} {arrow} | {means} | {gain} "
            f"| {ARM_LABELS.get(row['better'], row['better'])} | {row['seed_wins']}/{seeds} "
            f"| {_p(row['p_value'])} | {row['n_nonzero']}/{row['n_pairs']} |"
        )
    return [*lines, ""]


def summary_markdown(summary: Mapping[str, Any]) -> str:
    lines = [
        "# SpectrumKD evidence: baseline vs +SpectrumKD per KD objective",
        "",
        f"Generated by `experiments/run.py summarize` from {summary['files']} result files in "
        f"`{summary['results_dir']}`. Means over training seeds ± sample standard deviation; "
        "gain = (+SpectrumKD − baseline) / baseline × 100 (negative is better for CE and KL); "
        f"p: {summary['test']}.",
        "",
    ]
    setup = summary.get("setup")
    if setup:
        lines += ["## Setup", ""]
        data, test = setup["data"], setup["test"]
        lines.append(
            f"- Train rows: {data['train']} (+ {data['validation']} validation) of "
            f"{data['source_rows']}; {data['dropped_too_long']} dropped as too long, "
            f"{len(data['removed_test_prompt_overlap'])} removed for sharing a test prompt."
        )
        lines.append(
            f"- Test rows: {test['quality_examples']} of {test['rows']} "
            f"({test['dropped_prompts']} prompts too long, {test['quality_dropped_too_long']} "
            "examples too long)."
        )
        parity = setup["spectrumkd"]
        lines.append(
            f"- Step parity: baseline {parity['baseline_epochs']} epochs on {parity['n_examples']} "
            f"rows; +SpectrumKD {parity['epochs']} epochs (warm-up {parity['warmup_epochs']}) on "
            f"a window of {parity['window']}."
        )
        rho = setup["spearman"]
        lines.append(
            f"- Spearman rho between the initial student's and the teacher's difficulties on "
            f"the train rows: {rho['rho']:.3f} (p {_p(rho['p_value'])}, n {rho['n']})."
        )
        lines += [
            "",
            "| model | CE | KL(teacher ‖ model) | KL(model ‖ teacher) |",
            "|---|---|---|---|",
        ]
        for label, scores in setup["scores"].items():
            lines.append(
                f"| {label} | {metric_text(scores['ce'], 'ce')} | "
                f"{metric_text(scores['kl_forward'], 'ce')} | {metric_text(scores['kl_reverse'], 'ce')} |"
            )
        lines.append("")
    primary = tuple(summary.get("primary") or PRIMARY)
    if summary.get("learning_rate"):
        lines += _lr_markdown(summary["learning_rate"])
    claims = []
    for entry in summary["objectives"]:
        seeds = ", ".join(map(str, entry["seeds"])) or "none"
        lines += [f"## {entry['objective']} (`{entry['key']}`)", ""]
        steps = entry["steps"]
        lines.append(
            f"Seeds {seeds}; optimiser steps baseline {steps['baseline']}, "
            f"+SpectrumKD {steps['spectrumkd']}."
            + (
                f" Unpaired cells left out: {', '.join(entry['unpaired'])}."
                if entry["unpaired"]
                else ""
            )
        )
        lines += [
            "",
            "| metric | baseline | +SpectrumKD | gain % | better | seeds +SpectrumKD better "
            "| Wilcoxon p | pairs differing / all |",
            "|---|---|---|---|---|---|---|---|",
        ]
        verdicts = {}
        for row in entry["rows"]:
            metric = row["metric"]
            arrow = "↓" if row["direction"] == "lower" else "↑"
            cells = []
            for arm in ARMS:
                stats = row[arm]
                std = "" if stats["std"] is None else f" ± {metric_text(stats['std'], metric)}"
                cells.append(f"{metric_text(stats['mean'], metric)}{std}")
            gain = "–" if row["gain_pct"] is None else f"{row['gain_pct']:+.2f}"
            better = ARM_LABELS.get(row["better"], row["better"])
            lines.append(
                f"| {METRIC_LABELS[metric]} {arrow} | {cells[0]} | {cells[1]} | {gain} | {better} "
                f"| {row['seed_wins']}/{len(entry['seeds'])} "
                f"| {_p(row['p_value'])} | {row['n_nonzero']}/{row['n_pairs']} |"
            )
            if metric in primary:
                significant = row["p_value"] is not None and row["p_value"] < 0.05
                verdicts[metric] = (
                    f"{better} better, p {_p(row['p_value'])}"
                    if significant
                    else f"no significant difference (p {_p(row['p_value'])})"
                )
        claims.append((entry, verdicts))
        lines.append("")
        lines += _paper_markdown(entry)
        if entry.get("ce_selected"):
            lines += _ce_selected_markdown(entry["ce_selected"], len(entry["seeds"]))
        if entry.get("by_difficulty"):
            lines += [
                "By difficulty (test examples in quartiles of their CE averaged over both arms; "
                "token-weighted mean difference +SpectrumKD − baseline, negative favours "
                "+SpectrumKD):",
                "",
                "| quartile | examples | mean CE | Δ CE | Δ KL(teacher ‖ student) "
                "| Δ KL(student ‖ teacher) | +SpectrumKD worse on CE |",
                "|---|---|---|---|---|---|---|",
            ]
            for row in entry["by_difficulty"]:
                lines.append(
                    f"| {row['quartile']} | {row['examples']} | {row['mean_ce']:.2f} "
                    f"| {_signed(row.get('diff_ce'))} | {_signed(row.get('diff_kl_forward'))} "
                    f"| {_signed(row.get('diff_kl_reverse'))} "
                    f"| {row['spectrumkd_worse_ce']} of {row['examples']} |"
                )
            lines.append("")
        curves = entry.get("validation") or {}
        if all(curves.get(arm) for arm in ARMS) and "val_rouge" in curves["baseline"][0]:
            lines += [
                "Validation ROUGE-L of sampled answers by epoch (the selection metric; mean over "
                "the seeds):",
                "",
                *(
                    f"- {ARM_LABELS[arm]}: "
                    + ", ".join(f"{row['epoch']}: {row['val_rouge']:.2f}" for row in curves[arm])
                    for arm in ARMS
                ),
                "",
            ]
        if all(curves.get(arm) for arm in ARMS):
            lines.append(
                "Validation CE by epoch (the held-out training rows, mean over the seeds; "
                "tau of the epoch in brackets):"
            )
            lines.append("")
            for arm in ARMS:
                lines.append(f"- {ARM_LABELS[arm]}: {_curve_text(curves[arm])}")
            lines.append("")
        for ablation in entry.get("ablations") or ():
            lines += _ablation_markdown(ablation)
    if claims:
        lines += [
            "## The claim, on the primary metrics",
            "",
            "| objective | seeds | " + " | ".join(METRIC_LABELS[m] for m in primary) + " |",
            "|---|---|" + "---|" * len(primary),
        ]
        for entry, verdicts in claims:
            lines.append(
                f"| {entry['objective']} | {len(entry['seeds'])} | "
                + " | ".join(verdicts.get(m, "–") for m in primary)
                + " |"
            )
        lines.append("")
    if summary.get("cells"):
        lines += [
            "## Cells",
            "",
            "Wall and CPU time of the process that finished each cell (a resumed cell's earlier "
            "processes are not counted).",
            "",
            "| cell | epochs | steps | kept epoch | train | evaluate | total | CPU time "
            "| torch threads | device | finished (UTC) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for cost in summary["cells"]:
            wall = cost["wall_time_s"]
            kept = cost["best_epoch"] if cost["evaluated"] == "best" else cost["evaluated"]
            lines.append(
                f"| {cost['cell']} | {cost['epochs']} | {cost['steps']} | {kept} "
                f"| {duration_text(wall.get('train'))} | {duration_text(wall.get('evaluate'))} "
                f"| {duration_text(wall.get('total'))} | {duration_text(cost['cpu_time_s'])} "
                f"| {cost['torch_threads']} | {cost['device']} | {cost['finished_at']} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_summary(exp: Experiment) -> tuple[Path, str]:
    summary = summarize(exp.results_dir)
    text = summary_markdown(summary)
    write_json(exp.results_dir / "summary.json", summary)
    path = exp.results_dir / "summary.md"
    atomic_write_text(path, text)
    return path, text
