"""The demo's own logic with tiny models: what its results table says, and (below) the
distillation stage's run folders, reports and comparison page."""

from __future__ import annotations

from rich.console import Console

from spectrumkd.demo import DistillResult, results_table


def _text(table) -> str:
    console = Console(record=True, width=400, color_system=None)
    console.print(table)
    return console.export_text()


def test_the_results_table_says_what_each_column_measures():
    results = [
        DistillResult("baseline", 3, 36, 288, 3, 3.1, 1.16, 60.0, "b", train_temperature=1.0),
        DistillResult("spectrumkd", 4, 36, 288, 4, 3.2, 1.21, 61.0, "s", train_temperature=2.0),
    ]
    text = _text(results_table(results))
    # The KL column names its direction and its temperature, so a run that trained at tau 2
    # is not read as halving the KL; the kept epoch says which, why and at which tau it trained.
    assert "val KL(teacher||student) at tau 1" in text
    assert "val CE" in text and "nats per response token" in text
    assert "4 of 4 (tau 2)" in text and "3 of 3 (tau 1)" in text
    assert "lowest validation KL(teacher||student) at tau 1" in text
    assert "select_metric=val_kd" in text
    spectrumkd_row = next(line for line in text.splitlines() if "spectrumkd" in line)
    assert "3.2000" in spectrumkd_row and "1.2100" in spectrumkd_row
