"""Scheduling time for one million synthetic (log-normal) difficulties.

Usage: python benchmarks/bench_schedule.py [--n 1000000] [--repeats 5]
Prints a Markdown table row per step mode; paste it into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from spectrumkd.curation import SpectrumKD, SpectrumKDConfig, build_spectrum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    losses = rng.lognormal(mean=1.0, sigma=0.6, size=args.n)
    ids = [f"{i:08d}" for i in range(args.n)]
    print(
        f"# {args.n:,} examples, {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )
    print("| step | median s | min s |")
    print("|---|---|---|")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        spectrum = build_spectrum(ids, losses, 0.1, 0.1)
        times.append(time.perf_counter() - start)
    print(f"| spectrum (sort + zones) | {statistics.median(times):.3f} | {min(times):.3f} |")
    for mode in ("adaptive", "drift_free", "linear"):
        strategy = SpectrumKD(SpectrumKDConfig(epochs=25, warmup_epochs=5, step_mode=mode))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            strategy.plan_from_spectrum(spectrum)
            times.append(time.perf_counter() - start)
        print(f"| 25-epoch {mode} schedule | {statistics.median(times):.3f} | {min(times):.3f} |")
    times = []
    strategy = SpectrumKD(SpectrumKDConfig(epochs=25, warmup_epochs=5))
    for _ in range(args.repeats):
        start = time.perf_counter()
        strategy.plan(ids, losses)
        times.append(time.perf_counter() - start)
    print(
        f"| end to end (spectrum + adaptive schedule) | {statistics.median(times):.3f} | {min(times):.3f} |"
    )


if __name__ == "__main__":
    main()
