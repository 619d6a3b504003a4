"""The evidence experiment's runner (experiments/run.py) end to end on tiny random models: cells
written once, skipped on a rerun, selected by name, resumed after a kill, and summarised into a
table whose numbers are recomputed here from the result files."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
from conftest import build_tiny_llama
from scipy.stats import wilcoxon

from experiments import measure
from experiments.cells import cell_settings
from experiments.config import load_experiment
from experiments.run import main
from experiments.running import cell_run_config
from experiments.summary import summarize
from experiments.summary_page import metric_text, summary_markdown
from spectrumkd import jobs

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "config.yaml"


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture()
def world(tmp_path, tiny_tokenizer):
    """A tiny teacher, train/test/heal files and the `--set` overrides that point the shipped
    config's CPU profile at them."""
    teacher = tmp_path / "teacher"
    build_tiny_llama(len(tiny_tokenizer), num_layers=4, seed=1).save_pretrained(teacher)
    tiny_tokenizer.save_pretrained(teacher)
    test_rows = [
        {
            "instruction": f"Name the colour number {i}.",
            "input": "",
            "output": f"Colour {i} is red.",
        }
        for i in range(8)
    ]
    train_rows = [
        {"instruction": f"Count to {i}.", "context": "", "response": " ".join(map(str, range(i)))}
        for i in range(1, 24)
    ]
    # A training row whose prompt is a test prompt: removed from training, the test row kept.
    train_rows.append({**test_rows[3], "context": "", "response": "blue"})
    heal_rows = [{"question": f"What is {i} + {i}?", "answer": f"{2 * i}"} for i in range(12)]
    overrides = {
        "results_dir": str(tmp_path / "results"),
        "runs_dir": str(tmp_path / "runs"),
        "teacher": str(teacher),
        "student.shrink.num_layers": 2,
        "student.shrink.calibration_rows": 8,
        "heal.data.source": _jsonl(tmp_path / "heal.jsonl", heal_rows),
        "heal.data.limit": None,
        "heal.data.max_length": 128,
        "heal.train.batch_size": 4,
        "heal.train.learning_rate": 1e-3,
        "heal.train.save_every_steps": 0,
        "data.source": _jsonl(tmp_path / "train.jsonl", train_rows),
        "data.max_length": 128,
        "data.validation_ratio": 0.25,
        "teacher_cache_k": 16,
        "baseline_epochs": 2,
        "objectives": {"fkl": {"objective": "forward_kl"}},
        "seeds": [1],
        "train.batch_size": 4,
        "train.learning_rate": 1e-3,
        "train.save_every_steps": 1,
        "train.log_every": 1,
        "test.source": _jsonl(tmp_path / "test.jsonl", test_rows),
        "test.quality_max_length": 128,
        "test.batch_size": 4,
        "test.rouge_rows": 3,
        "test.sample_seeds": [10, 20],
        "test.max_new_tokens": 4,
        "ablations": {},  # added in the middle of a test, as after a finished matrix
    }
    args = ["--config", str(CONFIG), "--quiet"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return tmp_path, args


class DistillCalls:
    """Wraps jobs.distill to record which run folders were trained (or to forbid training)."""

    def __init__(self, forbid: bool = False) -> None:
        self.folders: list[str] = []
        self.forbid = forbid
        self.real = jobs.distill

    def __call__(self, run, **kwargs):
        if self.forbid:
            raise AssertionError(f"training was called for {run.output_dir}")
        self.folders.append(Path(run.output_dir).name)
        return self.real(run, **kwargs)


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}


