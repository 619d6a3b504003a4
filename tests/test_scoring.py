"""The bucketed scorer against batch-of-one scoring and the model's own `labels=` loss, and its
kill-and-resume behaviour."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TokenExample
from conftest import random_token_examples as random_examples
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrumkd.batching import length_bucketed_batches
from spectrumkd.scoring import (
    ScoringSettings,
    read_difficulties,
    score_examples,
)

Ex = TokenExample


def test_bucketed_scores_equal_batch_of_one_and_the_models_own_loss(tiny_model):
    examples = random_examples(40, tiny_model.config.vocab_size)
    # The exact path: float32, as the model's own loss is computed.
    bucketed = score_examples(
        tiny_model,
        examples,
        settings=ScoringSettings(max_tokens_per_batch=512, precision="float32"),
        progress=False,
    )
    one_by_one = score_examples(
        tiny_model,
        examples,
        settings=ScoringSettings(max_batch_size=1, precision="float32"),
        progress=False,
    )
    assert bucketed.ids == one_by_one.ids == tuple(e.id for e in examples)
    np.testing.assert_allclose(bucketed.loss_mean, one_by_one.loss_mean, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(bucketed.tokens, one_by_one.tokens)
    for example, mean, tokens in zip(examples, bucketed.loss_mean, bucketed.tokens, strict=True):
        with torch.no_grad():
            reference = tiny_model(
                input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])
            ).loss.item()
        assert mean == pytest.approx(reference, abs=1e-4)
        assert tokens == sum(label != -100 for label in example.labels[1:])
    np.testing.assert_allclose(
        bucketed.difficulties("sum"), bucketed.loss_mean * bucketed.tokens, rtol=1e-12
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=200),
    st.integers(1, 2000),
    st.integers(1, 16),
)
def test_length_buckets_cover_every_example_once_within_budget(lengths, budget, max_batch):
    plan = length_bucketed_batches(
        lengths, ScoringSettings(max_tokens_per_batch=budget, max_batch_size=max_batch)
    )
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) <= max_batch
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= budget
    assert plan == length_bucketed_batches(
        lengths, ScoringSettings(max_tokens_per_batch=budget, max_batch_size=max_batch)
    )


def test_table_and_file_round_trip(tiny_model, tmp_path):
    examples = random_examples(12, tiny_model.config.vocab_size)
    table = score_examples(tiny_model, examples, out_dir=tmp_path, progress=False)
    ids, values = read_difficulties(tmp_path / "difficulties.jsonl")
    assert ids == list(table.ids)
    np.testing.assert_array_equal(values, table.loss_mean)


def test_rerun_with_another_model_is_refused(tiny_model, tmp_path):
    from conftest import build_tiny_llama

    examples = random_examples(6, tiny_model.config.vocab_size)
    score_examples(tiny_model, examples, out_dir=tmp_path, progress=False)
    other = build_tiny_llama(tiny_model.config.vocab_size, seed=1)
    with pytest.raises(ValueError, match=r"holds scores of a different run \(model changed\)"):
        score_examples(other, examples, out_dir=tmp_path, progress=False)


def test_examples_without_response_tokens_are_refused(tiny_model):
    with pytest.raises(ValueError, match="no response tokens.*'x'"):
        score_examples(tiny_model, [Ex("x", [5, 6, 7], [-100, -100, -100])], progress=False)


SCORING_SCRIPT = """
import json, sys, time, torch
from dataclasses import dataclass
from transformers import AutoModelForCausalLM
from spectrumkd.scoring import ScoringSettings, score_examples

@dataclass(frozen=True)
class Ex:
    id: str
    input_ids: list
    labels: list

model_dir, data_file, out_dir, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
if delay:
    model.register_forward_pre_hook(lambda *args: time.sleep(delay))
