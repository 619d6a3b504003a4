"""The shrink job: a student cut from a teacher by block influence (or reused when finished)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spectrumkd.data import DataConfig
from spectrumkd.models import (
    ShrinkReport,
    calibration_batches,
    load_model,
    load_tokenizer,
    resolve_device,
    shrunk_student,
)


def shrink(
    teacher: str,
    out_dir: str | Path,
    data: DataConfig,
    *,
    keep_layers: Sequence[int] | None = None,
    num_layers: int | None = None,
    method: str = "block_influence",
    calibration_rows: int = 32,
    device: str = "auto",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    reuse: bool = False,
) -> ShrinkReport:
    """``spectrumkd shrink``: a student cut from ``teacher`` into ``out_dir``, keeping
    ``keep_layers`` or the ``num_layers`` blocks ``method`` measures as most important on the
    first ``calibration_rows`` rows of ``data`` (see :func:`spectrumkd.models.shrunk_student`).
    Layer influence is measured in float32. With ``reuse``, a finished student in ``out_dir``
    that matches the request is kept as it is."""
    resolved_device = resolve_device(device)
    load = {"trust_remote_code": trust_remote_code, "gguf_file": gguf_file}
    tokenizer = load_tokenizer(teacher, **load)
    model = load_model(teacher, dtype="float32", device=resolved_device, **load)
    dataset = data.load(tokenizer)
    batches = calibration_batches(dataset, tokenizer.pad_token_id, rows=calibration_rows)
    return shrunk_student(
        out_dir,
        model,
        tokenizer,
        batches,
        keep_layers=keep_layers,
        num_layers=num_layers,
        method=method,
        reuse=reuse,
    ).report
