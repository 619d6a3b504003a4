"""The settings of one distillation run, checked when they are made.

:class:`TrainConfig` is the ``train:`` section of a run's ``run_config.yaml``
(:mod:`spectrumkd.distillation.run_config`) and what :func:`spectrumkd.distillation.trainer.train`
reads; it sits in its own module so that reading or writing a run's configuration does not pull
in the training loop. Each field's ``help`` metadata is the CLI's help text for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spectrumkd.distillation.objectives import get_objective

LOSS_IMPLS = ("auto", "full", "chunked")
TRACKERS = ("none", "tensorboard", "wandb", "all")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a distillation run; invalid values are refused with their names."""

    objective: str = field(
        default="forward_kl",
        metadata={"help": "forward_kl, reverse_kl, jsd, tvd, skew_kl, skew_reverse_kl"},
    )
    objective_params: dict[str, float] = field(
        default_factory=dict, metadata={"help": "e.g. {'beta': 0.1} for jsd"}
    )
    alpha: float | None = field(
        default=None,
        metadata={
            "help": "weight of the ground-truth CE; KD gets 1 - alpha "
            "(default: the paper's 0.3 off-policy, 0 on-policy)"
        },
    )
    temperature: float = field(
        default=1.0, metadata={"help": "distillation temperature when no plan sets one"}
    )
    epochs: int = field(
        default=1, metadata={"help": "epochs of the baseline (a plan brings its own)"}
    )
    batch_size: int = field(default=8, metadata={"help": "micro-batch size per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "share of optimiser steps of linear warm-up"}
    )
    lr_schedule: str = field(
        default="linear", metadata={"help": "decay after warm-up: linear, cosine or constant"}
    )
    max_grad_norm: float | None = 1.0
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "autocast of every forward of the run (student, live teacher, scoring, "
            "teacher cache): auto (bf16 where the device has fast bf16: a CUDA GPU with bf16, a "
            "CPU with AMX or AVX512-BF16; no elsewhere), no (float32), bf16, fp16 (CUDA). "
            "Weights, optimiser state and losses stay float32"
        },
    )
    seed: int = 0
    log_every: int = 10
    select_metric: str = field(
        default="val_kd",
        metadata={
            "help": "validation metric that picks output_dir/best: val_kd (KD to the teacher "
            "at temperature 1, whatever the epoch's) or val_ce (lowest), val_rouge (highest; "
            "needs val_rouge on)"
        },
    )
    val_rouge: str = field(
        default="off",
        metadata={
            "help": "ROUGE-L of generated validation answers each epoch: off, greedy, or "
            "sampled (temperature 1, the paper's protocol)"
        },
    )
    val_rouge_rows: int | None = field(
        default=None, metadata={"help": "generate for only the first N validation rows"}
    )
    val_max_new_tokens: int = 256
    save_every_steps: int = field(
        default=0,
        metadata={"help": "also checkpoint every N optimiser steps (0: only at epoch ends)"},
    )
    on_policy_fraction: float = field(
        default=0.0,
        metadata={
            "help": "share of each micro-batch whose responses the student samples itself "
            "(on-policy GKD: 0.5 with objective jsd)"
        },
    )
    sampling_temperature: float = field(
        default=0.9,
        metadata={"help": "temperature of on-policy sampling (separate from distillation's)"},
    )
    max_new_tokens: int = field(default=128, metadata={"help": "length limit of on-policy samples"})
    lora_rank: int = field(
        default=0, metadata={"help": "LoRA rank on all attention and MLP linears (0: full)"}
    )
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    loss_impl: str = field(
        default="auto",
        metadata={
            "help": "full (both models' logits), chunked (fused head + loss over token "
            "chunks: never holds batch x length x vocab logits; a live teacher or a teacher "
            "cache) or auto (chunked where it applies: bias-free heads, no CE of on-policy "
            "samples, no FSDP/DeepSpeed; else full)"
        },
    )
    chunk_size: int = field(
        default=0,
        metadata={
            "help": "tokens per chunk of loss_impl chunked (0: automatic, on a CPU the most "
            "whose float32 logits fit 32 MiB, on a GPU 1024)"
        },
    )
    report_to: str = field(
        default="none", metadata={"help": "extra metric trackers: none, tensorboard, wandb, all"}
    )

    def __post_init__(self) -> None:
        get_objective(self.objective, **self.objective_params)  # validates name and parameters
        if not 0.0 <= self.on_policy_fraction <= 1.0:
            raise ValueError(f"on_policy_fraction={self.on_policy_fraction} must be in [0, 1]")
        if self.alpha is None:  # the paper's defaults: 0.3 off-policy, 0 on-policy
            object.__setattr__(self, "alpha", 0.0 if self.on_policy_fraction > 0 else 0.3)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be in [0, 1]")
        for name in ("epochs", "batch_size", "grad_accum", "log_every", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.temperature <= 0 or self.learning_rate <= 0:
            raise ValueError(
                f"temperature={self.temperature} and learning_rate={self.learning_rate} must be > 0"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.lr_schedule not in ("linear", "cosine", "constant"):
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} is not one of linear, cosine, constant"
            )
        if self.select_metric not in ("val_kd", "val_ce", "val_rouge"):
            raise ValueError(
                f"select_metric={self.select_metric!r} is not one of val_kd, val_ce, val_rouge"
            )
        if self.val_rouge not in ("off", "greedy", "sampled"):
            raise ValueError(f"val_rouge={self.val_rouge!r} is not one of off, greedy, sampled")
        if self.select_metric == "val_rouge" and self.val_rouge == "off":
            raise ValueError("select_metric=val_rouge needs val_rouge set to greedy or sampled")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"mixed_precision={self.mixed_precision!r} is not one of "
                f"{', '.join(MIXED_PRECISIONS)}"
            )
        if self.save_every_steps < 0 or self.lora_rank < 0 or self.chunk_size < 0:
            raise ValueError(
                f"save_every_steps={self.save_every_steps}, lora_rank={self.lora_rank} and "
                f"chunk_size={self.chunk_size} must be >= 0"
            )
        if self.sampling_temperature <= 0:
            raise ValueError(f"sampling_temperature={self.sampling_temperature} must be > 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"loss_impl={self.loss_impl!r} is not one of {', '.join(LOSS_IMPLS)}")
        if self.report_to not in TRACKERS:
            raise ValueError(f"report_to={self.report_to!r} is not one of {', '.join(TRACKERS)}")
        if self.loss_impl == "chunked" and self.on_policy_fraction > 0 and self.alpha > 0:
            raise ValueError(
                "loss_impl=chunked takes the CE of every row, also of the student's own samples; "
                "with on_policy_fraction > 0 set alpha=0 (the GKD default) or loss_impl=full"
            )
