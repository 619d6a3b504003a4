"""The command line, end to end on small inputs: exit codes, files and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from spectrumkd.cli import main
from spectrumkd.cli.shrink import parse_layers


def write_difficulties(path, n=50, seed=0):
    values = np.random.default_rng(seed).lognormal(1, 0.5, n)
    path.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "difficulty": float(v)}) + "\n" for i, v in enumerate(values)
        )
    )
    return {f"q{i}": float(v) for i, v in enumerate(values)}


def test_curate_writes_the_schedule_the_issue_specifies(tmp_path, capsys):
    difficulties = write_difficulties(tmp_path / "d.jsonl")
    code = main(
        [
            "curate",
            "--difficulties",
            str(tmp_path / "d.jsonl"),
            "--epochs",
            "6",
            "--warmup",
            "2",
            "--lambda-a",
            "0.1",
            "--lambda-b",
            "0.2",
            "--tau-start",
            "1",
            "--tau-end",
            "3",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    schedule = json.loads((tmp_path / "out" / "schedule.json").read_text())
    assert [e["epoch"] for e in schedule["epochs"]] == [1, 2, 3, 4, 5, 6]
    # N=50: E=5, X=10, N'=40, M=35
    for epoch in schedule["epochs"]:
        assert epoch["window_end_rank"] - epoch["window_start_rank"] + 1 == len(epoch["ids"]) == 35
        assert epoch["total_difficulty"] == pytest.approx(
            sum(difficulties[i] for i in epoch["ids"])
        )
    assert [e["temperature"] for e in schedule["epochs"]] == pytest.approx(
        [1.0, 1.4, 1.8, 2.2, 2.6, 3.0]
    )
    assert (
        schedule["epochs"][0]["window_start_rank"] == 1
        and schedule["epochs"][-1]["window_start_rank"] == 6
    )
    zones = schedule["zones"]
    assert [zones[z]["size"] for z in ("early", "continuous", "late", "excluded")] == [5, 30, 5, 10]
    hardest = sorted(difficulties, key=difficulties.get)[-10:]
    assert sorted(zones["excluded"]["ids"]) == sorted(hardest)
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "spectrum.jsonl").read_text().splitlines()
    ]
    assert [r["rank"] for r in rows] == list(range(1, 51))
    assert "epoch" in capsys.readouterr().out


def test_curate_step_parity_sets_the_epochs(tmp_path):
    write_difficulties(tmp_path / "d.jsonl", n=100)
    assert (
        main(
            [
                "curate",
                "--difficulties",
                str(tmp_path / "d.jsonl"),
                "--baseline-epochs",
                "20",
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 0
    )
    schedule = json.loads((tmp_path / "o" / "schedule.json").read_text())
    assert len(schedule["epochs"]) == 25  # 20 * 100 / 80
    assert schedule["config"]["epochs"] == 25


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lambda-a", "0.5", "--lambda-b", "0.1"], "lambda_a=0.5, lambda_b=0.1"),
        (["--epochs", "3", "--warmup", "3"], "warmup_epochs=3 must be smaller than epochs=3"),
        (["--epochs", "5", "--baseline-epochs", "4"], "not both"),
    ],
)
def test_curate_refuses_bad_values_in_one_line(tmp_path, capsys, extra, message):
    write_difficulties(tmp_path / "d.jsonl")
    assert (
        main(
            [
                "curate",
                "--difficulties",
                str(tmp_path / "d.jsonl"),
                "--out",
                str(tmp_path / "o"),
                *extra,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "schedule.json").exists()


def test_curate_names_bad_rows_and_missing_files(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text(
        '{"id": "a", "difficulty": 1.0}\n{"id": "b", "loss": 2.0}\n'
    )
    assert (
        main(
            ["curate", "--difficulties", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "row 2 needs fields 'id' and 'difficulty'" in capsys.readouterr().err
    assert (
        main(
            ["curate", "--difficulties", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "nan.jsonl").write_text(
        '{"id": "a", "difficulty": NaN}\n{"id": "b", "difficulty": 1}\n'
    )
    assert (
        main(
            ["curate", "--difficulties", str(tmp_path / "nan.jsonl"), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "nan.jsonl: row 1 ('a'): difficulty=nan is not finite" in capsys.readouterr().err


def dolly_like_file(path, n=24):
    rows = [
        {
            "instruction": f"Say the number {i} in words.",
            "input": "",
            "output": f"The number is {i}, written out.",
        }
        for i in range(n)
    ]
    rows[3]["output"] = "far too long for the limit " * 40  # dropped by --max-length, and counted
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_score_cli_on_a_tiny_model_resumes_to_identical_files(tmp_path, tiny_model_dir):
    dolly_like_file(tmp_path / "train.jsonl")
    argv = [
        "score",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(tmp_path / "train.jsonl"),
        "--out",
        str(tmp_path / "s"),
        "--max-length",
        "120",
        "--batch-tokens",
        "256",
        "--quiet",
    ]
    assert main(argv) == 0
    first = (tmp_path / "s" / "spectrum.jsonl").read_bytes()
    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert {r["zone"] for r in rows} <= {"early", "continuous", "late", "excluded"}
    assert all(r["difficulty"] == pytest.approx(r["loss_sum"] / r["tokens"]) for r in rows)
    summary = json.loads((tmp_path / "s" / "score_summary.json").read_text())
    assert (summary["examples_scored"], summary["examples_dropped"]) == (23, 1)
    assert json.loads((tmp_path / "s" / "dropped.jsonl").read_text())["id"] == "000003"
    assert main(argv) == 0  # a rerun reuses the shards
    assert (tmp_path / "s" / "spectrum.jsonl").read_bytes() == first


def test_shrink_cli_keeps_the_listed_layers(tmp_path, tiny_model_dir):
    dolly_like_file(tmp_path / "calib.jsonl")
    code = main(
        [
            "shrink",
            "--teacher",
            str(tiny_model_dir),
            "--layers",
            "0,2-3",
            "--data",
            str(tmp_path / "calib.jsonl"),
            "--out",
            str(tmp_path / "student"),
            "--quiet",
        ]
    )
    assert code == 0
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.num_hidden_layers == 3
    report = json.loads((tmp_path / "student" / "shrink_report.json").read_text())
    assert report["keep_layers"] == [0, 2, 3]


def test_parse_layers():
    assert parse_layers("0-2,5, 7-8") == [0, 1, 2, 5, 7, 8]


def test_missing_model_is_one_line(tmp_path, capsys):
    dolly_like_file(tmp_path / "t.jsonl")
    assert (
        main(
            [
                "score",
                "--model",
                str(tmp_path / "no-such-model"),
                "--data",
                str(tmp_path / "t.jsonl"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-model" in err


def test_curate_passes_step_mode_and_direction_through(tmp_path):
    write_difficulties(tmp_path / "d.jsonl", n=200)
    out = tmp_path / "o"
    argv = ["curate", "--difficulties", str(tmp_path / "d.jsonl"), "--epochs", "8", "--warmup", "2"]
    assert (
        main(
            [*argv, "--step-mode", "linear", "--direction", "reverse", "--out", str(out), "--quiet"]
        )
        == 0
    )
    schedule = json.loads((out / "schedule.json").read_text())
    starts = [e["window_start_rank"] - 1 for e in schedule["epochs"]]
    early = schedule["zones"]["early"]["size"]  # 20
    # reverse: the hard end first; linear: equal rank steps of E/(n-k-1) = 4
    assert starts == [early, early, early, 16, 12, 8, 4, 0]
    assert (
        schedule["config"]["step_mode"] == "linear" and schedule["config"]["direction"] == "reverse"
    )


def test_unknown_device_is_one_line(tmp_path, capsys, tiny_model_dir):
    dolly_like_file(tmp_path / "t.jsonl")
    argv = [
        "score",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(tmp_path / "t.jsonl"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--device", "gpu0"]) == 2
    assert "device 'gpu0' is not a device name" in capsys.readouterr().err


def test_quiet_score_prints_nothing_and_restores_the_libraries_bars(
    tmp_path, capfd, tiny_model_dir
):
    import datasets
    from transformers.utils import logging as transformers_logging

    dolly_like_file(tmp_path / "t.jsonl")
    before = (datasets.are_progress_bars_disabled(), transformers_logging.is_progress_bar_enabled())
    argv = ["score", "--model", str(tiny_model_dir), "--data", str(tmp_path / "t.jsonl")]
    assert main([*argv, "--out", str(tmp_path / "s"), "--max-length", "120", "--quiet"]) == 0
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""  # no "Generating train split", no bars
    after = (datasets.are_progress_bars_disabled(), transformers_logging.is_progress_bar_enabled())
    assert after == before


def test_a_model_folder_without_tokenizer_says_where_to_copy_one_from(
    tmp_path, capsys, tiny_model, tiny_tokenizer
):
    run = tmp_path / "run"
    tiny_model.save_pretrained(run / "best")  # weights only, as a bare checkpoint
    tiny_model.save_pretrained(run / "final")
    tiny_tokenizer.save_pretrained(run / "final")
    dolly_like_file(tmp_path / "t.jsonl")
    capsys.readouterr()  # the saving's own bars
    argv = ["score", "--model", str(run / "best"), "--data", str(tmp_path / "t.jsonl")]
    assert main([*argv, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{run / 'best'} holds no tokenizer" in err and f"e.g. from {run / 'final'}" in err
    assert not (tmp_path / "o").exists()


def test_a_failed_distill_keeps_an_existing_run_folder(tmp_path, capsys, tiny_model_dir):
    import yaml

    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "trainer_state.json").write_text("{}\n")
    (tmp_path / "empty.jsonl").write_text("")
    config = {
        "teacher": str(tiny_model_dir),
        "student": str(tiny_model_dir),
        "output_dir": str(out),
        "data": {"source": str(tmp_path / "empty.jsonl")},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["distill", "--config", str(tmp_path / "run.yaml"), "--quiet"]) == 2
    assert "empty.jsonl is empty" in capsys.readouterr().err
    assert (out / "checkpoint" / "trainer_state.json").read_text() == "{}\n"  # a run's work stays


def test_score_rescores_a_shard_cut_mid_line_with_one_warning(tmp_path, capfd, tiny_model_dir):
    dolly_like_file(tmp_path / "train.jsonl")
    argv = ["score", "--model", str(tiny_model_dir), "--data", str(tmp_path / "train.jsonl")]
    argv += ["--out", str(tmp_path / "s"), "--max-length", "120", "--batch-tokens", "256"]
    assert main([*argv, "--quiet"]) == 0
    first = (tmp_path / "s" / "spectrum.jsonl").read_bytes()
    shard = sorted((tmp_path / "s" / "shards").glob("shard-*.jsonl"))[0]
    text = shard.read_text()
    shard.write_text(text[: len(text) // 2])  # what a full disk or a hand edit leaves
    capfd.readouterr()
    assert main([*argv, "--quiet"]) == 0
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and shard.name in err and "rescoring" in err
    assert (tmp_path / "s" / "spectrum.jsonl").read_bytes() == first


def test_the_evaluation_data_root_is_a_flag_or_a_variable_never_the_working_directory(
    tmp_path, capsys, monkeypatch
):
    # A ../shared/data beside the working directory, as the old default looked for: not used.
    (tmp_path / "shared" / "data" / "minillm_eval").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("SPECTRUMKD_DATA_ROOT", raising=False)
    argv = ["evaluate", "--out", str(tmp_path / "eval"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "data root is not set: pass --data-root DIR" in err and "SPECTRUMKD_DATA_ROOT" in err
    monkeypatch.setenv("SPECTRUMKD_DATA_ROOT", str(tmp_path / "missing"))
    assert main(argv) == 2
    assert "$SPECTRUMKD_DATA_ROOT" in capsys.readouterr().err  # names where the path came from
    judge = ["judge", "--student-eval", "a", "--reference-eval", "b", "--base-url", "http://x"]
    assert main([*judge, "--model", "m", "--data-root", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "no such folder" in capsys.readouterr().err


# --------------------------------------------------------------------- curation strategies


def test_curate_strategy_srd_with_an_option_writes_the_strategys_plan(tmp_path, capsys):
    from spectrumkd.curation import build_strategy

    difficulties = write_difficulties(tmp_path / "d.jsonl", n=40)
    argv = ["curate", "--difficulties", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "c")]
    assert main([*argv, "--strategy", "srd", "--option", "selection_ratio=0.5"]) == 0
    schedule = json.loads((tmp_path / "c" / "schedule.json").read_text())
    ids = list(difficulties)
    expected = build_strategy("srd", {"selection_ratio": 0.5}).plan(
        ids, [difficulties[i] for i in ids]
    )
    assert schedule == json.loads(json.dumps(expected.to_dict()))
    assert [e["num_examples"] for e in schedule["epochs"][::8]] == [
        6,
        12,
        20,
    ]  # 20 kept: floor(20/3) = 6 per bucket
    easiest = sorted(difficulties, key=difficulties.get)[:20]
    assert {i for e in schedule["epochs"] for i in e["ids"]} == set(easiest)
    out = capsys.readouterr().out
    assert "srd schedule: 24 epochs in 3 stage(s)" in out and "restart" in out

    # --baseline-epochs gives a staged strategy the example visits of that many full epochs.
    assert main([*argv, "--strategy", "pocl", "--baseline-epochs", "5", "--quiet"]) == 0
    pocl = json.loads((tmp_path / "c" / "schedule.json").read_text())
    assert sum(e["num_examples"] for e in pocl["epochs"]) == 5 * 40  # 2 epochs x (10+20+30+40)
    assert pocl["settings"]["epochs_per_stage"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategy", "pocl", "--option", "bogus=1"], "unknown pocl setting(s) bogus; known: "),
        (["--strategy", "srd", "--option", "selection_ratio"], "write it as KEY=VALUE"),
        (["--strategy", "srd", "--option", "selection_ratio=2"], "selection_ratio=2 must be"),
        (["--strategy", "srd", "--epochs", "4"], "--epochs is a SpectrumKD schedule flag"),
        (["--option", "epochs=0"], "epochs=0 must be an integer >= 1"),
    ],
)
def test_curate_refuses_a_strategys_bad_settings_in_one_line(tmp_path, capsys, extra, message):
    write_difficulties(tmp_path / "d.jsonl")
    argv = ["curate", "--difficulties", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "c")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spectrumkd curate: error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "c" / "schedule.json").exists()


def test_an_unknown_strategy_is_refused_by_the_parser_listing_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["curate", "--difficulties", "d", "--out", "o", "--strategy", "bogus"])
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "pocl" in err and "one_pass" in err


def test_the_metric_flags_choices_are_the_registered_metrics():
    import spectrumkd.evaluation  # noqa: F401 - registers code_execution and maths_verified
    from spectrumkd.cli.flags import METRICS
    from spectrumkd.scoring import metric_names
    from spectrumkd.scoring.registry import EVALUATION_METRICS

    assert sorted(METRICS) == sorted(set(metric_names()) | set(EVALUATION_METRICS))


def test_score_by_length_needs_no_forward_and_writes_its_ranking(tmp_path, tiny_model_dir):
    from spectrumkd.batching import IGNORE_INDEX
    from spectrumkd.data import DataConfig
    from spectrumkd.models import load_tokenizer

    data = tmp_path / "rows.jsonl"
    dolly_like_file(data)
    out = tmp_path / "len"
    argv = ["score", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out)]
    assert main([*argv, "--metric", "length", "--quiet"]) == 0
    examples = DataConfig(source=str(data)).load(load_tokenizer(tiny_model_dir)).examples
    lengths = {e.id: sum(1 for t in e.labels if t != IGNORE_INDEX) for e in examples}
    rows = [json.loads(line) for line in (out / "difficulties.jsonl").read_text().splitlines()]
    assert {r["id"]: r["difficulty"] for r in rows} == lengths
    assert json.loads((out / "score_summary.json").read_text())["metric"] == "length"
    assert main([*argv, "--metric", "length", "--metric-option", "bogus=1", "--quiet"]) == 2


def test_curate_refuses_both_a_visit_budget_and_epochs_per_stage(tmp_path, capsys):
    from spectrumkd.cli import main

    table = tmp_path / "d.jsonl"
    table.write_text("".join(f'{{"id": "e{i}", "difficulty": {i + 1}}}\n' for i in range(12)))
    code = main(
        [
            "curate",
            "--difficulties",
            str(table),
            "--out",
            str(tmp_path / "c"),
            "--strategy",
            "pocl",
            "--option",
            "epochs_per_stage=2",
            "--baseline-epochs",
            "20",
        ]
    )
    error = capsys.readouterr().err
    assert code != 0
    assert "give one of --baseline-epochs and --option epochs_per_stage=N" in error
    assert not (tmp_path / "c" / "schedule.json").exists()
