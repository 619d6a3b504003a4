"""``spectrumkd compare RUN_A RUN_B``: two evaluation folders set by set, example by example.

``RUN_A`` is the base, ``RUN_B`` the new run; both are folders written by ``spectrumkd
evaluate`` (``summary.json`` plus one folder per set). For each set both runs hold, and each
metric both have per-example values for:

- ``rougeL`` (higher is better): each example's ROUGE-L averaged over the generation runs
  (``seed<k>.jsonl`` / ``greedy.jsonl``) present in *both* folders, so a run with extra seeds is
  compared on the shared ones only;
- ``ce``, ``kl_forward``, ``kl_reverse`` (lower is better) from ``quality.jsonl``; the set's
  value is the token-weighted mean, as the evaluation summary computes it;
- ``pass@1`` (higher is better) from ``greedy.jsonl`` rows with ``correct`` (maths and code
  sets), in percent.

Examples are paired by id. Ids in one run only are left out and counted (two runs with
different ``--limit`` still compare on their shared examples); a paired example whose reference
answer differs between the runs is an error, since the runs then evaluated different data.

Each row gives ``base``, ``new``, ``diff = new - base``, the paper's relative gain
``gain_pct = (new - base) / base x 100`` (null when ``base`` is 0), ``better`` (which run is
better *in the metric's direction*: a negative gain is an improvement for CE and KL), and a
two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) on the per-example pairs:

- ``zero_method="wilcox"`` (scipy's default): pairs with a zero difference are dropped before
  ranking, since they carry no sign. ``n_pairs`` counts all pairs, ``n_nonzero`` those tested.
  On 0/1 data (pass@1) only the discordant examples remain, and the test is a weak one; it is
  still reported, with its ``n``.
- ``p_value`` is null, with the reason in ``note``, when fewer than ``min_nonzero`` (default 6)
  pairs differ: below 6 the two-sided test cannot reach p < 0.05 whatever the data
  (its smallest possible p is 2 / 2^n = 0.0625 at n = 5).

``base`` and ``new`` are computed on the paired examples and shared runs only, so they can
differ from the numbers of either ``summary.json`` when the runs do not cover the same ground.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectrumkd.evaluation.judge.answers import run_files
from spectrumkd.io import read_jsonl, write_json

ZERO_METHOD = "wilcox"
MIN_NONZERO = 6
HIGHER_IS_BETTER = {
    "rougeL": True,
    "pass@1": True,
    "ce": False,
    "kl_forward": False,
    "kl_reverse": False,
}
QUALITY_METRICS = ("ce", "kl_forward", "kl_reverse")
GENERIC_NAMES = {"eval", "evals", "evaluation", "out"}  # folder names that say nothing


@dataclass(frozen=True)
class Paired:
    """Per-example values of one metric in one run: ``values[id]`` and optional token weights."""

    values: dict[str, float]
    weights: dict[str, float] | None = None  # quality metrics: tokens per example
    references: dict[str, Any] | None = None  # what each example was scored against
    note: str = ""


def wilcoxon_test(
    base: Sequence[float],
    new: Sequence[float],
    *,
    zero_method: str = ZERO_METHOD,
    min_nonzero: int = MIN_NONZERO,
) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``new - base``: ``{p_value, statistic,
    n_nonzero, reason}``; ``p_value`` None (and ``reason`` set) when too few pairs differ."""
    from scipy.stats import wilcoxon

    if len(base) != len(new):
        raise ValueError(f"{len(base)} base values but {len(new)} new values; pairs must match")
    nonzero = sum(n != b for b, n in zip(base, new, strict=True))
    result: dict[str, Any] = {"p_value": None, "statistic": None, "n_nonzero": nonzero}
    if nonzero == 0:
        result["reason"] = f"all {len(base)} pairs are equal: nothing to test"
        return result
    if nonzero < min_nonzero:
        result["reason"] = (
            f"only {nonzero} pairs differ; below {min_nonzero} the test cannot reach p < 0.05"
        )
        return result
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        test = wilcoxon(new, base, zero_method=zero_method, alternative="two-sided")
    result["p_value"] = float(test.pvalue)
    result["statistic"] = float(test.statistic)
    result["reason"] = "; ".join(str(w.message).splitlines()[0] for w in caught) or None
    return result


def relative_gain(base: float | None, new: float | None) -> float | None:
    """The paper's P. Gains: (new - base) / base x 100; None when undefined (base 0 or None)."""
    if base is None or new is None or base == 0:
        return None
    return (new - base) / base * 100.0


