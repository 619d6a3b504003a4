"""The report of a domain-mixture run (``ddk``, ``domain_mix``): the weights over steps, DDK's
perplexity ratios, one table row per update and the update cost, checked against the numbers
written in a hand-made run folder; the difficulty-based sections step aside in one line."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from spectrumkd.io import write_json, write_jsonl
from spectrumkd.report import read_run, write_report
from spectrumkd.report.mixture import mixture_figure, read_mixture

DOMAINS = ["code", "maths", "prose"]
TEACHER = {"code": 4.0, "maths": 5.0, "prose": 8.0}
STUDENT0 = {"code": 12.0, "maths": 10.0, "prose": 16.0}
K = 4  # update_every_steps
SMOOTHING = 0.5


def softmax(values: np.ndarray) -> np.ndarray:
    e = np.exp(values - values.max())
    return e / e.sum()


def ddk_updates() -> tuple[dict[str, float], list[dict]]:
    """The initial weights and two updates by the spec's formula, from chosen perplexities."""
    ratios0 = np.array([STUDENT0[d] / TEACHER[d] for d in DOMAINS])
    weights = softmax(ratios0)
    initial = dict(zip(DOMAINS, weights.tolist(), strict=True))
    rows = []
    for epoch, student, seconds in (
        (2, {"code": 6.0, "maths": 9.0, "prose": 10.0}, 0.75),
        (3, {"code": 5.0, "maths": 6.0, "prose": 9.6}, 0.5),
    ):
        ratios = np.array([student[d] / TEACHER[d] for d in DOMAINS])
        psi = weights * np.exp(ratios)
        weights = SMOOTHING * psi / psi.sum() + (1 - SMOOTHING) / len(DOMAINS)
        rows.append(
            {
                "epoch": epoch,
                "step": (epoch - 1) * K,
                "plan_update": "ddk",
                "student_perplexity": student,
                "ratios": dict(zip(DOMAINS, ratios.tolist(), strict=True)),
                "weights": dict(zip(DOMAINS, weights.tolist(), strict=True)),
                "measure_seconds": seconds - 0.01,
                "validation_tokens": 300,
                "update_seconds": seconds,
            }
        )
    return initial, rows


def step_rows(last: int) -> list[dict]:
    return [
        {"epoch": (s - 1) // K + 1, "step": s, "tokens": 40, "ce": 2.0 - 0.05 * s, "kd": 0.4,
         "temperature": 1.0, "alpha": 0.8333, "lr": 1e-4}
        for s in range(1, last + 1)
    ]  # fmt: skip


def write_ddk_run(folder: Path, intervals: int = 3) -> tuple[dict, list[dict]]:
    initial, updates = ddk_updates()
    epochs = [
        {"epoch": e, "weights": initial, **({"provisional": True} if e > 1 else {}),
         "temperature": 1.0, "kd_weight": 0.2 / 1.2, "num_examples": 16,
         "ids": [f"ex{i}" for i in range(16)]}
        for e in range(1, intervals + 1)
    ]  # fmt: skip
    schedule = {
        "strategy": "ddk",
        "settings": {"intervals": intervals, "update_every_steps": K, "smoothing": SMOOTHING},
        "mixture": {
            "domains": DOMAINS,
            "weights": initial,
            "teacher_perplexity": TEACHER,
            "student_perplexity": STUDENT0,
            "validation_rows": dict.fromkeys(DOMAINS, 4),
            "measure_seconds": 1.25,
        },
        "epochs": epochs,
    }
    write_json(folder / "schedule.json", schedule)
    steps = step_rows(intervals * K)
    rows = steps[:K] + [updates[0]] + steps[K : 2 * K] + [updates[1]] + steps[2 * K :]
    write_jsonl(folder / "metrics.jsonl", rows)
    history = [
        {k: v for k, v in u.items() if k not in ("step", "plan_update", "update_seconds")}
        for u in updates
    ]
    write_json(
        folder / "checkpoint" / "trainer_state.json",
        {"epoch": intervals, "step": intervals * K, "strategy": "ddk",
         "config": {"alpha": 0.8333, "objective": "forward_kl"},
         "plan_updater": {"history": history, "weights": list(updates[-1]["weights"].values())},
         "plan_update_seconds": 1.3},
    )  # fmt: skip
    return initial, updates


