"""Tables of the comparison JSON files a run folder holds (``compare*.json``,
``comparison*.json``), whose exact shape is not fixed: whatever rows they hold become flat
tables for the run page."""

from __future__ import annotations

from typing import Any

from spectrumkd.report.readers import as_number

_ROW_KEYS = ("rows", "sets", "results", "per_set", "table", "comparison")


def _flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """Scalars only (nested values would not fit a table cell)."""
    return {k: v for k, v in row.items() if v is None or isinstance(v, (str, int, float, bool))}


def comparison_tables(value: Any) -> tuple[dict[str, Any], list[list[dict[str, Any]]]]:
    """(top-level scalars, tables) of a comparison JSON whose exact shape is not fixed: a list
    of row objects, an object holding such lists (``rows``, ``sets``, ...), or an object of
    per-set objects. Each table is a list of flat rows, a ``set`` column first."""
    tables: list[list[dict[str, Any]]] = []
    header: dict[str, Any] = {}

    def rows_of(candidate: Any) -> list[dict[str, Any]] | None:
        if (
            isinstance(candidate, list)
            and candidate
            and all(isinstance(r, dict) for r in candidate)
        ):
            return [_flat_row(r) for r in candidate]
        if (
            isinstance(candidate, dict)
            and candidate
            and all(isinstance(v, dict) for v in candidate.values())
        ):
            return [{"set": name, **_flat_row(row)} for name, row in candidate.items()]
        return None

    direct = rows_of(value)
    if direct is not None and not isinstance(value, dict):
        return header, [direct]
    if isinstance(value, dict):
        header = _flat_row(value)
        nested = [v for k, v in value.items() if k in _ROW_KEYS] or [
            v for v in value.values() if isinstance(v, (list, dict))
        ]
        for candidate in nested:
            rows = rows_of(candidate)
            if rows:
                tables.append(rows)
        if not tables and direct is not None:
            tables.append(direct)
    return header, tables


def find_key(rows: list[dict[str, Any]], *fragments: str) -> str | None:
    """The first column whose name contains one of ``fragments`` (in that order of preference)
    and holds a number in some row."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for fragment in fragments:
        for column in columns:
            if fragment in column.lower() and any(
                as_number(r.get(column)) is not None for r in rows
            ):
                return column
    return None