examples = [Ex(**row) for row in json.load(open(data_file))]
score_examples(model, examples, settings=ScoringSettings(max_batch_size=2, shard_batches=1), out_dir=out_dir, progress=False)
"""


def run_scoring(args: list[str], threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if threads is not None:  # float sums depend on the thread count: compare like with like
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-c", SCORING_SCRIPT, *args], env=env)


def test_killed_scoring_resumes_to_a_byte_identical_table(tiny_model_dir, tmp_path):
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    examples = random_examples(60, vocab, seed=3)
    data_file = tmp_path / "examples.json"
    data_file.write_text(json.dumps([e.__dict__ for e in examples]))

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = run_scoring([str(tiny_model_dir), str(data_file), str(killed), "0.2"])
    shards = killed / "shards"
    deadline = time.time() + 120
    while (
        len(list(shards.glob("shard-*.jsonl"))) < 3
        and time.time() < deadline
        and process.poll() is None
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before_resume = len(list(shards.glob("shard-*.jsonl")))
    assert 3 <= done_before_resume < 30, "the kill must land mid-run"
    assert not (killed / "difficulties.jsonl").exists()
    finished = {path: path.stat().st_mtime_ns for path in shards.glob("shard-*.jsonl")}

    assert run_scoring([str(tiny_model_dir), str(data_file), str(killed), "0"]).wait() == 0
    assert run_scoring([str(tiny_model_dir), str(data_file), str(clean), "0"]).wait() == 0
    assert (killed / "difficulties.jsonl").read_bytes() == (
        clean / "difficulties.jsonl"
    ).read_bytes()
    assert len(list(shards.glob("shard-*.jsonl"))) == 30
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items()), (
        "finished shards are reused"
    )


def test_logits_at_response_positions_equal_the_full_logits_path(tiny_model):
    from spectrumkd.data import collate
    from spectrumkd.scoring.scorer import _batch_losses, response_token_losses

    examples = random_examples(8, tiny_model.config.vocab_size, seed=5)
    inputs = collate(examples, pad_token_id=0)
    with torch.inference_mode():
        gathered = _batch_losses(tiny_model, inputs)
        logits = tiny_model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).logits
        full = response_token_losses(logits, inputs["labels"])
    assert logits.shape[1] == inputs["input_ids"].shape[1]  # the hook is removed afterwards
    torch.testing.assert_close(gathered[0], full[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(gathered[1], full[1])


DISTRIBUTED_SCRIPT = """
import json, sys, torch
import torch.distributed as dist
from dataclasses import dataclass
from transformers import AutoModelForCausalLM
from spectrumkd.scoring import ScoringSettings, score_examples

@dataclass(frozen=True)
class Ex:
    id: str
    input_ids: list
    labels: list

