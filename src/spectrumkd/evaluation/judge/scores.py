"""The student's win rate from the judge's verdicts: per judgment, per pair (both orders, so a
judge's position bias cancels) and per set, with the table the ``judge`` command prints."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from spectrumkd.evaluation.judge.prompt import ORDERS


def student_score(verdict: str | None, order: str) -> float | None:
    """The student's score (1 win, 0.5 tie, 0 loss) for one judgment in ``order``."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if verdict is None:
        return None
    if verdict == "C":
        return 0.5
    student_slot = "A" if order == "ab" else "B"
    return 1.0 if verdict == student_slot else 0.0


def pair_score(verdict_ab: str | None, verdict_ba: str | None) -> float | None:
    """Mean of the student's scores over both orders; None if either verdict is unparseable."""
    ab, ba = student_score(verdict_ab, "ab"), student_score(verdict_ba, "ba")
    if ab is None or ba is None:
        return None
    return (ab + ba) / 2


def summarize_pairs(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and win rate of per-pair rows (``verdict_ab``, ``verdict_ba``, ``finish_ab``, ...).

    ``wins``/``ties``/``losses`` count judgments (two per pair) of the pairs that have a score;
    ``win_rate`` = 100 x (wins + ties / 2) / (their judgments) = 100 x the mean pair score, in
    percent, None when no pair has a score. ``unparseable`` counts judgments of all pairs,
    ``unparseable_share`` is it over ``2 n``, ``excluded_pairs`` the pairs left out for it.
    ``consistent_pairs``: scored pairs whose two orders gave the student the same result.
    """
    wins = ties = losses = unparseable = consistent = cut_off = 0
    scores: list[float] = []
    for row in rows:
        per_order = [student_score(row["verdict_ab"], "ab"), student_score(row["verdict_ba"], "ba")]
        unparseable += sum(s is None for s in per_order)
        cut_off += sum(row.get(f"finish_{order}") == "length" for order in ORDERS)
        if None in per_order:
            continue
        scores.append(sum(per_order) / 2)  # type: ignore[arg-type]
        wins += per_order.count(1.0)
        ties += per_order.count(0.5)
        losses += per_order.count(0.0)
        consistent += per_order[0] == per_order[1]
    n = len(rows)
    return {
        "n": n,
        "win_rate": 100.0 * statistics.fmean(scores) if scores else None,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "unparseable": unparseable,
        "unparseable_share": unparseable / (2 * n) if n else None,
        "scored_pairs": len(scores),
        "excluded_pairs": n - len(scores),
        "consistent_pairs": consistent,
        "cut_off": cut_off,  # judgments stopped by max_tokens (a common cause of no verdict)
    }


def judge_table(summary: Mapping[str, Any]) -> Any:
    """A rich table of a judge summary: one row per set."""
    from rich.table import Table

    settings = summary.get("judge", {})
    table = Table(
        title=(
            f"Win rate of the student against the reference (judge {settings.get('model')}, "
            f"T={settings.get('temperature')}, both orders)"
        )
    )
    for column in ("set", "pairs", "win rate %", "wins", "ties", "losses", "unparseable"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for name, result in summary.items():
        if name == "judge" or not isinstance(result, Mapping):
            continue
        rate = result.get("win_rate")
        share = result.get("unparseable_share")
        table.add_row(
            name,
            str(result["n"]),
            "-" if rate is None else f"{rate:.1f}",
            str(result["wins"]),
            str(result["ties"]),
            str(result["losses"]),
            f"{result['unparseable']}" + ("" if share is None else f" ({100 * share:.0f} %)"),
        )
    table.caption = (
        "wins/ties/losses count judgments (2 per pair) of pairs with both verdicts parsed; "
        "a pair with an unparseable verdict is left out of the win rate"
    )
    return table
