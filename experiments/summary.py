"""The statistics of the summary, from the result files alone: per objective and metric the
arms' means over seeds, the relative gain and a paired Wilcoxon test on per-example values,
the difficulty quartiles, each ablation against both arms, and each cell's cost."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.cells import changed_settings, read_result, shown_path
from experiments.config import ARMS, CELL_NAME, SETUP
from experiments.measure import LOWER_IS_BETTER, METRICS, PRIMARY, QUALITY_METRICS

# The paper's gain of +SpectrumKD over the same objective's baseline on DollyEval, sampled
# ROUGE-L at T = 1 averaged over five seeds: (baseline, +SpectrumKD, source).
PAPER_DOLLYEVAL = {
    "forward_kl": [
        (23.49, 24.71, "Table 6, GPT-2 1.5B -> 0.1B, KLD"),
        (23.76, 25.02, "Table 1, OpenLLaMA2 7B -> 3B, KLD"),
    ],
    "reverse_kl": [
        (23.79, 24.53, "Table 6, GPT-2 1.5B -> 0.1B, RKL"),
    ],
    "jsd": [
        (24.07, 24.82, "Table 6, GPT-2 1.5B -> 0.1B, JSD"),
    ],
}


def read_cell_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every cell result file in the folder (by name: ``<key>-<arm>-seed<k>.json``)."""
    results = []
    for path in sorted(results_dir.glob("*.json")):
        if CELL_NAME.match(path.stem):
            result = read_result(path)
            if result is None or result.get("cell") != path.stem:
                raise ValueError(f"{path} is not the result file of cell {path.stem}")
            results.append(result)
    return results


def _seed_average(cells: Iterable[Mapping[str, Any]], metric: str) -> dict[str, float]:
    """Each example's value averaged over ``cells`` (the examples every cell has)."""
    tables = [cell["per_example"][metric] for cell in cells]
    ids = [i for i in tables[0] if all(i in table for table in tables[1:])]
    return {i: statistics.fmean(table[i] for table in tables) for i in ids}


def summarize(results_dir: Path) -> dict[str, Any]:
    """Per objective and metric: baseline and +SpectrumKD mean ± std over the seeds both arms
    finished, the relative gain of the means, and a two-sided Wilcoxon signed-rank test on the
    per-example values averaged over those seeds (``compare.compare_metric``); each ablation
    the same way against both arms, on the seeds all three finished."""
    results = read_cell_results(results_dir)
    if not results:
        raise ValueError(f"no cell result files in {results_dir}; run some cells first")

    def shared(settings: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k not in ("objective", "ablation")}

    reference = shared(results[0]["settings"])
    for result in results[1:]:
        settings = shared(result["settings"])
        changed = changed_settings(reference, settings)
        if changed:
            raise ValueError(
                f"{result['cell']} and {results[0]['cell']} were computed with different "
                f"{', '.join(changed[:4])}; one table cannot mix them"
            )
    setup = read_result(results_dir / f"{SETUP}.json")
    learning_rate = read_result(results_dir / "lr.json")
    primary = list(results[0]["settings"].get("test", {}).get("primary") or PRIMARY)
    objectives: list[dict[str, Any]] = []
    for key in dict.fromkeys(r["objective_key"] for r in results):
        group = [r for r in results if r["objective_key"] == key]
        by_arm = {arm: {r["seed"]: r for r in group if r["arm"] == arm} for arm in ARMS}
        seeds = sorted(set(by_arm["baseline"]) & set(by_arm["spectrumkd"]))
        unpaired = sorted(
            f"{arm}-seed{seed}" for arm in ARMS for seed in by_arm[arm] if seed not in seeds
        )
        entry: dict[str, Any] = {
            "key": key,
            "objective": group[0]["objective"],
            "seeds": seeds,
            "unpaired": unpaired,
            "steps": {arm: [by_arm[arm][s]["training"]["steps"] for s in seeds] for arm in ARMS},
            "epochs": {arm: [by_arm[arm][s]["training"]["epochs"] for s in seeds] for arm in ARMS},
            "validation": {
                arm: _mean_curve([by_arm[arm][s] for s in seeds]) for arm in ARMS if seeds
            },
            "rows": [],
        }
        if seeds:
            entry["rows"] = _metric_rows({arm: [by_arm[arm][s] for s in seeds] for arm in ARMS})
        if seeds and any("ce_selected" in by_arm[arm][s] for arm in ARMS for s in seeds):
            entry["ce_selected"] = _ce_selected_rows(
                {arm: [by_arm[arm][s] for s in seeds] for arm in ARMS}
            )
        paper = PAPER_DOLLYEVAL.get(entry["objective"])
        if paper and "rougeL_sampled" in primary and entry["rows"]:
            entry["paper"] = [
                {"baseline": b, "spectrumkd": n, "gain_pct": (n - b) / b * 100, "source": src}
                for b, n, src in paper
            ]
        if seeds:
            entry["by_difficulty"] = difficulty_quartiles(
                {arm: [by_arm[arm][s] for s in seeds] for arm in ARMS}
            )
        entry["ablations"] = [
            _ablation_entry(name, [r for r in group if r["arm"] == name], by_arm)
            for name in dict.fromkeys(r["arm"] for r in group if r["arm"] not in ARMS)
        ]
        objectives.append(entry)
    return {
        "results_dir": shown_path(results_dir),
        "files": len(results),
        "test": (
            "two-sided Wilcoxon signed-rank (scipy.stats.wilcoxon, zero differences dropped) on "
            "per-example values averaged over the seeds both compared arms finished"
        ),
        "setup": setup,
        **({"learning_rate": _lr_summary(results_dir, learning_rate)} if learning_rate else {}),
        **({"primary": primary} if tuple(primary) != PRIMARY else {}),
        "objectives": objectives,
        "cells": [_cell_cost(result) for result in results],
    }


