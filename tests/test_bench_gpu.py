"""benchmarks/bench_gpu.py runs as is: its --tiny mode runs every measurement (KD step in float32
and bf16, full logits and chunked, sdpa and eager attention; scoring; generation) on tiny random
models on the CPU, and the bf16 results stay within rounding of float32."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(text: str, heading: str) -> list[list[str]]:
    """The body rows of the Markdown table under the ``## heading...`` line."""
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_bench_gpu_tiny_runs_every_measurement_on_the_cpu(capsys):
    bench = _load()
    bench.main(["--tiny", "--device", "cpu"])
    out = capsys.readouterr().out

    kd = _table(out, "KD step")
    assert [tuple(row[:3]) for row in kd] == list(bench.KD_VARIANTS)
    for row in kd:
        assert float(row[3].replace(",", "")) > 0
        # first-step loss against float32 full logits: exact for float32, bf16 rounding else
        limit = 1e-5 if row[0] == "float32" else 3e-2
        assert float(row[7]) <= limit, row

    scoring = _table(out, "Scoring")
    assert [row[0] for row in scoring] == ["float32", "bf16"]
    assert float(scoring[0][3]) == 0 and float(scoring[1][3]) < 5e-2

    generation = _table(out, "Generation")
    assert [row[0] for row in generation] == ["float32", "bf16"]
    assert all(
        re.fullmatch(r"[\d,]+", row[1]) and re.fullmatch(r"[\d,]+", row[2]) for row in generation
    )


def test_bench_gpu_without_a_gpu_asks_for_tiny():
    bench = _load()
    with pytest.raises(SystemExit, match="--tiny"):
        bench.main(["--device", "cpu"])
