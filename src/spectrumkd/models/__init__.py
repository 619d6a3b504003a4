"""Models: loading teachers/students from spec strings (on the device and dtype a user names),
pairing them for white-box KD, and deriving a smaller student from a teacher by keeping a subset
of its decoder blocks (reused from disk when a finished one matches)."""

from spectrumkd.models.devices import resolve_device, resolve_dtype
from spectrumkd.models.loading import (
    DEFAULT_TEACHER,
    ModelLoadError,
    cache_dir,
    convert_gguf_cached,
    default_teacher_gguf,
    gguf_cache_path,
    load_model,
    load_tokenizer,
    parse_dtype,
    resolve_model_path,
)
from spectrumkd.models.pairing import IncompatibleModelsError, VocabAlignment, check_pair
from spectrumkd.models.precision import (
    PRECISIONS,
    accelerate_mixed_precision,
    autocast,
    has_fast_bf16,
    resolve_precision,
)
from spectrumkd.models.shrink import (
    ShrinkReport,
    block_influence,
    calibration_loss,
    choose_layers,
    find_decoder_layers,
    removal_loss,
    shrink,
    shrink_model,
)
from spectrumkd.models.shrunk_student import (
    ShrunkStudent,
    calibration_batches,
    finished_report,
    shrunk_student,
)

__all__ = [
    "DEFAULT_TEACHER",
    "PRECISIONS",
    "IncompatibleModelsError",
    "ModelLoadError",
    "ShrinkReport",
    "ShrunkStudent",
    "VocabAlignment",
    "accelerate_mixed_precision",
    "autocast",
    "block_influence",
    "cache_dir",
    "calibration_batches",
    "calibration_loss",
    "check_pair",
    "choose_layers",
    "convert_gguf_cached",
    "default_teacher_gguf",
    "find_decoder_layers",
    "finished_report",
    "gguf_cache_path",
    "has_fast_bf16",
    "load_model",
    "load_tokenizer",
    "parse_dtype",
    "removal_loss",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
    "resolve_precision",
    "shrink",
    "shrink_model",
    "shrunk_student",
]
