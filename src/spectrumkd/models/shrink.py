"""Deriving a student from a teacher by keeping a subset of its decoder blocks.

A student cut from the teacher shares its tokenizer by construction (so white-box KD applies)
and starts close to it, which makes distillation cheap. Which blocks to keep is measured on a
few calibration batches (dicts with ``input_ids``, ``attention_mask`` and ``labels``, prompt
tokens labelled -100):

* ``block_influence`` (ShortGPT, Men et al. 2024): BI_i = 1 - mean cos(h_in_i, h_out_i) over real
  tokens; a block that barely rotates its input does little and is dropped first. One forward
  pass for all blocks.
* ``removal_loss``: the model's response-token loss with block i skipped; the blocks whose
  removal hurts least are dropped first. One forward pass per block.

Both produce scores where higher means more important; :func:`choose_layers` keeps the best ones.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from spectrumkd.io import write_json

METHODS = ("block_influence", "removal_loss")
REPORT_NAME = "shrink_report.json"
_LAYER_LIST_NAMES = ("layers", "h", "blocks", "block", "layer")


# --------------------------------------------------------------------------------------------
# Finding and cutting the decoder blocks
# --------------------------------------------------------------------------------------------


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The qualified name and the ``ModuleList`` of the model's decoder blocks.

    That is the ModuleList whose length equals ``config.num_hidden_layers``: ``model.layers`` for
    Llama/Qwen2/Mistral, ``transformer.h`` for GPT-2.
    """
    num_layers = getattr(_text_config(model), "num_hidden_layers", None)
    if num_layers is None:
        raise ValueError(f"{type(model).__name__}: config has no num_hidden_layers")
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == num_layers
        and len({type(block) for block in module}) == 1
        and any(True for _ in module[0].parameters())
    ]
    if not candidates:
        raise ValueError(
            f"{type(model).__name__}: found no ModuleList of {num_layers} blocks "
            f"(config.num_hidden_layers) to treat as the decoder layers"
        )
    named = [c for c in candidates if c[0].rsplit(".", 1)[-1] in _LAYER_LIST_NAMES]
    return (named or candidates)[0]


def _validate_keep(keep_layers: Sequence[int], num_layers: int) -> list[int]:
    keep = list(keep_layers)
    if not keep:
        raise ValueError("keep_layers is empty; keep at least one decoder layer")
    bad_type = [k for k in keep if isinstance(k, bool) or not isinstance(k, int)]
    if bad_type:
        raise ValueError(f"keep_layers must hold layer indices (ints); got {bad_type}")
    out_of_range = [k for k in keep if not 0 <= k < num_layers]
    if out_of_range:
        raise ValueError(
            f"keep_layers {out_of_range} out of range: the model has {num_layers} layers "
            f"(0..{num_layers - 1})"
        )
    duplicates = sorted({k for k in keep if keep.count(k) > 1})
    if duplicates:
        raise ValueError(f"keep_layers repeats {duplicates}; list each layer once")
    if keep != sorted(keep):
        raise ValueError(f"keep_layers {keep} is not sorted; use {sorted(keep)}")
    return keep