def test_cells_run_once_are_skipped_selected_by_name_and_resume_after_a_kill(
    world, monkeypatch, capsys
):
    from spectrumkd import distillation

    tmp, args = world
    results = tmp / "results"

    # Selecting one cell by name runs the setup and that cell only.
    calls = DistillCalls()
    monkeypatch.setattr(jobs, "distill", calls)
    assert main([*args, "run", "--cell", "fkl-spectrumkd-seed1"]) == 0
    assert calls.folders == ["heal", "fkl-spectrumkd-seed1"]
    assert sorted(p.name for p in results.glob("*.json")) == [
        "fkl-spectrumkd-seed1.json",
        "setup.json",
    ]
    setup = json.loads((results / "setup.json").read_text())
    assert setup["data"]["removed_test_prompt_overlap"] == ["000023"]
    assert setup["data"]["train"] + setup["data"]["validation"] == 23
    assert set(setup["scores"]) == {"teacher", "shrunk", "healed"}
    assert -1.0 <= setup["spearman"]["rho"] <= 1.0
    assert len(setup["shrink"]["keep_layers"]) == 2
    curated = json.loads((results / "fkl-spectrumkd-seed1.json").read_text())
    assert curated["training"]["strategy"] == "spectrumkd"
    assert curated["training"]["epochs"] == setup["spectrumkd"]["epochs"]
    curve, epochs = curated["training"]["validation"], curated["training"]["epochs"]
    assert [row["epoch"] for row in curve] == list(range(1, epochs + 1))
    assert [row["temperature"] for row in curve] == pytest.approx(
        [1.0 + (j - 1) / (epochs - 1) for j in range(1, epochs + 1)]  # the plan's tau 1 -> 2
    )
    best = curated["training"]["best"]
    assert best["metric"] == "val_ce"
    assert best["value"] == min(row["val_ce"] for row in curve)
    assert curve[best["epoch"] - 1]["val_ce"] == best["value"]
    assert curated["counts"]["quality_examples"] == 8  # every test row, the overlapping one too
    assert set(curated["per_example"]["ce"]) == {f"{i:06d}" for i in range(8)}
    assert len(curated["per_example"]["rougeL_sampled"]) == 3
    assert not (tmp / "runs" / "fkl-spectrumkd-seed1" / "checkpoint").exists()  # pruned

    # A plain run does what is left (the baseline); the finished cell is not touched.
    before = mtimes(results)
    calls = DistillCalls()
    monkeypatch.setattr(jobs, "distill", calls)
    assert main([*args, "run"]) == 0
    assert calls.folders == ["fkl-baseline-seed1"]
    after = mtimes(results)
    assert {k: after[k] for k in before} == before
    baseline = json.loads((results / "fkl-baseline-seed1.json").read_text())
    assert baseline["training"]["strategy"] == "baseline" and baseline["training"]["epochs"] == 2

    # A rerun trains nothing and rewrites nothing.
    monkeypatch.setattr(jobs, "distill", DistillCalls(forbid=True))
    capsys.readouterr()
    assert main([*args, "run"]) == 0
    assert "nothing (all finished)" in capsys.readouterr().out
    assert mtimes(results) == after
    assert main([*args, "cells"]) == 0
    assert capsys.readouterr().out.count(" done ") == 3

    # Kill the baseline after its first checkpoints, rerun, and get the uninterrupted result.
    monkeypatch.undo()
    (results / "fkl-baseline-seed1.json").unlink()
    shutil.rmtree(tmp / "runs" / "fkl-baseline-seed1")

    class KilledTeacher(distillation.CachedTeacher):
        calls = 0

        def top_k(self, batch, temperature):  # what the trainer reads of a cache per step
            KilledTeacher.calls += 1
            if KilledTeacher.calls == 4:  # 3 steps trained and checkpointed (save_every_steps 1)
                raise KeyboardInterrupt("killed")
            return super().top_k(batch, temperature)

    # jobs.distill takes the cache reader from the distillation package when it trains.
    monkeypatch.setattr(distillation, "CachedTeacher", KilledTeacher)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "run", "--cell", "fkl-baseline-*"])
    monkeypatch.undo()
    assert not (results / "fkl-baseline-seed1.json").exists()
    capsys.readouterr()
    main([*args, "cells"])
    assert (
        "fkl-baseline-seed1    partial  checkpoint after epoch 0, step 3" in capsys.readouterr().out
    )
    assert main([*args, "run", "--cell", "fkl-baseline-*"]) == 0
    resumed = json.loads((results / "fkl-baseline-seed1.json").read_text())
    assert resumed["training"]["resumed_from_step"] == 3
    for key in ("means", "per_example", "counts", "settings", "run_config"):
        assert resumed[key] == baseline[key], key
    assert {k: v for k, v in resumed["training"].items() if k != "resumed_from_step"} == {
        k: v for k, v in baseline["training"].items() if k != "resumed_from_step"
    }

    # The summary's numbers, recomputed from the result files.
    assert main([*args, "summarize"]) == 0
    summary = json.loads((results / "summary.json").read_text())
    markdown = (results / "summary.md").read_text()
    check_summary(summary, markdown, [resumed, curated])
    assert f"{setup['spearman']['rho']:.3f}" in markdown

    # An ablation added after the matrix ran: the finished cells stay current, and the ablation
    # is the +SpectrumKD cell with its change and nothing else.
    ablated = [*args, "--set", 'ablations={"spectrumkd_fixed_tau": {"change": {"tau_end": 1.0}}}']
    capsys.readouterr()
    assert main([*ablated, "cells"]) == 0
    listing = capsys.readouterr().out
    assert listing.count(" done ") == 3
    assert "fkl-spectrumkd_fixed_tau-seed1  pending" in listing
    calls = DistillCalls()
    monkeypatch.setattr(jobs, "distill", calls)
    assert main([*ablated, "run"]) == 0
    assert calls.folders == ["fkl-spectrumkd_fixed_tau-seed1"]
    monkeypatch.undo()
    ablation = json.loads((results / "fkl-spectrumkd_fixed_tau-seed1.json").read_text())
    assert ablation["arm"] == "spectrumkd_fixed_tau"
    assert ablation["settings"] == {**curated["settings"], "ablation": {"tau_end": 1.0}}

    def without_output(run_config: dict) -> dict:
        return {k: v for k, v in run_config.items() if k != "output_dir"}

    assert without_output(ablation["run_config"]) == {
        **without_output(curated["run_config"]),
        "curation": {**curated["run_config"]["curation"], "tau_end": 1.0},
    }
    assert ablation["training"]["epochs"] == curated["training"]["epochs"]
    assert [row["temperature"] for row in ablation["training"]["validation"]] == [1.0] * epochs
    assert main([*ablated, "summarize"]) == 0
    summary = json.loads((results / "summary.json").read_text())
    markdown = (results / "summary.md").read_text()
    check_summary(summary, markdown, [resumed, curated])
    check_ablations(summary, markdown, [resumed, curated, ablation])


