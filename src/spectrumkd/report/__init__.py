"""Reports of a run folder: one self-contained HTML page with PNG figures beside it.

``spectrumkd report RUN_DIR`` or :func:`write_report`. The readers
(:mod:`spectrumkd.report.readers`) tolerate partial runs; the figures
(:mod:`spectrumkd.report.figures`) are pure functions of the data.
"""

from spectrumkd.report.comparison import write_comparison_report
from spectrumkd.report.figures import EVAL_TEMPERATURE, divergence_name
from spectrumkd.report.page import write_report
from spectrumkd.report.readers import RunData, read_run

__all__ = [
    "EVAL_TEMPERATURE",
    "RunData",
    "divergence_name",
    "read_run",
    "write_comparison_report",
    "write_report",
]