def shrink_model(model: PreTrainedModel, keep_layers: Sequence[int]) -> PreTrainedModel:
    """A new model holding only the decoder blocks ``keep_layers`` of ``model``, renumbered.

    Everything else (embeddings, final norm, LM head, generation config, dtype, device) is copied.
    The result is an ordinary model of the same class: its blocks carry their new ``layer_idx``, so
    the KV cache and ``generate()`` work, and ``save_pretrained`` / ``from_pretrained`` round-trip.
    """
    prefix, layers = find_decoder_layers(model)
    keep = _validate_keep(keep_layers, len(layers))
    renumber = {old: new for new, old in enumerate(keep)}

    config = copy.deepcopy(model.config)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    text_config.num_hidden_layers = len(keep)
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None:
        text_config.layer_types = [layer_types[i] for i in keep]

    first = next(model.parameters())
    student = type(model)._from_config(config, dtype=first.dtype)

    state: dict[str, torch.Tensor] = {}
    block_prefix = prefix + "."
    for key, value in model.state_dict().items():
        if key.startswith(block_prefix):
            index, _, rest = key[len(block_prefix) :].partition(".")
            old = int(index)
            if old in renumber:
                state[f"{block_prefix}{renumber[old]}.{rest}"] = value
        else:
            state[key] = value
    student.load_state_dict(state, strict=True)
    student.to(first.device)
    if getattr(model, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(model.generation_config)
    student.train(model.training)
    return student


# --------------------------------------------------------------------------------------------
# Measuring blocks on calibration batches
# --------------------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    input_ids = torch.as_tensor(batch["input_ids"]).to(device)
    attention_mask = batch.get("attention_mask")
    attention_mask = (
        torch.ones_like(input_ids)
        if attention_mask is None
        else torch.as_tensor(attention_mask).to(device)
    )
    labels = batch.get("labels")
    if labels is None:  # no labels: every real token is a target
        labels = input_ids.masked_fill(attention_mask == 0, -100)
    else:
        labels = torch.as_tensor(labels).to(device)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class _EvalMode:
    """Eval mode and no autograd for the duration of a measurement; restores train mode after."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.was_training = model.training
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def _loss_sums(model: nn.Module, batches: Sequence[dict[str, Any]]) -> tuple[float, int]:
    total, count = 0.0, 0
    device = _device(model)
    for batch in batches:
        inputs = _model_inputs(batch, device)
        # The models' loss shifts labels one step left: position t predicts token t+1.
        tokens = int((inputs["labels"][:, 1:] != -100).sum())
        if tokens == 0:
            continue
        out = model(**inputs, use_cache=False)
        total += float(out.loss) * tokens
        count += tokens
    return total, count


def calibration_loss(model: nn.Module, batches: Iterable[dict[str, Any]]) -> float:
    """Mean cross-entropy per response token (labels != -100) over all batches.

    Each batch's loss comes from the model's own ``labels=`` loss, weighted by its number of
    response tokens, so the result is the token-level mean whatever the batch sizes.
    """
    batches = list(batches)
    with _EvalMode(model):
        total, count = _loss_sums(model, batches)
    if count == 0:
        raise ValueError("the calibration batches hold no response tokens (every label is -100)")
    return total / count


def _hidden_in(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise ValueError("could not find the hidden states among a decoder block's inputs")


def _hidden_out(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output[0]  # tuple-returning blocks (older transformers, GPT-2 style)


def block_influence(model: nn.Module, batches: Iterable[dict[str, Any]]) -> list[float]:
    """ShortGPT's Block Influence per decoder block: 1 - mean cos(h_in, h_out) over real tokens.

    The block inputs and outputs are captured with forward hooks on the blocks themselves
    (``output_hidden_states``' last entry is taken after the final norm, so it cannot serve).
    Padding positions (attention_mask == 0) are left out; the mean is over all real tokens of all
    batches. Near 0: the block barely changes the residual stream.
    """
    batches = list(batches)
    _, layers = find_decoder_layers(model)
    sums = [0.0] * len(layers)
    counts = [0] * len(layers)
    state: dict[str, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(module, args, kwargs, output):
            h_in, h_out = _hidden_in(args, kwargs), _hidden_out(output)
            cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            mask = state["mask"]
            sums[index] += float(cos[mask].sum())
            counts[index] += int(mask.sum())

        return hook

    handles = [
        layer.register_forward_hook(make_hook(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    device = _device(model)
    try:
        with _EvalMode(model):
            for batch in batches:
                inputs = _model_inputs(batch, device)
                state["mask"] = inputs["attention_mask"].bool()
                model(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    use_cache=False,
                )
    finally:
        for handle in handles:
            handle.remove()
    if not counts or counts[0] == 0:
        raise ValueError("the calibration batches hold no real tokens")
    return [1.0 - s / c for s, c in zip(sums, counts, strict=True)]


class _SkippedBlock(nn.Module):
    """Stands in for a decoder block and returns its input unchanged, in the block's output form.

    Plain attributes of the original (``attention_type``, ``layer_idx``...) are copied, since
    some models read them off each block in their forward loop.
    """

    def __init__(self, original: nn.Module, tuple_length: int | None):
        super().__init__()
        self.tuple_length = tuple_length
        for name, value in vars(original).items():
            if not name.startswith("_") and isinstance(value, (str, int, float, bool)):
                setattr(self, name, value)

    def forward(self, *args, **kwargs):
        hidden = _hidden_in(args, kwargs)
        if self.tuple_length is None:
            return hidden
        return (hidden,) + (None,) * (self.tuple_length - 1)


def _output_forms(
    model: nn.Module, layers: nn.ModuleList, batch: dict[str, Any]
) -> list[int | None]:
    """Per block: None when it returns a tensor, else the length of the tuple it returns."""
    forms: list[int | None] = [None] * len(layers)

    def make_hook(index: int):
        def hook(module, args, output):
            forms[index] = None if isinstance(output, torch.Tensor) else len(output)

        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        inputs = _model_inputs(batch, _device(model))
        length = min(inputs["input_ids"].shape[1], 8)
        model(
            input_ids=inputs["input_ids"][:1, :length],
            attention_mask=torch.ones_like(inputs["input_ids"][:1, :length]),
            use_cache=False,
        )
    finally:
        for handle in handles:
            handle.remove()
    return forms


def removal_loss(model: nn.Module, batches: Iterable[dict[str, Any]]) -> list[float]:
    """The calibration loss (see :func:`calibration_loss`) with each single block skipped.

    Entry i is the model's mean response-token loss when block i is replaced by an identity;
    a high value means the model needs that block. The raw losses are returned (compare them to
    ``calibration_loss(model, batches)`` for the damage each removal does).
    """
    batches = list(batches)
    if not batches:
        raise ValueError("no calibration batches")
    _, layers = find_decoder_layers(model)
    losses: list[float] = []
    with _EvalMode(model):
        forms = _output_forms(model, layers, batches[0])
        for index in range(len(layers)):
            original = layers[index]
            layers[index] = _SkippedBlock(original, forms[index])
            try:
                total, count = _loss_sums(model, batches)
            finally:
                layers[index] = original
            if count == 0:
                raise ValueError(
                    "the calibration batches hold no response tokens (every label is -100)"
                )
            losses.append(total / count)
    return losses


def choose_layers(
    scores: Sequence[float], num_keep: int, *, keep_first: bool = True, keep_last: bool = True
) -> list[int]:
    """The ``num_keep`` layers with the highest scores (the least important are dropped), sorted.

    The first and last blocks are kept whatever their scores unless ``keep_first`` /
    ``keep_last`` is False: block influence underrates the last block, and dropping SmolLM2's last
    block is fatal. A NaN score counts as most important. Ties keep the earlier layer.
    """
    num_layers = len(scores)
    if not 1 <= num_keep <= num_layers:
        raise ValueError(
            f"num_keep must be between 1 and {num_layers} (the number of scores); got {num_keep}"
        )
    forced = set()
    if keep_first:
        forced.add(0)
    if keep_last:
        forced.add(num_layers - 1)
    if len(forced) > num_keep:
        raise ValueError(
            f"num_keep={num_keep} cannot keep both the first and the last layer; keep 2 or more, "
            f"or pass keep_first=False / keep_last=False"
        )
    clean = [math.inf if math.isnan(float(s)) else float(s) for s in scores]
    rest = sorted((i for i in range(num_layers) if i not in forced), key=lambda i: (-clean[i], i))
    return sorted(forced | set(rest[: num_keep - len(forced)]))


# --------------------------------------------------------------------------------------------
# The whole step
# --------------------------------------------------------------------------------------------


@dataclass
class ShrinkReport:
    keep_layers: list[int]
    method: str
    scores: list[float] | None
    teacher_loss: float
    student_loss: float
    num_layers_teacher: int
    out_dir: str | None

    def summary(self) -> str:
        kept = len(self.keep_layers)
        dropped = [i for i in range(self.num_layers_teacher) if i not in set(self.keep_layers)]
        text = (
            f"kept {kept}/{self.num_layers_teacher} layers by {self.method} (dropped {dropped}); "
            f"calibration loss {self.teacher_loss:.4f} (teacher) -> {self.student_loss:.4f} (student)"
        )
        return text + (f"; saved to {self.out_dir}" if self.out_dir else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shrink(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    calibration_batches: Iterable[dict[str, Any]],
    *,
    keep_layers: Sequence[int] | None = None,
    num_layers: int | None = None,
    method: str = "block_influence",
    out_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, ShrinkReport]:
    """Derive a student keeping ``keep_layers`` or the ``num_layers`` most important blocks.

    Exactly one of ``keep_layers`` / ``num_layers``. With ``num_layers``, the blocks are scored by
    ``method`` ("block_influence" or "removal_loss") on the calibration batches and chosen by
    :func:`choose_layers`. The teacher's and the student's calibration losses are reported. With
    ``out_dir``, the student, the tokenizer (required then) and ``shrink_report.json`` are saved
    there, loadable with ``AutoModelForCausalLM`` and ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    if (keep_layers is None) == (num_layers is None):
        raise ValueError(
            "pass exactly one of keep_layers (explicit indices) or num_layers (a count)"
        )
    if out_dir is not None and tokenizer is None:
        raise ValueError(
            f"saving the student to {out_dir} needs the tokenizer (a saved student is a "
            "complete from_pretrained folder); pass the teacher's"
        )
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("no calibration batches")
    _, layers = find_decoder_layers(teacher)
    scores: list[float] | None = None
    if keep_layers is not None:
        keep = _validate_keep(keep_layers, len(layers))
        method = "manual"
    else:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        score_fn = block_influence if method == "block_influence" else removal_loss
        scores = score_fn(teacher, batches)
        keep = choose_layers(scores, num_layers)
    student = shrink_model(teacher, keep)
    report = ShrinkReport(
        keep_layers=keep,
        method=method,
        scores=scores,
        teacher_loss=calibration_loss(teacher, batches),
        student_loss=calibration_loss(student, batches),
        num_layers_teacher=len(layers),
        out_dir=str(out_dir) if out_dir is not None else None,
    )
    if out_dir is not None:
        _save_atomically(student, tokenizer, report, Path(out_dir))
    return student, report


def _save_atomically(
    student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, report: ShrinkReport, out: Path
) -> None:
    """Write the student beside ``out`` and rename it into place, so a killed save never leaves
    a folder that loads as a complete student (the report, written last, marks completion)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes a private folder; the student is not secret
    try:
        student.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json(staging / REPORT_NAME, report.to_dict())
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