def _lr_summary(results_dir: Path, choice: Mapping[str, Any]) -> dict[str, Any]:
    """The learning-rate stage: each trial's selected epoch and validation curve, the choice."""
    trials = []
    for tag, best in choice["selected"].items():
        trial = read_result(results_dir / f"lr-{tag}.json") or {}
        curve = (trial.get("training") or {}).get("validation") or []
        trials.append({"learning_rate": float(tag), "best": best, "validation": curve})
    return {"chosen": choice["learning_rate"], "metric": choice["metric"], "trials": trials}


def _ce_selected_rows(cells: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The arms compared again with each cell's lowest-validation-CE epoch in place of its
    selected one (the same numbers where the two epochs are one)."""

    def view(cell: Mapping[str, Any]) -> dict[str, Any]:
        chosen = cell.get("ce_selected") or {"same_as_selected": True}
        if chosen.get("same_as_selected", True):
            return dict(cell)
        return {**cell, "means": chosen["means"], "per_example": chosen["per_example"]}

    rows = _metric_rows({arm: [view(c) for c in cells[arm]] for arm in ARMS})
    epochs = {arm: [(c.get("ce_selected") or {}).get("epoch") for c in cells[arm]] for arm in ARMS}
    return {"epochs": epochs, "rows": rows}


def _metric_rows(cells: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Per metric every cell has: each arm's mean and spread over seeds and the paired
    comparison of +SpectrumKD with the baseline."""
    rows = []
    for metric in METRICS:
        if any(c["means"].get(metric) is None for arm in ARMS for c in cells[arm]):
            continue
        stats = {arm: _arm_stats(cells[arm], metric) for arm in ARMS}
        versus = _compare_arms(metric, cells["baseline"], cells["spectrumkd"])
        better = {"candidate": "spectrumkd", "reference": "baseline"}.get(
            versus["better"], versus["better"]
        )
        rows.append(
            {
                "metric": metric,
                "direction": "lower" if metric in LOWER_IS_BETTER else "higher",
                **stats,
                **versus,
                "better": better,
            }
        )
    return rows


def _arm_stats(cells: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    values = [c["means"][metric] for c in cells]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "per_seed": values,
    }


def _compare_arms(
    metric: str, reference: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """``candidate`` against ``reference`` (the same seeds, in order) on one metric: the relative
    gain of the seed means, the seeds on which the candidate is better, and a two-sided Wilcoxon
    signed-rank test on the per-example values averaged over the seeds."""
    from spectrumkd.evaluation import Paired, compare_metric, relative_gain

    lower = metric in LOWER_IS_BETTER
    weights = None
    if metric in QUALITY_METRICS:  # token-weighted, as the quality summary is
        weights = {i: float(n) for i, n in reference[0]["per_example"]["tokens"].items()}
    test = compare_metric(
        "test",
        metric if metric in QUALITY_METRICS else "rougeL",
        Paired(_seed_average(reference, metric), weights=weights),
        Paired(_seed_average(candidate, metric), weights=weights),
    )
    ref_seeds = [c["means"][metric] for c in reference]
    new_seeds = [c["means"][metric] for c in candidate]
    base, new = statistics.fmean(ref_seeds), statistics.fmean(new_seeds)
    # Same-seed pairs where the candidate is better: the consistency across training seeds,
    # which the per-example test (on seed averages) does not see.
    seed_wins = sum((n < b) == lower and n != b for b, n in zip(ref_seeds, new_seeds, strict=True))
    return {
        "gain_pct": relative_gain(base, new),
        "better": "tie" if new == base else ("candidate" if (new < base) == lower else "reference"),
        "seed_wins": seed_wins,
        "p_value": test["p_value"],
        "n_pairs": test["n_pairs"],
        "n_nonzero": test["n_nonzero"],
        "note": test.get("note", ""),
    }


def _ablation_entry(
    name: str,
    results: Sequence[Mapping[str, Any]],
    by_arm: Mapping[str, Mapping[int, Mapping[str, Any]]],
) -> dict[str, Any]:
    """One ablation against both arms of its objective, on the seeds all three finished."""
    changes = results[0]["settings"].get("ablation", {})
    for result in results[1:]:
        if result["settings"].get("ablation", {}) != changes:
            raise ValueError(
                f"{result['cell']} and {results[0]['cell']} are ablation {name} with different "
                "changes; one table cannot mix them (delete the outdated result files)"
            )
    mine = {r["seed"]: r for r in results}
    seeds = sorted(set(mine) & set(by_arm["baseline"]) & set(by_arm["spectrumkd"]))
    cells = {
        "baseline": [by_arm["baseline"][s] for s in seeds],
        "spectrumkd": [by_arm["spectrumkd"][s] for s in seeds],
        "ablation": [mine[s] for s in seeds],
    }
    rows = []
    for metric in METRICS if seeds else ():
        if any(c["means"].get(metric) is None for group in cells.values() for c in group):
            continue
        rows.append(
            {
                "metric": metric,
                "direction": "lower" if metric in LOWER_IS_BETTER else "higher",
                **{arm: _arm_stats(group, metric) for arm, group in cells.items()},
                "vs_baseline": _compare_arms(metric, cells["baseline"], cells["ablation"]),
                "vs_spectrumkd": _compare_arms(metric, cells["spectrumkd"], cells["ablation"]),
            }
        )
    return {
        "name": name,
        "changes": changes,
        "seeds": seeds,
        "unpaired": sorted(f"seed{s}" for s in mine if s not in seeds),
        "steps": [c["training"]["steps"] for c in cells["ablation"]],
        "validation": _mean_curve(cells["ablation"]) if seeds else None,
        "rows": rows,
    }


def difficulty_quartiles(cells: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Where the arms differ: the test examples in four groups by difficulty, each group's
    token-weighted mean difference (+SpectrumKD − baseline) of every quality metric.

    An example's difficulty is its CE averaged over both arms (and the seeds), so that neither
    arm's noise decides the groups; groups are quartiles of that order (ties by id), the first
    ones one example larger when the count does not divide by four."""
    metrics = [
        m
        for m in QUALITY_METRICS
        if all(cell["per_example"].get(m) for arm in ARMS for cell in cells[arm])
    ]
    if "ce" not in metrics:
        return []
    values = {arm: {m: _seed_average(cells[arm], m) for m in metrics} for arm in ARMS}
    tokens = cells["baseline"][0]["per_example"]["tokens"]
    ids = [i for i in values["baseline"]["ce"] if i in values["spectrumkd"]["ce"]]
    difficulty = {i: (values["baseline"]["ce"][i] + values["spectrumkd"]["ce"][i]) / 2 for i in ids}
    ordered = sorted(ids, key=lambda i: (difficulty[i], i))
    size, extra = divmod(len(ordered), 4)
    groups, start = [], 0
    for q in range(4):
        end = start + size + (q < extra)
        groups.append(ordered[start:end])
        start = end
    rows = []
    for q, group in enumerate(groups, start=1):
        if not group:
            continue
        weight = sum(float(tokens[i]) for i in group)
        row: dict[str, Any] = {
            "quartile": q,
            "examples": len(group),
            "mean_ce": statistics.fmean(difficulty[i] for i in group),
            "spectrumkd_worse_ce": sum(
                values["spectrumkd"]["ce"][i] > values["baseline"]["ce"][i] for i in group
            ),
        }
        for metric in metrics:
            row[f"diff_{metric}"] = (
                sum(
                    (values["spectrumkd"][metric][i] - values["baseline"][metric][i])
                    * float(tokens[i])
                    for i in group
                )
                / weight
            )
        rows.append(row)
    return rows


def _mean_curve(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """Validation CE per epoch averaged over ``cells`` (None when a cell has no curve)."""
    curves = [cell["training"].get("validation") for cell in cells]
    if not curves or any(not curve for curve in curves) or len({len(c) for c in curves}) > 1:
        return None
    return [
        {
            "epoch": rows[0]["epoch"],
            "val_ce": statistics.fmean(row["val_ce"] for row in rows),
            "temperature": rows[0]["temperature"],
            # Validation ROUGE-L of generated answers, where the cells selected on it.
            **(
                {"val_rouge": statistics.fmean(row["val_rouge"] for row in rows)}
                if all(row.get("val_rouge") is not None for row in rows)
                else {}
            ),
        }
        for rows in zip(*curves, strict=True)
    ]


def _cell_cost(result: Mapping[str, Any]) -> dict[str, Any]:
    training, machine_info = result["training"], result.get("machine") or {}
    best = training.get("best") or {}
    return {
        "cell": result["cell"],
        "epochs": training["epochs"],
        "steps": training["steps"],
        "evaluated": training.get("evaluated"),
        "best_epoch": best.get("epoch"),
        "resumed_from_step": training.get("resumed_from_step"),
        "wall_time_s": result.get("wall_time_s") or {},
        "cpu_time_s": result.get("cpu_time_s"),
        "torch_threads": machine_info.get("torch_threads"),
        "device": machine_info.get("device"),
        "finished_at": result.get("finished_at"),
    }
