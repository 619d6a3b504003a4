"""Mixed precision: which compute precision pays on a device, and the autocast that applies it.

One ``precision`` setting for every model forward of the toolkit (scoring, teacher forwards,
the teacher cache, training, generation):

- ``float32``: no autocast.
- ``bf16``: ``torch.autocast`` in bfloat16. Matrix products run in bf16; weights, optimiser
  state (the master weights) and everything computed from logits (log-softmax, cross-entropy,
  the KD objectives, which cast to float32 first) stay float32.
- ``fp16``: autocast in float16, CUDA only (accelerate adds the gradient scaler in training).
- ``auto``: ``bf16`` where the device has fast bf16 matrix units, ``float32`` elsewhere. Fast
  means a CUDA GPU that supports bf16, or a CPU with AMX tiles or AVX512-BF16, *detected* (torch
  reports the CPU's features), not assumed: on a CPU without them bf16 is emulated and slower
  than float32. On this project's CPU (AMX) a bf16 matmul is about 6.8x faster than float32 and
  a bf16-autocast training step about 2x (benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "float32", "bf16", "fp16")


def has_fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 matrix products natively (CUDA bf16; CPU AMX or
    AVX512-BF16)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        for name in probes:  # private probes of torch.cpu (torch >= 2.3); absent -> not fast
            probe = getattr(torch.cpu, name, None)
            if probe is not None and probe():
                return True
    return False


def normalize_precision(precision: str) -> str:
    """The PRECISIONS name of ``precision`` (accepting fp32, no, bfloat16, float16), without
    looking at a device; an unknown name is a one-line error."""
    name = str(precision).strip().lower()
    name = {"fp32": "float32", "no": "float32", "bfloat16": "bf16", "float16": "fp16"}.get(
        name, name
    )
    if name not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    return name


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` or ``float32`` for ``device``; other values are checked against it.

    Returns one of ``float32``, ``bf16``, ``fp16``; a value the device cannot run is a one-line
    error saying what to use instead."""
    device = torch.device(device)
    name = normalize_precision(precision)
    if name == "auto":
        return "bf16" if has_fast_bf16(device) else "float32"
    if name == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision=fp16 needs a CUDA device (this run is on {device.type}); use bf16 or float32"
        )
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision=bf16: this GPU has no bf16 support; use fp16 or float32")
    return name


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None for float32)."""
    return {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Autocast for ``precision`` (any value of PRECISIONS, resolved here) on ``device``."""
    device = torch.device(device)
    dtype = autocast_dtype(resolve_precision(precision, device))
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def accelerate_mixed_precision(precision: str, device: torch.device | str) -> str:
    """accelerate's ``mixed_precision`` value (``no``, ``bf16``, ``fp16``) for ``precision``."""
    resolved = resolve_precision(precision, device)
    return "no" if resolved == "float32" else resolved


@contextlib.contextmanager
def weights_held_in(
    dtype: torch.dtype | None, model: torch.nn.Module, every_parameter: bool = False
) -> Iterator[None]:
    """Every float32 ``nn.Linear`` weight and bias held in ``dtype`` for the duration (the
    originals are put back after, untouched). Autocast casts them to ``dtype`` at each call
    anyway, and it caches casts only for weights that autograd records: a frozen model (a decode
    loop; the teacher during training) was re-cast whole at every forward (58% of a bf16 CPU
    decode step). The products are the same bits; one cast per call instead of one per forward. ``every_parameter``:
    every float32 parameter of every module (embeddings and norms too), for a model run in
    ``dtype`` without autocast. A parameter shared by two modules (tied embeddings) is cast once."""
    if dtype is None:
        yield
        return
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    casts: dict[int, torch.nn.Parameter] = {}
    try:
        for module in model.modules():
            if not (every_parameter or isinstance(module, torch.nn.Linear)):
                continue
            names = list(module._parameters) if every_parameter else ["weight", "bias"]
            for name in names:
                original = module._parameters.get(name)
                if original is not None and original.dtype == torch.float32:
                    if id(original) not in casts:
                        casts[id(original)] = torch.nn.Parameter(
                            original.detach().to(dtype), requires_grad=False
                        )
                    module._parameters[name] = casts[id(original)]
                    swapped.append((module, name, original))
        yield
    finally:
        for module, name, original in reversed(swapped):
            module._parameters[name] = original


__all__ = [
    "PRECISIONS",
    "accelerate_mixed_precision",
    "autocast",
    "autocast_dtype",
    "has_fast_bf16",
    "normalize_precision",
    "resolve_precision",
    "weights_held_in",
]
