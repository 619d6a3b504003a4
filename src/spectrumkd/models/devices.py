"""Which device a job runs on and which dtype its weights load in, from the user's words."""

from __future__ import annotations

import torch

from spectrumkd.models.loading import parse_dtype


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was asked for but this torch sees no CUDA GPU; use --device cpu"
        )
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 weights on a GPU that supports it, float32 elsewhere. On a CPU the
    weights stay float32 and the speed comes from the bf16 autocast of ``precision`` /
    ``train.mixed_precision`` (auto), which keeps float32 master weights and losses."""
    if dtype != "auto":
        return parse_dtype(dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