dist.init_process_group("gloo")
model_dir, data_file, out_dir = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
examples = [Ex(**row) for row in json.load(open(data_file))]
table = score_examples(model, examples, settings=ScoringSettings(max_batch_size=2, shard_batches=1), out_dir=out_dir, progress=False)
json.dump(table.loss_mean.tolist(), open(f"{out_dir}/rank{dist.get_rank()}.json", "w"))
dist.destroy_process_group()
"""


def test_two_processes_score_disjoint_shards_into_the_one_process_table(tiny_model_dir, tmp_path):
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    examples = random_examples(20, vocab, seed=4)
    data_file = tmp_path / "examples.json"
    data_file.write_text(json.dumps([e.__dict__ for e in examples]))
    script = tmp_path / "score_ddp.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]
    subprocess.run(
        [*command, str(script), str(tiny_model_dir), str(data_file), str(two)],
        env=env,
        check=True,
        timeout=300,
    )
    assert (
        run_scoring(
            [str(tiny_model_dir), str(data_file), str(tmp_path / "one"), "0"], threads=1
        ).wait()
        == 0
    )
    assert (two / "difficulties.jsonl").read_bytes() == (
        tmp_path / "one" / "difficulties.jsonl"
    ).read_bytes()
    assert json.loads((two / "rank0.json").read_text()) == json.loads(
        (two / "rank1.json").read_text()
    )
    assert (
        len(list((two / "shards").glob("shard-*.jsonl"))) == 10
    )  # each shard scored once, by one rank


def test_examples_longer_than_the_models_positions_are_refused(tiny_model):
    too_long = random_examples(1, tiny_model.config.vocab_size)[0]
    ids = too_long.input_ids * 100  # far past max_position_embeddings = 1024
    with pytest.raises(ValueError, match="model handles 1024 positions; lower --max-length"):
        score_examples(tiny_model, [Ex("long", ids, [-100] + ids[1:])], progress=False)


def test_a_model_reloaded_from_disk_keeps_its_fingerprint(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from spectrumkd.scoring.scorer import model_fingerprint

    tiny_model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model_fingerprint(reloaded) == model_fingerprint(tiny_model)
    reloaded.model.norm.weight.data[0] += 1e-3
    assert model_fingerprint(reloaded) != model_fingerprint(tiny_model)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda lines: lines[1:], id="lost-a-line"),
        pytest.param(lambda lines: [], id="zero-bytes"),
        pytest.param(
            lambda lines: [*lines[:-1], lines[-1][: len(lines[-1]) // 2]], id="cut-mid-line"
        ),
        pytest.param(lambda lines: [*lines, lines[0]], id="duplicated-line"),
        pytest.param(
            lambda lines: [lines[0].replace(b'"tokens": ', b'"tokens": 1'), *lines[1:]],
            id="wrong-token-count",
        ),
        pytest.param(lambda lines: [b"\xff\xfe not text", *lines[1:]], id="not-utf8"),
    ],
)
def test_a_short_empty_or_corrupt_shard_is_rescored_with_a_warning(
    tiny_model, tmp_path, caplog, damage
):
    examples = random_examples(12, tiny_model.config.vocab_size, seed=5)
    settings = ScoringSettings(max_batch_size=2, shard_batches=1)
    score_examples(tiny_model, examples, settings=settings, out_dir=tmp_path, progress=False)
    expected = (tmp_path / "difficulties.jsonl").read_bytes()
    shards = sorted((tmp_path / "shards").glob("shard-*.jsonl"))
    assert len(shards) == 6
    damaged, intact = shards[2], shards[3]
    good = damaged.read_bytes()
    damaged.write_bytes(b"".join(line + b"\n" for line in damage(good.splitlines())))
    untouched = intact.stat().st_mtime_ns

    with caplog.at_level("WARNING", logger="spectrumkd.scoring.scorer"):
        table = score_examples(
            tiny_model, examples, settings=settings, out_dir=tmp_path, progress=False
        )
    assert table.ids == tuple(e.id for e in examples)  # every example once, none lost
    assert (tmp_path / "difficulties.jsonl").read_bytes() == expected
    assert damaged.read_bytes() == good  # rescored into the same rows
    assert intact.stat().st_mtime_ns == untouched  # the sound shards are reused
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and damaged.name in warnings[0] and "rescoring" in warnings[0]


def test_an_unreadable_shard_manifest_is_one_line_naming_it(tiny_model, tmp_path):
    examples = random_examples(4, tiny_model.config.vocab_size)
    score_examples(tiny_model, examples, out_dir=tmp_path, progress=False)
    (tmp_path / "shards" / "manifest.json").write_text('{"model": ')
    with pytest.raises(ValueError, match=r"manifest\.json.*delete") as error:
        score_examples(tiny_model, examples, out_dir=tmp_path, progress=False)
    assert "\n" not in str(error.value)


class AutocastProbe:
    """Records, at each forward of a model, whether CPU autocast is on and in which dtype."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seen: set[tuple[bool, torch.dtype]] = set()
        self._handle = model.register_forward_pre_hook(self._record)

    def _record(self, module, args) -> None:
        self.seen.add((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))

    def remove(self) -> None:
        self._handle.remove()


def test_bf16_scores_are_within_tolerance_of_float32_and_float32_runs_no_autocast(tiny_model):
    examples = random_examples(40, tiny_model.config.vocab_size)
    probe = AutocastProbe(tiny_model)
    try:
        exact = score_examples(
            tiny_model, examples, settings=ScoringSettings(precision="float32"), progress=False
        )
        assert {enabled for enabled, _ in probe.seen} == {False}
        probe.seen.clear()
        mixed = score_examples(
            tiny_model, examples, settings=ScoringSettings(precision="bf16"), progress=False
        )
        assert probe.seen == {(True, torch.bfloat16)}
    finally:
        probe.remove()
    difference = np.abs(mixed.loss_mean - exact.loss_mean)
    # The stated tolerance: 0.01 nats per token (measured here: max 7e-4, mean 2.4e-4, on losses
    # near 6.2); the cross-entropy is float32 in both, only the forward's matmuls are bf16.
    assert difference.max() < 0.01
    assert difference.max() > 0  # the bf16 forward really ran
    np.testing.assert_array_equal(mixed.tokens, exact.tokens)


