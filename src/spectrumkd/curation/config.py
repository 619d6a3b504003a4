"""SpectrumKD's hyper-parameters, validated on construction with messages a user can act on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

StepMode = Literal["adaptive", "drift_free", "linear"]
Direction = Literal["forward", "reverse"]
STEP_MODES: tuple[str, ...] = ("adaptive", "drift_free", "linear")
DIRECTIONS: tuple[str, ...] = ("forward", "reverse")


@dataclass(frozen=True)
class SpectrumKDConfig:
    """Everything that decides the zones, the sliding window and the temperatures.

    Defaults are the paper's instruction-following setting (spec section 1).
    """

    # Each field's "help" is also the help of its ``spectrumkd curate`` flag (spectrumkd.cli.flags
    # adds the default), so the two cannot drift apart.
    # Share of the spectrum in each of the Early and Late zones.
    lambda_a: float = field(default=0.1, metadata={"help": "Early/Late zone share"})
    # Share of the hardest examples excluded from training.
    lambda_b: float = field(default=0.1, metadata={"help": "Excluded share"})
    # Number of training epochs, numbered 1..n.
    epochs: int = field(default=25, metadata={"help": "epochs n"})
    # Epochs 1..k+1 use the first window; it slides from epoch k+2.
    warmup_epochs: int = field(default=5, metadata={"help": "warm-up epochs k"})
    # The distillation temperature rises linearly from tau_0 (epoch 1) to tau_n (epoch n).
    tau_start: float = field(default=1.0, metadata={"help": "temperature of epoch 1"})
    tau_end: float = field(default=2.0, metadata={"help": "temperature of epoch n"})
    # adaptive (Algorithm 1), drift_free (targets td(0)+j*delta_avg exactly) or linear
    # (ablation).
    step_mode: StepMode = field(default="adaptive", metadata={"help": "window step rule"})
    # forward: easy to hard; reverse: hard to easy (ablation).
    direction: Direction = field(default="forward", metadata={"help": "slide direction"})

    def __post_init__(self) -> None:
        for name in ("lambda_a", "lambda_b"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0 or value != value:
                raise ValueError(f"{name}={value!r} must be a number in [0, 1)")
        if 2 * self.lambda_a + self.lambda_b > 1.0 + 1e-12:
            raise ValueError(
                f"2*lambda_a + lambda_b = {2 * self.lambda_a + self.lambda_b:g} > 1 "
                f"(lambda_a={self.lambda_a}, lambda_b={self.lambda_b}): the Early and Late zones would overlap; "
                "lower lambda_a or lambda_b"
            )
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs={self.epochs!r} must be an integer >= 1")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={self.warmup_epochs!r} must be an integer >= 0")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} must be smaller than epochs={self.epochs}; "
                "raise epochs or lower the warm-up"
            )
        for name in ("tau_start", "tau_end"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
                raise ValueError(f"{name}={value!r} must be a finite temperature > 0")
        if self.step_mode not in STEP_MODES:
            raise ValueError(f"step_mode={self.step_mode!r} is not one of {', '.join(STEP_MODES)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction={self.direction!r} is not one of {', '.join(DIRECTIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SpectrumKDConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown SpectrumKD setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)
