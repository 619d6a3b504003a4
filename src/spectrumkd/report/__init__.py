"""Reports of a run folder: one self-contained HTML page with PNG figures beside it.

``spectrumkd report RUN_DIR`` or :func:`write_report`. The readers
(:mod:`spectrumkd.report.readers`) tolerate partial runs; the figures
(:mod:`spectrumkd.report.figures`) are pure functions of the data.
"""

from spectrumkd.report.page import write_report
from spectrumkd.report.readers import RunData, read_run

__all__ = ["RunData", "read_run", "write_report"]