def _mean(values: Mapping[str, float], ids: Sequence[str], weights: Mapping[str, float] | None):
    if not ids:
        return None
    if weights is not None and all(weights.get(i, 0) > 0 for i in ids):
        total = sum(weights[i] for i in ids)
        return sum(values[i] * weights[i] for i in ids) / total
    return statistics.fmean(values[i] for i in ids)


def _few(ids: set[str], limit: int = 3) -> str:
    shown = sorted(ids)[:limit]
    return ", ".join(shown) + (", ..." if len(ids) > limit else "")


def compare_metric(
    set_name: str,
    metric: str,
    base: Paired,
    new: Paired,
    *,
    scale: float = 1.0,
    zero_method: str = ZERO_METHOD,
    min_nonzero: int = MIN_NONZERO,
) -> dict[str, Any]:
    """One row of the comparison: pair ``base`` and ``new`` by id, then means, gain and test.
    ``scale`` multiplies the means (100 for pass@1 from 0/1 values)."""
    common = [i for i in base.values if i in new.values]
    notes = [n for n in (base.note, new.note) if n]
    only_base, only_new = set(base.values) - set(new.values), set(new.values) - set(base.values)
    if only_base:
        notes.append(f"{len(only_base)} ids only in base ({_few(only_base)}) left out")
    if only_new:
        notes.append(f"{len(only_new)} ids only in new ({_few(only_new)}) left out")
    if base.references is not None and new.references is not None:
        differing = [
            i
            for i in common
            if i in base.references
            and i in new.references
            and base.references[i] != new.references[i]
        ]
        if differing:
            raise ValueError(
                f"{set_name}: example {differing[0]} has different reference answers in the two "
                f"runs ({len(differing)} such examples): they evaluated different data"
            )
    higher = HIGHER_IS_BETTER[metric]
    row: dict[str, Any] = {
        "set": set_name,
        "metric": metric,
        "direction": "higher" if higher else "lower",
        "base": None,
        "new": None,
        "diff": None,
        "gain_pct": None,
        "better": None,
        "p_value": None,
        "statistic": None,
        "n_pairs": len(common),
        "n_nonzero": 0,
    }
    if not common:
        notes.append("no example ids in common")
        row["note"] = "; ".join(notes)
        return row
    base_mean = _mean(base.values, common, base.weights)
    new_mean = _mean(new.values, common, new.weights)
    assert base_mean is not None and new_mean is not None
    base_mean, new_mean = base_mean * scale, new_mean * scale
    diff = new_mean - base_mean
    better = "tie" if diff == 0 else ("new" if (diff > 0) == higher else "base")
    test = wilcoxon_test(
        [base.values[i] for i in common],
        [new.values[i] for i in common],
        zero_method=zero_method,
        min_nonzero=min_nonzero,
    )
    if test["reason"]:
        notes.append(test["reason"])
    if metric == "pass@1" and test["p_value"] is not None:
        notes.append("0/1 outcomes: only the problems solved by exactly one run are tested")
    row.update(
        base=base_mean,
        new=new_mean,
        diff=diff,
        gain_pct=relative_gain(base_mean, new_mean),
        better=better,
        p_value=test["p_value"],
        statistic=test["statistic"],
        n_nonzero=test["n_nonzero"],
    )
    if row["gain_pct"] is None:
        notes.append("base is 0: no relative gain")
    row["note"] = "; ".join(notes)
    return row


# --------------------------------------------------------------------------- reading a run


def read_summary(folder: Path) -> dict[str, Any]:
    path = folder / "summary.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"evaluation folder {folder} does not exist")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {folder} is not a finished `spectrumkd evaluate` folder"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("suites"), dict):
        raise ValueError(f"{path} has no 'suites' object: not an evaluation summary")
    return summary