def test_precision_decides_shard_reuse(tiny_model, tmp_path):
    examples = random_examples(6, tiny_model.config.vocab_size)
    score_examples(
        tiny_model,
        examples,
        settings=ScoringSettings(precision="bf16"),
        out_dir=tmp_path / "bf16",
        progress=False,
    )
    manifest = json.loads((tmp_path / "bf16" / "shards" / "manifest.json").read_text())
    assert manifest["settings"]["precision"] == "bf16"
    with pytest.raises(ValueError, match=r"different run \(settings changed\)"):
        score_examples(
            tiny_model,
            examples,
            settings=ScoringSettings(precision="float32"),
            out_dir=tmp_path / "bf16",
            progress=False,
        )
    # A float32 manifest is the one of the versions before mixed precision (no precision key),
    # so their finished float32 shards are still reused.
    score_examples(
        tiny_model,
        examples,
        settings=ScoringSettings(precision="float32"),
        out_dir=tmp_path / "fp32",
        progress=False,
    )
    manifest = json.loads((tmp_path / "fp32" / "shards" / "manifest.json").read_text())
    assert "precision" not in manifest["settings"]
    assert set(manifest["settings"]) == {"max_tokens_per_batch", "max_batch_size", "shard_batches"}


def test_precision_is_resolved_for_the_device_and_bad_names_are_refused():
    from spectrumkd.models.precision import has_fast_bf16

    auto = ScoringSettings().resolved(torch.device("cpu"))
    assert auto.precision == ("bf16" if has_fast_bf16("cpu") else "float32")
    assert ScoringSettings(precision="no").resolved(torch.device("cpu")).precision == "float32"
    with pytest.raises(ValueError, match="precision='half' is not one of"):
        ScoringSettings(precision="half")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        ScoringSettings(precision="fp16").resolved(torch.device("cpu"))


def test_two_forked_workers_score_the_one_process_table_and_resume_after_a_failure(
    tiny_model, tmp_path, monkeypatch
):
    """workers=2 (forked one-thread processes, each every other shard) gives the table of one
    one-thread process; a worker that fails fails the call in one line, and a rerun reuses the
    shards that were finished."""
    from spectrumkd.scoring import scorer

    examples = random_examples(40, tiny_model.config.vocab_size, seed=11)
    batching = ScoringSettings(max_batch_size=2, shard_batches=1, precision="float32")
    one = score_examples(
        tiny_model, examples, settings=batching, out_dir=tmp_path / "one", progress=False, workers=1
    )
    two = score_examples(
        tiny_model, examples, settings=batching, out_dir=tmp_path / "two", progress=False, workers=2
    )
    assert two.loss_sum.tolist() == one.loss_sum.tolist() and two.ids == one.ids
    assert (tmp_path / "two" / "difficulties.jsonl").read_bytes() == (
        tmp_path / "one" / "difficulties.jsonl"
    ).read_bytes()

    parent, real = os.getpid(), scorer._score_batch

    def fails_in_the_worker(*args, **kwargs):
        if os.getpid() != parent:
            raise RuntimeError("out of luck")
        return real(*args, **kwargs)

    monkeypatch.setattr(scorer, "_score_batch", fails_in_the_worker)
    folder = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="scoring worker 1 failed"):
        score_examples(
            tiny_model, examples, settings=batching, out_dir=folder, progress=False, workers=2
        )
    finished = {path: path.stat().st_mtime_ns for path in (folder / "shards").glob("shard-*")}
    assert finished and not (folder / "difficulties.jsonl").exists()  # share 0 was written
    monkeypatch.setattr(scorer, "_score_batch", real)
    again = score_examples(
        tiny_model, examples, settings=batching, out_dir=folder, progress=False, workers=2
    )
    assert again.loss_sum.tolist() == one.loss_sum.tolist()
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items())


def test_score_in_workers_runs_one_thread_a_process_and_reports_every_shares_tokens_here():
    """Each process scores on one torch thread (a forked child starting its own thread pool
    hangs in GNU OpenMP), and the workers' progress reaches the parent's callback."""
    from spectrumkd.scoring.workers import score_in_workers

    def share(index, advance):
        if torch.get_num_threads() != 1:
            raise AssertionError(f"share {index} ran on {torch.get_num_threads()} threads")
        for _ in range(3):
            advance(10 + index)

    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        torch.randn(256, 256).exp().sum()  # the parent's thread pool in use before the fork
        seen: list[int] = []
        score_in_workers(share, 2, seen.append)
        assert sum(seen) == 3 * (10 + 11)
        assert torch.get_num_threads() == 4  # given back
    finally:
        torch.set_num_threads(threads)
