"""The evaluate job: load a model (and its teacher) and run the instruction-following suites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spectrumkd.models import check_pair, load_model, load_tokenizer, resolve_device, resolve_dtype


def evaluate(
    model: str,
    out_dir: str | Path,
    *,
    teacher: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``spectrumkd evaluate``: load ``model`` (and ``teacher``, checked as a pair, for CE/KL to
    it) on the device and dtype named, then
    :func:`~spectrumkd.evaluation.evaluate_instruction_following` with ``options`` (suites,
    data_root, sources, decoding, limit, ...). Returns the summary it writes."""
    from spectrumkd.evaluation import evaluate_instruction_following

    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    load = {"trust_remote_code": trust_remote_code, "gguf_file": gguf_file}
    tokenizer = load_tokenizer(model, **load)
    loaded = load_model(model, dtype=resolved_dtype, device=resolved_device, **load)
    loaded_teacher = None
    if teacher is not None:
        # The GGUF file names a file of the evaluated model's repository, not the teacher's.
        teacher_tokenizer = load_tokenizer(teacher, trust_remote_code=trust_remote_code)
        loaded_teacher = load_model(
            teacher,
            dtype=resolved_dtype,
            device=resolved_device,
            trust_remote_code=trust_remote_code,
        )
        check_pair(teacher_tokenizer, tokenizer, loaded_teacher.config, loaded.config)
    return evaluate_instruction_following(
        loaded,
        tokenizer,
        out_dir,
        teacher=loaded_teacher,
        model_spec=model,
        teacher_spec=teacher,
        **options,
    )
