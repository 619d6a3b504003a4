"""The precision setting: detection of fast bf16 (mocked CPU features), resolution and its
one-line refusals, and that autocast really computes in the resolved dtype."""

from __future__ import annotations

import pytest
import torch

from spectrumkd.models import precision as precision_module
from spectrumkd.models.precision import (
    accelerate_mixed_precision,
    autocast,
    has_fast_bf16,
    resolve_precision,
)


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, False, "bf16"), (False, True, "bf16"), (False, False, "float32")],
)
def test_auto_follows_the_cpus_bf16_units(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert has_fast_bf16("cpu") is (expected == "bf16")
    assert resolve_precision("auto", "cpu") == expected
    assert accelerate_mixed_precision("auto", "cpu") == ("bf16" if amx or avx512_bf16 else "no")


def test_a_torch_without_the_probes_counts_as_slow(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert resolve_precision("auto", "cpu") == "float32"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fp16", "precision=fp16 needs a CUDA device"),
        ("half-ish", "precision='half-ish' is not one of auto, float32, bf16, fp16"),
    ],
)
def test_what_a_cpu_cannot_run_is_one_line(value, message):
    with pytest.raises(ValueError) as error:
        resolve_precision(value, "cpu")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(("alias", "name"), [("fp32", "float32"), ("bfloat16", "bf16")])
def test_aliases(alias, name):
    assert resolve_precision(alias, "cpu") == name


def test_autocast_computes_in_the_resolved_dtype():
    weight = torch.randn(8, 8)
    with autocast("bf16", "cpu"):
        assert (torch.ones(2, 8) @ weight).dtype == torch.bfloat16
    with autocast("float32", "cpu"):
        assert (torch.ones(2, 8) @ weight).dtype == torch.float32
    assert precision_module.autocast_dtype("fp16") == torch.float16