def check_summary(summary: dict, markdown: str, cells: list[dict]) -> None:
    """Every row of the summary against a direct computation from the cell results."""
    keys = sorted({c["objective_key"] for c in cells})
    assert [o["key"] for o in summary["objectives"]] == keys
    for entry in summary["objectives"]:
        group = [c for c in cells if c["objective_key"] == entry["key"]]
        seeds = sorted({c["seed"] for c in group})
        assert entry["seeds"] == seeds
        assert [row["metric"] for row in entry["rows"]] == list(measure.METRICS)
        for arm in ("baseline", "spectrumkd"):
            arm_curves = [c["training"].get("validation") for c in group if c["arm"] == arm]
            if all(arm_curves):
                expected = [
                    statistics.fmean(curve[e]["val_ce"] for curve in arm_curves)
                    for e in range(len(arm_curves[0]))
                ]
                got = [row["val_ce"] for row in entry["validation"][arm]]
                assert got == pytest.approx(expected, rel=1e-12)
                assert f"{expected[-1]:.4f}" in markdown
            else:
                assert entry["validation"][arm] is None
        for row in entry["rows"]:
            metric = row["metric"]
            per_arm = {}
            for arm in ("baseline", "spectrumkd"):
                arm_cells = sorted((c for c in group if c["arm"] == arm), key=lambda c: c["seed"])
                means = [c["means"][metric] for c in arm_cells]
                assert row[arm]["mean"] == pytest.approx(statistics.fmean(means), rel=1e-12)
                if len(means) > 1:
                    assert row[arm]["std"] == pytest.approx(statistics.stdev(means), rel=1e-12)
                ids = sorted(arm_cells[0]["per_example"][metric])
                per_arm[arm] = {
                    i: sum(c["per_example"][metric][i] for c in arm_cells) / len(arm_cells)
                    for i in ids
                }
                text = metric_text(statistics.fmean(means), metric)
                assert text in markdown
            base, new = row["baseline"]["mean"], row["spectrumkd"]["mean"]
            by_seed = {
                arm: {c["seed"]: c["means"][metric] for c in group if c["arm"] == arm}
                for arm in ("baseline", "spectrumkd")
            }
            lower = metric in measure.LOWER_IS_BETTER
            assert row["seed_wins"] == sum(
                (by_seed["spectrumkd"][s] < by_seed["baseline"][s]) == lower
                and by_seed["spectrumkd"][s] != by_seed["baseline"][s]
                for s in seeds
            )
            if base == 0:  # ROUGE-L of a tiny random model can be 0: no relative gain
                assert row["gain_pct"] is None
            else:
                assert row["gain_pct"] == pytest.approx((new - base) / base * 100, rel=1e-9)
                assert f"{row['gain_pct']:+.2f}" in markdown
            ids = sorted(per_arm["baseline"])
            pairs = [(per_arm["baseline"][i], per_arm["spectrumkd"][i]) for i in ids]
            differing = sum(b != n for b, n in pairs)
            assert (row["n_pairs"], row["n_nonzero"]) == (len(ids), differing)
            if differing >= 6:
                expected = wilcoxon([n for _, n in pairs], [b for b, _ in pairs]).pvalue
                assert row["p_value"] == pytest.approx(float(expected), rel=1e-9)
                assert f"{row['p_value']:.3g}" in markdown
            else:
                assert row["p_value"] is None
        check_by_difficulty(entry, group)
    listed = [c["cell"] for c in summary["cells"]]  # every result file, paired or not
    assert listed == sorted(listed) and {c["cell"] for c in cells} <= set(listed)
    for cell in cells:
        assert f"| {cell['cell']} | {cell['training']['epochs']} |" in markdown


