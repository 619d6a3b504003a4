"""The suites that plug into ``spectrumkd evaluate`` beside the instruction sets: what a suite
runner receives (:class:`SuiteContext`) and the table of runners by name (:data:`SUITE_RUNNERS`;
maths and code are added in :mod:`spectrumkd.evaluation` through
:func:`spectrumkd.evaluation.instruction.runner.register_suite`).

It imports nothing of the evaluation stage, so a suite module can name :class:`SuiteContext`
without importing the instruction-following runner, and the runner dispatches to suites without
importing them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SuiteContext:
    """What a registered (non-instruction) suite receives from the ``evaluate`` command."""

    model: Any
    tokenizer: Any
    out_dir: Path  # OUT/<suite name>, the suite's own folder
    data_root: Path | None
    limit: int | None
    batch_size: int
    max_new_tokens: int | None  # None: the suite's own default
    progress: bool
    options: Mapping[str, Any] = field(default_factory=dict)
    precision: str = "auto"  # compute precision of generation (spectrumkd.models.precision)


SuiteRunner = Callable[[SuiteContext], dict[str, Any]]

# Extension point: maths/code suites add themselves here (e.g. SUITE_RUNNERS["gsm8k"] = run_gsm8k).
# A runner writes its files under ctx.out_dir, resumes on its own, and returns a JSON-able dict
# that lands in summary.json under suites[name]; "metric" and "score" keys, when present, are
# shown in the summary table.
SUITE_RUNNERS: dict[str, SuiteRunner] = {}


def data_root_of(ctx: SuiteContext, set_name: str) -> Path:
    """The data folder a registered suite reads, or a one-line error naming the flag."""
    if ctx.data_root is None:
        raise ValueError(f"suite {set_name!r} needs --data-root (the folder holding its files)")
    return Path(ctx.data_root)