class Tables(HTMLParser):
    """The cells of every table of one section of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


def table_of(html: str) -> list[dict[str, str]]:
    parser = Tables()
    parser.feed(html)
    (table,) = parser.tables
    head, *body = table
    return [dict(zip(head, row, strict=True)) for row in body]


def cell(value: str) -> float:
    return float(value.replace(",", ""))


def test_ddk_weights_ratios_table_and_cost_follow_the_written_files(tmp_path):
    initial, updates = write_ddk_run(tmp_path)
    page_path = write_report(tmp_path)
    page = page_path.read_text()
    assert (page_path.parent / "mixture.png").stat().st_size > 1000
    mixture = section(page, "domain_mixture")

    rows = table_of(mixture)
    assert [cell(r["step"]) for r in rows] == [0, K, 2 * K]
    assert [r["decides interval"] for r in rows] == ["1", "2", "3"]
    expected = [
        (initial, STUDENT0, {d: STUDENT0[d] / TEACHER[d] for d in DOMAINS}, None),
        *[
            (u["weights"], u["student_perplexity"], u["ratios"], u["update_seconds"])
            for u in updates
        ],
    ]
    for row, (weights, student, ratios, seconds) in zip(rows, expected, strict=True):
        for d in DOMAINS:
            assert cell(row[f"weight {d}"]) == pytest.approx(weights[d], rel=1e-3)
            assert cell(row[f"student ppl {d}"]) == pytest.approx(student[d], rel=1e-3)
            assert cell(row[f"ratio {d}"]) == pytest.approx(ratios[d], rel=1e-3)
        assert (row["update s"] == "") if seconds is None else cell(row["update s"]) == seconds

    total = sum(u["update_seconds"] for u in updates)
    assert f"2 update(s), {total:.2f} s in total" in mixture
    assert "trainer_state.json totals 1.30 s" in mixture
    assert "600 validation tokens" in mixture
    assert "in 1.25 s (schedule.json)" in mixture
    assert "needs the run&#x27;s wall time" in mixture
    assert "2 later interval(s) were drawn from the initial weights" in mixture

    # With the trainer's train_seconds recorded, the share: (1.30 + 1.25) / (40.0 + 1.25).
    state_file = tmp_path / "checkpoint" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    write_json(state_file, {**state, "train_seconds": 40.0})
    shared = section(write_report(tmp_path).read_text(), "domain_mixture")
    assert f"2.5 s of 41.2 s ({100 * 2.55 / 41.25:.1f} %" in shared

    # The figure: stepped weights from step 0 to the run's last step, the 1/D level, the ratios.
    figure = mixture_figure(read_mixture(read_run(tmp_path)))
    weights_axes, ratio_axes = figure.axes
    end = 3 * K
    for d in DOMAINS:
        (line,) = [ln for ln in weights_axes.lines if ln.get_label() == d]
        assert line.get_drawstyle() == "steps-post"
        np.testing.assert_array_equal(line.get_xdata(), [0, K, 2 * K, end])
        values = [initial[d], *(u["weights"][d] for u in updates)]
        np.testing.assert_allclose(line.get_ydata(), [*values, values[-1]])
        (ratio,) = [ln for ln in ratio_axes.lines if ln.get_label() == d]
        np.testing.assert_allclose(
            ratio.get_ydata(), [STUDENT0[d] / TEACHER[d], *(u["ratios"][d] for u in updates)]
        )
    (uniform,) = [ln for ln in weights_axes.lines if ln.get_label() == "uniform 1/3"]
    np.testing.assert_allclose(uniform.get_ydata(), [1 / 3, 1 / 3])


def test_difficulty_sections_step_aside_in_one_line_for_a_mixture(tmp_path):
    write_ddk_run(tmp_path)
    page_path = write_report(tmp_path)
    page = page_path.read_text()
    for anchor in ("difficulty_distribution", "difficulty_spectrum", "curriculum_schedule"):
        text = section(page, anchor)
        assert "ranks no examples by difficulty" in text and "see Domain mixture" in text
        assert "Missing or incomplete" not in text  # not "not scored yet": nothing to score
    names = sorted(p.name for p in page_path.parent.glob("*.png"))
    assert names == ["mixture.png", "training.png"]


def test_fixed_domain_mix_draws_constant_weights_without_updates(tmp_path):
    weights = {"code": 0.5, "maths": 0.3, "prose": 0.2}
    write_json(
        tmp_path / "schedule.json",
        {"strategy": "domain_mix", "mixture": {"domains": DOMAINS, "weights": weights},
         "epochs": [{"epoch": e, "weights": weights, "temperature": 1.0, "num_examples": 8,
                     "ids": []} for e in (1, 2)]},
    )  # fmt: skip
    write_jsonl(tmp_path / "metrics.jsonl", step_rows(2 * K))
    page = write_report(tmp_path).read_text()
    mixture = section(page, "domain_mixture")
    (row,) = table_of(mixture)
    assert [cell(row[f"weight {d}"]) for d in DOMAINS] == [0.5, 0.3, 0.2]
    assert not any(k.startswith(("ratio", "student ppl", "update")) for k in row)
    assert "Fixed weights: no updates" in mixture
    figure = mixture_figure(read_mixture(read_run(tmp_path)))
    (axes,) = figure.axes
    (code,) = [ln for ln in axes.lines if ln.get_label() == "code"]
    np.testing.assert_array_equal(code.get_xdata(), [0, 2 * K])
    np.testing.assert_allclose(code.get_ydata(), [0.5, 0.5])


def test_torn_and_missing_rows_still_render_with_notes(tmp_path):
    _, updates = write_ddk_run(tmp_path)
    (tmp_path / "schedule.json").unlink()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if "plan_update" in line)
    broken = dict(updates[0], weights={"code": 0.5})  # a domain's weight lost
    lines[first] = json.dumps(broken)
    second = next(i for i, line in enumerate(lines) if i > first and "plan_update" in line)
    # The run killed while appending the second update: its row is the torn last line.
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines[:second]) + "\n" + lines[second][:40])
    page = write_report(tmp_path).read_text()
    mixture = section(page, "domain_mixture")
    assert "1 plan update row(s) lack a step or a weight for every domain" in mixture
    assert "no domain weights recorded yet" in mixture
    assert "Difficulty spectrum" in page and "ranks no examples by difficulty" in page

    # With the schedule back, step 0 is drawn and the missing updates are counted.
    write_ddk_run(tmp_path / "again")
    again = tmp_path / "again"
    lines = (again / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if '"epoch": 3, "step": 8, "plan_update"' not in line]
    (again / "metrics.jsonl").write_text("\n".join(kept[:-1]) + "\n" + kept[-1][:10])
    page_path = write_report(again)
    mixture = section(page_path.read_text(), "domain_mixture")
    assert [cell(r["step"]) for r in table_of(mixture)] == [0, K]
    assert "history holds 2 update(s), metrics.jsonl 1" in mixture
    assert (page_path.parent / "mixture.png").is_file()


def test_a_run_that_is_not_a_mixture_has_no_mixture_section(tmp_path):
    write_jsonl(tmp_path / "metrics.jsonl", step_rows(3))
    page = write_report(tmp_path).read_text()
    assert "Domain mixture" not in page and "mixture.png" not in page


def test_another_dynamic_plans_updates_do_not_make_a_mixture(tmp_path):
    rows = step_rows(2 * K)
    rows.insert(K, {"epoch": 2, "step": K, "plan_update": "dakd", "keep_ratio": 0.8})
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    run = read_run(tmp_path)
    assert len(run.plan_updates) == 1
    assert "Domain mixture" not in write_report(tmp_path).read_text()
