"""Write a curation result as plain files, readable without this package (spec section 5)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spectrumkd.curation.plan import CurriculumPlan
from spectrumkd.curation.spectrum import Spectrum
from spectrumkd.io import write_json, write_jsonl

if TYPE_CHECKING:  # curation depends on numbers, not on the scorer that made them
    from spectrumkd.scoring.difficulty import DifficultyTable

SCHEDULE_FILE = "schedule.json"
SPECTRUM_FILE = "spectrum.jsonl"


def spectrum_rows(spectrum: Spectrum, table: DifficultyTable | None = None) -> list[dict]:
    """Rank-ordered rows: id, difficulty, rank, zone, plus mean/sum/tokens when the table is known."""
    rows = spectrum.rows()
    if table is not None:
        where = {id_: i for i, id_ in enumerate(table.ids)}
        for row in rows:
            i = where[row["id"]]
            row.update(
                loss_mean=float(table.loss_mean[i]),
                loss_sum=float(table.loss_sum[i]),
                tokens=int(table.tokens[i]),
            )
    return rows


def write_curation(
    plan: CurriculumPlan,
    spectrum: Spectrum,
    out_dir: str | Path,
    table: DifficultyTable | None = None,
) -> Path:
    """``out_dir/schedule.json`` (the plan, zones included) and ``out_dir/spectrum.jsonl``."""
    out = Path(out_dir)
    write_jsonl(out / SPECTRUM_FILE, spectrum_rows(spectrum, table))
    write_json(out / SCHEDULE_FILE, plan.to_dict())
    return out / SCHEDULE_FILE
