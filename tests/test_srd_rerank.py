"""SRD's optional re-ranking between stages (spec siblings.md section 3) in the distill job, on
tiny models: off, the static plan as before; on, each later stage is cut from the order of the
student's cross-entropy measured after the stage before (checked against an independent
``score_examples``), the first stage is the static plan's, and a run killed in stage 2 resumes
to the weights of an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_jobs import rows_file, tiny_pair  # noqa: F401 - the fixtures

from spectrumkd import jobs
from spectrumkd.curation import SRDConfig, build_strategy
from spectrumkd.distillation import RunConfig
from spectrumkd.io import read_jsonl
from spectrumkd.models import load_model
from spectrumkd.scoring import score_examples

SRD_SETTINGS = {"strategy": "srd", "metric": "ce_mean", "epochs_per_stage": 1}


def run_config(tmp_path, pair, rows, name: str, **curation) -> RunConfig:
    teacher, student = pair
    return RunConfig.from_dict(
        {
            "teacher": str(teacher),
            "student": str(student),
            "output_dir": str(tmp_path / name),
            "data": {"source": str(rows), "max_length": 128, "validation_ratio": 0.25},
            # a learning rate that moves the tiny student's ranking within a stage
            "train": {"epochs": 1, "batch_size": 2, "log_every": 1, "learning_rate": 2e-3},
            "curation": {**SRD_SETTINGS, **curation},
            "device": "cpu",
        }
    )


def schedule(folder) -> dict:
    return json.loads((folder / "schedule.json").read_text())


def final_weights(folder) -> list[torch.Tensor]:
    return list(load_model(folder / "final").state_dict().values())


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_off_the_plan_and_the_run_are_the_static_srds(tmp_path, tiny_pair, rows_file):  # noqa: F811
    assert SRDConfig().rerank_between_stages is False
    plain = run_config(tmp_path, tiny_pair, rows_file, "plain")
    off = run_config(tmp_path, tiny_pair, rows_file, "off", rerank_between_stages=False)
    states = [jobs.distill(r, progress=False) for r in (plain, off)]
    assert schedule(tmp_path / "plain") == schedule(tmp_path / "off")
    assert "rerank_between_stages" not in schedule(tmp_path / "off")["settings"]
    assert not (tmp_path / "off" / "stages").exists()
    assert states[0]["plan"] == states[1]["plan"]
    # The plan is the strategy's on the untrained student's CE, as the static SRD always made.
    scored = list(read_jsonl(tmp_path / "off" / "scores" / "difficulties.jsonl"))
    expected = build_strategy("srd", {"epochs_per_stage": 1}).plan(
        [r["id"] for r in scored], [r["difficulty"] for r in scored]
    )
    assert schedule(tmp_path / "off") == json.loads(json.dumps(expected.to_dict()))
    assert_same(final_weights(tmp_path / "plain"), final_weights(tmp_path / "off"))


def test_on_later_stages_follow_the_partly_trained_students_order(
    tmp_path,
    tiny_pair,  # noqa: F811
    rows_file,  # noqa: F811
):
    run = run_config(tmp_path, tiny_pair, rows_file, "rr", rerank_between_stages=True)
    state = jobs.distill(run, progress=False)
    out = tmp_path / "rr"
    trained = schedule(out)
    static = build_strategy("srd", {"epochs_per_stage": 1}).plan(
        *zip(
            *[
                (r["id"], r["difficulty"])
                for r in read_jsonl(out / "scores" / "difficulties.jsonl")
            ],
            strict=True,
        )
    )
    inputs = jobs.load_distill_inputs(run)
    sizes = [len(e.ids) for e in static.epochs]
    assert sizes == [2, 4, 6]  # 9 training rows, rho 0.75: 6 kept in 3 stages
    # (c) stage 1 is the static plan's
    assert trained["epochs"][0]["ids"] == list(static.epochs[0].ids)
    # (b) stage s + 1 is the first examples of the order by the CE of stage s's student,
    # measured here by the scorer itself
    for stage in (1, 2):
        student = load_model(out / "stages" / f"stage-{stage}" / "final")
        table = score_examples(
            student,
            inputs.train_examples,
            pad_token_id=inputs.tokenizer.pad_token_id,
            progress=False,
        )
        order = [table.ids[i] for i in np.argsort(table.loss_mean, kind="stable")]
        assert trained["epochs"][stage]["ids"] == order[: sizes[stage]]
    # the re-ranking changed what a later stage trains on, not only the order within it
    assert any(
        set(e["ids"]) != set(s.ids) for e, s in zip(trained["epochs"], static.epochs, strict=True)
    )
    assert [r["before_stage"] for r in trained["reranking"]] == [2, 3]
    assert trained["reranked_at"] == [2, 3]
    assert trained["settings"]["rerank_between_stages"] is True
    # the run's files where distill puts them, the final student the last stage's
    assert_same(final_weights(out), final_weights(out / "stages" / "stage-3"))
    rows = list(read_jsonl(out / "metrics.jsonl"))
    assert [r["step"] for r in rows if "kd" in r] == list(range(1, 1 + 1 + 2 + 3))
    assert (state["epoch"], state["step"]) == (3, 6)
    assert (out / "best").is_dir() and state["best"]["stage"] in (1, 2, 3)


def test_a_run_killed_in_stage_2_resumes_to_the_uninterrupted_weights(
    tmp_path,
    tiny_pair,  # noqa: F811
    rows_file,  # noqa: F811
    monkeypatch,
):
    import spectrumkd.distillation.trainer as trainer

    settings = {"rerank_between_stages": True, "epochs_per_stage": 2}
    clean = run_config(tmp_path, tiny_pair, rows_file, "clean", **settings)
    jobs.distill(clean, progress=False)

    killed = run_config(tmp_path, tiny_pair, rows_file, "killed", **settings)
    real_epoch = trainer.train_epoch
    trained: list[tuple[str, int]] = []

    def dying_epoch(run, state, epoch, bar):
        if run.output.name == "stage-2" and epoch == 2:
            raise KeyboardInterrupt("killed in stage 2")
        return real_epoch(run, state, epoch, bar)

    def counted_epoch(run, state, epoch, bar):
        trained.append((run.output.name, epoch))
        return real_epoch(run, state, epoch, bar)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "train_epoch", dying_epoch)
        with pytest.raises(KeyboardInterrupt):
            jobs.distill(killed, progress=False)
    stage2 = tmp_path / "killed" / "stages" / "stage-2"
    assert json.loads((stage2 / "checkpoint" / "trainer_state.json").read_text())["epoch"] == 1
    assert not (stage2 / "stage.json").exists()

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "train_epoch", counted_epoch)
        state = jobs.distill(killed, progress=False)
    # stage 1 reused, stage 2 resumed after its first epoch, stage 3 trained
    assert trained == [("stage-2", 2), ("stage-3", 1), ("stage-3", 2)]
    assert state["epoch"] == 6
    assert schedule(tmp_path / "clean") == schedule(tmp_path / "killed")
    assert_same(final_weights(tmp_path / "clean"), final_weights(tmp_path / "killed"))


def test_the_setting_is_srds_alone_and_needs_a_metric(tmp_path, tiny_pair, rows_file):  # noqa: F811
    with pytest.raises(ValueError, match="unknown curation setting.*rerank_between_stages"):
        run_config(
            tmp_path,
            tiny_pair,
            rows_file,
            "x",
            strategy="pocl",
            metric=None,
            rerank_between_stages=True,
        )
    with pytest.raises(ValueError, match="rerank_between_stages='yes' must be true or false"):
        SRDConfig(rerank_between_stages="yes")
    table = tmp_path / "d.jsonl"
    table.write_text(
        "".join(json.dumps({"id": f"{i:06d}", "difficulty": i}) + "\n" for i in range(12))
    )
    run = run_config(
        tmp_path,
        tiny_pair,
        rows_file,
        "t",
        metric=None,
        difficulties=str(table),
        rerank_between_stages=True,
    )
    with pytest.raises(ValueError, match="rerank_between_stages rescores.*difficulties table"):
        jobs.distill(run, progress=False)