def check_ablations(summary: dict, markdown: str, cells: list[dict]) -> None:
    """Each ablation against both arms, recomputed from the cell results (seeds all three have)."""
    for entry in summary["objectives"]:
        group = [c for c in cells if c["objective_key"] == entry["key"]]
        names = sorted({c["arm"] for c in group} - {"baseline", "spectrumkd"})
        assert sorted(a["name"] for a in entry["ablations"]) == names
        for ablation in entry["ablations"]:
            arms = {
                arm: {c["seed"]: c for c in group if c["arm"] == arm}
                for arm in ("baseline", "spectrumkd", ablation["name"])
            }
            seeds = sorted(set.intersection(*(set(by_seed) for by_seed in arms.values())))
            assert ablation["seeds"] == seeds
            assert ablation["changes"] == arms[ablation["name"]][seeds[0]]["settings"]["ablation"]
            assert f"### Ablation `{ablation['name']}`" in markdown
            assert [row["metric"] for row in ablation["rows"]] == list(measure.METRICS)
            for row in ablation["rows"]:
                metric = row["metric"]
                means = {
                    arm: statistics.fmean(by_seed[s]["means"][metric] for s in seeds)
                    for arm, by_seed in arms.items()
                }
                new = means[ablation["name"]]
                assert row["ablation"]["mean"] == pytest.approx(new, rel=1e-12)
                for reference in ("baseline", "spectrumkd"):
                    versus = row[f"vs_{reference}"]
                    base = means[reference]
                    assert row[reference]["mean"] == pytest.approx(base, rel=1e-12)
                    if base == 0:
                        assert versus["gain_pct"] is None
                    else:
                        assert versus["gain_pct"] == pytest.approx((new - base) / base * 100)
                        assert f"{versus['gain_pct']:+.2f} (p " in markdown
                    by_seed = {arm: [arms[arm][s]["means"][metric] for s in seeds] for arm in arms}
                    lower = metric in measure.LOWER_IS_BETTER
                    assert versus["seed_wins"] == sum(
                        (n < b) == lower and n != b
                        for b, n in zip(by_seed[reference], by_seed[ablation["name"]], strict=True)
                    )
                    ids = sorted(arms[reference][seeds[0]]["per_example"][metric])
                    pairs = [
                        [
                            statistics.fmean(arms[arm][s]["per_example"][metric][i] for s in seeds)
                            for i in ids
                        ]
                        for arm in (reference, ablation["name"])
                    ]
                    differing = sum(b != n for b, n in zip(*pairs, strict=True))
                    assert versus["n_nonzero"] == differing
                    if differing >= 6:
                        expected = wilcoxon(pairs[1], pairs[0]).pvalue
                        assert versus["p_value"] == pytest.approx(float(expected), rel=1e-9)
                    else:
                        assert versus["p_value"] is None