def _rows_by_id(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        if row.get("id") is None:
            raise ValueError(f"{path}:{number}: row without an 'id'")
        key = str(row["id"])
        if key in rows:
            raise ValueError(f"{path}:{number}: duplicate id {key!r}")
        rows[key] = row
    return rows


def rouge_per_example(set_dir: Path, runs: Sequence[str]) -> Paired:
    """Each example's ROUGE-L averaged over ``runs`` (examples present in all of them)."""
    per_run = [_rows_by_id(set_dir / f"{run}.jsonl") for run in runs]
    ids = [i for i in per_run[0] if all(i in rows for rows in per_run[1:])]
    values = {i: statistics.fmean(float(rows[i]["rougeL"]) for rows in per_run) for i in ids}
    references = {i: per_run[0][i].get("references") for i in ids}
    for run, rows in zip(runs[1:], per_run[1:], strict=True):
        other = next((i for i in ids if rows[i].get("references") != references[i]), None)
        if other is not None:
            raise ValueError(
                f"{set_dir}: example {other} has different reference answers in {runs[0]} and "
                f"{run}: the files come from different data"
            )
    return Paired(values, references=references)


def quality_per_example(set_dir: Path, metric: str) -> Paired | None:
    path = set_dir / "quality.jsonl"
    if not path.is_file():
        return None
    rows = _rows_by_id(path)
    values = {i: float(r[metric]) for i, r in rows.items() if _finite(r.get(metric))}
    if not values:
        return None
    weights = {i: float(rows[i]["tokens"]) for i in values if _finite(rows[i].get("tokens"))}
    return Paired(values, weights=weights if len(weights) == len(values) else None)


def correct_per_example(path: Path) -> Paired:
    rows = _rows_by_id(path)
    values = {i: float(bool(r["correct"])) for i, r in rows.items()}
    references = {i: r.get("reference") for i, r in rows.items()}
    return Paired(values, references=references)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first_row(path: Path) -> dict[str, Any]:
    return next(iter(read_jsonl(path)), {})


def _set_metrics(base_dir: Path, new_dir: Path) -> tuple[dict[str, tuple[Paired, Paired]], str]:
    """``{metric: (base, new)}`` of one set's folders, and why a metric family is missing."""
    pairs: dict[str, tuple[Paired, Paired]] = {}
    reasons = []
    base_runs, new_runs = run_files(base_dir), run_files(new_dir)
    rouge_runs = {
        name: sorted(s for s, p in runs.items() if "rougeL" in _first_row(p))
        for name, runs in (("base", base_runs), ("new", new_runs))
    }
    shared = sorted(set(rouge_runs["base"]) & set(rouge_runs["new"]))
    if shared:
        note = f"ROUGE-L over {', '.join(shared)}"
        base, new = rouge_per_example(base_dir, shared), rouge_per_example(new_dir, shared)
        pairs["rougeL"] = (Paired(base.values, None, base.references, note), new)
    elif rouge_runs["base"] or rouge_runs["new"]:
        listed = {k: ", ".join(v) or "none" for k, v in rouge_runs.items()}
        reasons.append(
            f"rougeL: no generation run in both (base: {listed['base']}; new: {listed['new']})"
        )
    for metric in QUALITY_METRICS:
        base_q, new_q = quality_per_example(base_dir, metric), quality_per_example(new_dir, metric)
        if base_q is not None and new_q is not None:
            pairs[metric] = (base_q, new_q)
        elif base_q is not None or new_q is not None:
            reasons.append(f"{metric}: only in {'base' if base_q is not None else 'new'}")
    greedy = [d / "greedy.jsonl" for d in (base_dir, new_dir)]
    has_correct = [p.is_file() and "correct" in _first_row(p) for p in greedy]
    if all(has_correct):
        pairs["pass@1"] = (correct_per_example(greedy[0]), correct_per_example(greedy[1]))
    elif any(has_correct):
        reasons.append(f"pass@1: only in {'base' if has_correct[0] else 'new'}")
    return pairs, "; ".join(reasons)


def compare_runs(
    base_dir: str | Path,
    new_dir: str | Path,
    *,
    zero_method: str = ZERO_METHOD,
    min_nonzero: int = MIN_NONZERO,
) -> dict[str, Any]:
    """Compare two evaluation folders (``base_dir`` = RUN_A, ``new_dir`` = RUN_B); returns
    ``{base, new, base_model, new_model, test, rows, skipped}`` (see the module docstring).
    ``rows`` holds one row per (set, metric), then an ``Average`` ROUGE-L row over the sets
    that have one (no test: it is a mean over sets)."""
    base_dir, new_dir = Path(base_dir), Path(new_dir)
    base_summary, new_summary = read_summary(base_dir), read_summary(new_dir)
    base_sets, new_sets = base_summary["suites"], new_summary["suites"]
    skipped = [{"set": s, "reason": "only in base"} for s in base_sets if s not in new_sets]
    skipped += [{"set": s, "reason": "only in new"} for s in new_sets if s not in base_sets]
    rows: list[dict[str, Any]] = []
    for name in [s for s in base_sets if s in new_sets]:
        metrics, reason = _set_metrics(base_dir / name, new_dir / name)
        if not metrics:
            skipped.append({"set": name, "reason": reason or "no per-example files in both"})
            continue
        if reason:
            skipped.append({"set": name, "reason": reason})
        for metric, (base, new) in metrics.items():
            rows.append(
                compare_metric(
                    name,
                    metric,
                    base,
                    new,
                    scale=100.0 if metric == "pass@1" else 1.0,
                    zero_method=zero_method,
                    min_nonzero=min_nonzero,
                )
            )
    rouge_rows = [r for r in rows if r["metric"] == "rougeL" and r["base"] is not None]
    if len(rouge_rows) > 1:
        base_avg = statistics.fmean(r["base"] for r in rouge_rows)
        new_avg = statistics.fmean(r["new"] for r in rouge_rows)
        diff = new_avg - base_avg
        rows.append(
            {
                "set": "Average",
                "metric": "rougeL",
                "direction": "higher",
                "base": base_avg,
                "new": new_avg,
                "diff": diff,
                "gain_pct": relative_gain(base_avg, new_avg),
                "better": "tie" if diff == 0 else ("new" if diff > 0 else "base"),
                "p_value": None,
                "statistic": None,
                "n_pairs": sum(r["n_pairs"] for r in rouge_rows),
                "n_nonzero": sum(r["n_nonzero"] for r in rouge_rows),
                "note": f"mean over {len(rouge_rows)} sets; no test (see the per-set rows)",
            }
        )
    return {
        "base": str(base_dir),
        "new": str(new_dir),
        "base_model": base_summary.get("model"),
        "new_model": new_summary.get("model"),
        "test": (
            f"two-sided Wilcoxon signed-rank (scipy.stats.wilcoxon) on per-example pairs, "
            f"zero_method={zero_method!r} (zero differences dropped), p null when fewer than "
            f"{min_nonzero} pairs differ"
        ),
        "gain": "gain_pct = (new - base) / base x 100; 'better' follows each metric's direction",
        "rows": rows,
        "skipped": skipped,
    }


def default_out_path(base_dir: str | Path, new_dir: str | Path) -> Path:
    """``RUN_B/compare_<name of RUN_A>.json`` (a report of RUN_B picks up ``compare*.json``).
    A generic folder name (``runs/baseline/eval``) is prefixed with its parent's:
    ``compare_baseline-eval.json``, not ``compare_eval.json``."""
    folder = Path(base_dir).resolve()
    name = folder.name or "base"
    if name in GENERIC_NAMES and folder.parent.name:
        name = f"{folder.parent.name}-{name}"
    return Path(new_dir) / f"compare_{name}.json"


def write_comparison(result: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    write_json(path, result)
    return path


def comparison_table(result: Mapping[str, Any]) -> Any:
    """A rich table: one row per (set, metric); arrows give each metric's better direction."""
    from rich.table import Table

    table = Table(title=f"base {result['base']}  vs  new {result['new']}")
    columns = ("set", "metric", "base", "new", "diff", "gain %", "better", "p", "n", "note")
    for column in columns:
        table.add_column(column, justify="left" if column in ("set", "metric", "note") else "right")

    def number(value: Any, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in result["rows"]:
        arrow = "↑" if row["direction"] == "higher" else "↓"
        digits = 2 if row["metric"] in ("rougeL", "pass@1") else 4
        p = row["p_value"]
        table.add_row(
            row["set"],
            f"{row['metric']} {arrow}",
            number(row["base"], digits),
            number(row["new"], digits),
            ("-" if row["diff"] is None else f"{row['diff']:+.{digits}f}"),
            ("-" if row["gain_pct"] is None else f"{row['gain_pct']:+.2f}"),
            row["better"] or "-",
            "-" if p is None else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"),
            f"{row['n_nonzero']}/{row['n_pairs']}",
            row.get("note", ""),
            style="bold" if row["set"] == "Average" else None,
        )
    caption = [
        "↑ higher is better, ↓ lower is better; gain % = (new - base) / base x 100",
        "n = pairs that differ / pairs; p: two-sided Wilcoxon signed-rank, zero differences "
        "dropped",
    ]
    if result["skipped"]:
        caption.append(
            "skipped: " + "; ".join(f"{s['set']} ({s['reason']})" for s in result["skipped"])
        )
    table.caption = "\n".join(caption)
    return table


__all__ = [
    "HIGHER_IS_BETTER",
    "MIN_NONZERO",
    "ZERO_METHOD",
    "Paired",
    "compare_metric",
    "compare_runs",
    "comparison_table",
    "default_out_path",
    "read_summary",
    "relative_gain",
    "wilcoxon_test",
    "write_comparison",
]