def check_by_difficulty(entry: dict, group: list[dict]) -> None:
    """The quartile table, recomputed with numpy from the paired cells of one objective."""
    import numpy as np

    seeds = entry["seeds"]
    arms = {
        arm: [c for c in group if c["arm"] == arm and c["seed"] in seeds]
        for arm in ("baseline", "spectrumkd")
    }
    ids = sorted(arms["baseline"][0]["per_example"]["ce"])
    mean = {
        (arm, metric): np.array(
            [np.mean([c["per_example"][metric][i] for c in arms[arm]]) for i in ids]
        )
        for arm in arms
        for metric in measure.QUALITY_METRICS
    }
    tokens = np.array([arms["baseline"][0]["per_example"]["tokens"][i] for i in ids], float)
    difficulty = (mean["baseline", "ce"] + mean["spectrumkd", "ce"]) / 2
    order = np.lexsort((np.array(ids), difficulty))
    groups = [g for g in np.array_split(order, 4) if len(g)]
    assert len(entry["by_difficulty"]) == len(groups)
    for row, g in zip(entry["by_difficulty"], groups, strict=True):
        assert row["examples"] == len(g)
        assert row["mean_ce"] == pytest.approx(difficulty[g].mean(), rel=1e-9)
        for metric in measure.QUALITY_METRICS:
            diff = mean["spectrumkd", metric][g] - mean["baseline", metric][g]
            expected = float((diff * tokens[g]).sum() / tokens[g].sum())
            assert row[f"diff_{metric}"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        worse = int((mean["spectrumkd", "ce"][g] > mean["baseline", "ce"][g]).sum())
        assert row["spectrumkd_worse_ce"] == worse


def test_summary_averages_seeds_and_refuses_mixed_settings(tmp_path):
    """Synthetic result files of two seeds: means ± std over seeds, tests on per-example values
    averaged over seeds, an unpaired cell left out, and a file of other settings refused."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = [f"{i:06d}" for i in range(30)]
    tokens = {i: int(rng.integers(5, 40)) for i in ids}
    cells = []
    for seed in (1, 2):
        for arm, shift in (("baseline", 0.0), ("spectrumkd", -0.05)):
            per_example = {"tokens": tokens}
            for metric in measure.METRICS:
                scale = 50.0 if metric in measure.ROUGE_METRICS else 2.0
                per_example[metric] = {
                    i: float(scale * (1 + shift) + rng.normal(0, 0.3)) for i in ids
                }
            means = {}
            for metric in measure.METRICS:
                values = per_example[metric]
                if metric in measure.QUALITY_METRICS:
                    means[metric] = sum(values[i] * tokens[i] for i in ids) / sum(tokens.values())
                else:
                    means[metric] = statistics.fmean(values.values())
            cells.append(
                {
                    "cell": f"jsd-{arm}-seed{seed}",
                    "objective_key": "jsd",
                    "objective": "jsd",
                    "arm": arm,
                    "seed": seed,
                    "settings": {"train": {"learning_rate": 5e-5}, "objective": {"o": "jsd"}},
                    "training": {"epochs": 4 if arm == "baseline" else 5, "steps": 100},
                    "means": means,
                    "per_example": per_example,
                }
            )
    for cell in cells:
        (tmp_path / f"{cell['cell']}.json").write_text(json.dumps(cell))
    unpaired = {**cells[0], "cell": "jsd-baseline-seed3", "seed": 3}
    (tmp_path / "jsd-baseline-seed3.json").write_text(json.dumps(unpaired))
    summary = summarize(tmp_path)
    markdown = summary_markdown(summary)
    assert summary["objectives"][0]["unpaired"] == ["baseline-seed3"]
    check_summary(summary, markdown, cells)
    assert "## The claim, on the primary metrics" in markdown

    # An ablation (settings differ by its changes only) on one of the two seeds.
    ablation = {
        **cells[1],
        "cell": "jsd-spectrumkd_fixed_tau-seed2",
        "arm": "spectrumkd_fixed_tau",
        "seed": 2,
        "settings": {**cells[1]["settings"], "ablation": {"tau_end": 1.0}},
        "per_example": {
            **cells[1]["per_example"],
            "ce": {i: v + rng.normal(0, 0.3) for i, v in cells[1]["per_example"]["ce"].items()},
        },
    }
    (tmp_path / f"{ablation['cell']}.json").write_text(json.dumps(ablation))
    summary = summarize(tmp_path)
    markdown = summary_markdown(summary)
    check_summary(summary, markdown, cells)
    check_ablations(summary, markdown, [*cells, ablation])
    assert summary["objectives"][0]["ablations"][0]["seeds"] == [2]
    # The same ablation with other changes on another seed: refused, not averaged in.
    changed = {
        **ablation,
        "cell": "jsd-spectrumkd_fixed_tau-seed1",
        "seed": 1,
        "settings": {**cells[1]["settings"], "ablation": {"tau_end": 1.5}},
    }
    (tmp_path / f"{changed['cell']}.json").write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="ablation spectrumkd_fixed_tau with different changes"):
        summarize(tmp_path)
    (tmp_path / f"{changed['cell']}.json").unlink()

    other = {**cells[0], "cell": "jsd-baseline-seed4", "seed": 4}
    other["settings"] = {"train": {"learning_rate": 1e-4}, "objective": {"o": "jsd"}}
    (tmp_path / "jsd-baseline-seed4.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"different train\.learning_rate"):
        summarize(tmp_path)


def test_config_errors_are_one_line(tmp_path, capsys):
    def error(*args: str) -> str:
        assert main(["--config", str(CONFIG), *args]) == 2
        return capsys.readouterr().err.strip()

    assert error("--set", "train.epochs=3", "cells") == (
        "error: train.epochs is set per cell (objectives:, seeds:, baseline_epochs:); "
        "remove it from train"
    )
    assert "unknown test setting(s) rows" in error("--set", "test.rows=3", "cells")
    assert "no cell matches 'fkl-seed9'" in error("run", "--cell", "fkl-seed9")

    def ablation_error(ablations: str) -> str:
        return error("--set", f"ablations={ablations}", "cells")

    assert "ablation name 'baseline' must be" in ablation_error(
        '{"baseline": {"change": {"tau_end": 1.0}}}'
    )
    assert "unknown ablations.wide.change setting(s) lambda_b" in ablation_error(
        '{"wide": {"change": {"lambda_b": 0.0}}}'
    )
    for nothing in ("{}", '{"tau_end": 2.0}', '{"tau_end": 2.0, "teacher_cache_k": 4096}'):
        assert "ablations.same.change changes nothing" in ablation_error(
            f'{{"same": {{"change": {nothing}}}}}'
        )
    assert "ablations.live.change.teacher_cache_k=-1 must be an integer >= 0" in ablation_error(
        '{"live": {"change": {"teacher_cache_k": -1}}}'
    )
    assert (
        "ablations.x.objectives=['kl'] must list some of objectives: fkl, rkl, jsd"
        in ablation_error('{"x": {"change": {"tau_end": 1.0}, "objectives": ["kl"]}}')
    )
    assert "ablations.x.seeds=[7] must list some of seeds: 1, 2, 3" in ablation_error(
        '{"x": {"change": {"tau_end": 1.0}, "seeds": [7]}}'
    )

    # A finished result computed with other settings is refused, not silently kept.
    results = tmp_path / "results"
    results.mkdir()
    (results / "rkl-baseline-seed2.json").write_text(json.dumps({"settings": {"train": {}}}))
    message = error("--set", f"results_dir={results}", "run", "--cell", "rkl-baseline-seed2")
    assert message.startswith("error: ") and "computed with other" in message
    assert "\n" not in message
    assert main(["--config", str(CONFIG), "--profile", "gpu", "--list"]) == 0
    assert "jsd-spectrumkd-seed3" in capsys.readouterr().out


def test_an_ablation_changes_only_its_settings_in_the_run_config():
    """Ablations run in their scope, and each one's RunConfig is the +SpectrumKD cell's with its
    changes only (the live teacher: no cache)."""
    ablations = json.dumps(
        {
            "live": {"change": {"teacher_cache_k": 0}, "objectives": ["fkl", "jsd"]},
            "flat": {"change": {"tau_end": 1.0, "step_mode": "linear"}, "seeds": [1]},
        }
    )
    exp = load_experiment(CONFIG, "cpu", [f"ablations={ablations}"])
    cells = {cell.name: cell for cell in exp.cells()}
    names = list(cells)
    assert {name.split("-")[1] for name in names[:18]} == {"baseline", "spectrumkd"}
    assert names[18:] == [  # after the matrix, each in its scope
        "fkl-live-seed1",
        "fkl-flat-seed1",
        "fkl-live-seed2",
        "fkl-live-seed3",
        "rkl-flat-seed1",
        "jsd-live-seed1",
        "jsd-flat-seed1",
        "jsd-live-seed2",
        "jsd-live-seed3",
    ]
    setup = {"spectrumkd": {"epochs": 5, "warmup_epochs": 1}}
    configs = {
        name: cell_run_config(exp, cells[f"fkl-{name}-seed1"], setup).to_dict()
        for name in ("baseline", "spectrumkd", "live", "flat")
    }
    for config in configs.values():
        config.pop("output_dir")
    assert configs["spectrumkd"]["teacher_cache_k"] == 4096
    assert configs["live"] == {**configs["spectrumkd"], "teacher_cache_k": 0}
    curation = {**configs["spectrumkd"]["curation"], "tau_end": 1.0, "step_mode": "linear"}
    assert configs["flat"] == {**configs["spectrumkd"], "curation": curation}
    assert configs["baseline"] == {**configs["spectrumkd"], "curation": None}
    assert cell_settings(exp, cells["fkl-live-seed1"]) == {
        **cell_settings(exp, cells["fkl-spectrumkd-seed1"]),
        "ablation": {"teacher_cache_k": 0},
    }
