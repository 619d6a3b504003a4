"""run_config.py: a YAML run config into RunConfig, ``--set`` overrides, their one-line errors,
and the round trip of the run_config.yaml a distillation writes into its folder.

Results are compared with RunConfig built directly from the plain dataclasses, so a field that
the YAML path reads differently from the constructor shows up here.
"""

from __future__ import annotations

import pytest
import yaml

from spectrumkd.curation import SpectrumKDConfig
from spectrumkd.data.config import DataConfig
from spectrumkd.distillation import RunConfig, TrainConfig, apply_override, read_yaml_mapping
from spectrumkd.distillation.run_config import CurationConfig

RUN_YAML = """\
teacher: smollm2
student: runs/demo/student
output_dir: runs/distill
data: {source: embedded:dolly, template: instruction, max_length: 256}
teacher_cache_k: 64
curation:
  difficulties: runs/demo/scores/difficulties.jsonl
  lambda_a: 0.2
  epochs: 6
  warmup_epochs: 2
train: {objective: jsd, objective_params: {beta: 0.1}, batch_size: 4, learning_rate: 1e-4}
"""

EXPECTED = RunConfig(
    teacher="smollm2",
    student="runs/demo/student",
    output_dir="runs/distill",
    data=DataConfig(source="embedded:dolly", template="instruction", max_length=256),
    train=TrainConfig(
        objective="jsd", objective_params={"beta": 0.1}, batch_size=4, learning_rate=1e-4
    ),
    curation=CurationConfig(
        "runs/demo/scores/difficulties.jsonl",
        SpectrumKDConfig(lambda_a=0.2, epochs=6, warmup_epochs=2),
    ),
    teacher_cache_k=64,
)

MINIMAL = {"teacher": "t", "student": "s", "output_dir": "o"}


@pytest.fixture
def run_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(RUN_YAML)
    return path


def test_a_yaml_run_config_is_the_dataclasses_it_names(run_yaml):
    run = RunConfig.from_yaml(run_yaml)
    assert run == EXPECTED
    # 1e-4 (no dot) is a float, not YAML 1.1's string
    assert isinstance(run.train.learning_rate, float)
    assert run.dtype == "auto" and run.device == "auto"


def test_omitted_sections_take_the_dataclass_defaults():
    run = RunConfig.from_dict(MINIMAL)
    assert run == RunConfig("t", "s", "o")
    assert run.data == DataConfig() and run.train == TrainConfig() and run.curation is None
    assert run.train.alpha == 0.3  # the paper's off-policy default, filled in by TrainConfig


def test_overrides_replace_fields_with_yaml_typed_values(run_yaml):
    run = RunConfig.from_yaml(
        run_yaml,
        ["train.epochs=3", "train.learning_rate=5e-4", "data.max_length=128", "curation=null"],
    )
    assert run.train == TrainConfig(
        objective="jsd",
        objective_params={"beta": 0.1},
        batch_size=4,
        learning_rate=5e-4,
        epochs=3,
    )
    assert run.data == DataConfig(source="embedded:dolly", template="instruction", max_length=128)
    assert run.curation is None


def test_an_override_creates_missing_sections_and_nested_keys():
    values = dict(MINIMAL)
    apply_override(values, "train.objective=jsd")
    apply_override(values, "train.objective_params.beta=0.5")
    apply_override(values, "curation.lambda_b=0.05")
    assert values["train"] == {"objective": "jsd", "objective_params": {"beta": 0.5}}
    run = RunConfig.from_dict(values)
    assert run.train.objective_params == {"beta": 0.5}
    assert run.curation == CurationConfig(None, SpectrumKDConfig(lambda_b=0.05))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs", "write it as section.field=value"),
        ("=3", "write it as section.field=value"),
        ("teacher.name=x", "'teacher' is not a section"),
    ],
)
def test_a_malformed_override_is_refused_with_its_text(override, message):
    values = dict(MINIMAL)
    with pytest.raises(ValueError, match=message) as caught:
        apply_override(values, override)
    assert repr(override) in str(caught.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=1", "unknown train setting"),
        ("bogus=1", "unknown run config setting"),
        ("data.bogus=1", "unknown data setting"),
        ("curation.bogus=1", "unknown curation setting"),
        ("train=3", "'train' must be a mapping of settings"),
        ("train.objective=bogus", "unknown objective 'bogus'"),
        ("train.alpha=2", "alpha=2 must be in"),
        ("teacher_cache_k=-1", "teacher_cache_k=-1 must be >= 0"),
    ],
)
def test_an_override_the_dataclasses_refuse_names_the_setting(override, message):
    values = dict(MINIMAL)
    apply_override(values, override)
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict(values)


def test_an_unknown_setting_error_lists_the_known_ones():
    with pytest.raises(ValueError) as caught:
        RunConfig.from_dict({**MINIMAL, "train": {"lr": 1}})
    assert "unknown train setting(s) lr; known: alpha, batch_size" in str(caught.value)


def test_a_value_of_the_wrong_type_is_refused():
    # A word where a number belongs fails in TrainConfig's range checks (a TypeError today,
    # not the one-line ValueError of the other refusals).
    values = dict(MINIMAL)
    apply_override(values, "train.epochs=three")
    with pytest.raises((TypeError, ValueError)):
        RunConfig.from_dict(values)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("teacher: [unclosed\n", "is not valid YAML"),
        ("- a\n- b\n", "must hold a mapping of settings at the top level"),
    ],
)
def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_yaml_mapping(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_yaml_mapping(tmp_path / "missing.yaml")


def test_an_empty_config_file_is_an_empty_mapping(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert read_yaml_mapping(path) == {}


@pytest.mark.parametrize("with_curation", [True, False])
def test_the_written_run_config_reads_back_as_the_same_run(tmp_path, run_yaml, with_curation):
    """jobs.distill records ``yaml.safe_dump(run.to_dict(), sort_keys=False)`` as the run's
    run_config.yaml; reading that file must give the run it recorded."""
    run = RunConfig.from_yaml(run_yaml, [] if with_curation else ["curation=null"])
    written = tmp_path / "run_config.yaml"
    written.write_text(yaml.safe_dump(run.to_dict(), sort_keys=False))
    assert RunConfig.from_yaml(written) == run
    flat = yaml.safe_load(written.read_text())
    if with_curation:  # the curation section is flat: difficulties beside SpectrumKD's fields
        assert flat["curation"]["difficulties"] == "runs/demo/scores/difficulties.jsonl"
        assert flat["curation"]["lambda_a"] == 0.2
    else:
        assert flat["curation"] is None
    assert flat["train"]["learning_rate"] == 1e-4 and flat["train"]["alpha"] == 0.3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=three", "train.epochs takes int, not 'three'"),
        ("train.epochs=2.5", "train.epochs takes int, not 2.5"),
        ("train.learning_rate=fast", "train.learning_rate takes float, not 'fast'"),
        ("train.alpha=high", "train.alpha takes float or null, not 'high'"),
    ],
)
def test_a_value_of_the_wrong_type_gets_one_line_naming_the_setting(override, message):
    values = dict(MINIMAL)
    apply_override(values, override)
    with pytest.raises(ValueError) as caught:
        RunConfig.from_dict(values)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_integer_where_a_float_belongs_is_accepted_as_that_number():
    values = dict(MINIMAL)
    apply_override(values, "train.learning_rate=1")
    assert RunConfig.from_dict(values).train.learning_rate == 1


# ------------------------------------------------------------------- curation strategies


def test_one_line_picks_the_strategy_and_its_settings_sit_flat_beside_it(tmp_path):
    from spectrumkd.curation.pocl import POCLConfig

    values = {**MINIMAL, "curation": {"strategy": "pocl", "epochs_per_stage": 2, "tau_end": 3}}
    run = RunConfig.from_dict(values)
    assert run.curation == CurationConfig(None, POCLConfig(epochs_per_stage=2, tau_end=3), "pocl")
    assert run.curation.scoring_metric == "reflection_rrf"  # POCL's default metric
    written = run.to_dict()["curation"]
    assert written["strategy"] == "pocl" and written["epochs_per_stage"] == 2
    assert "metric" not in written  # only where it is not the default
    path = tmp_path / "run_config.yaml"
    path.write_text(yaml.safe_dump(run.to_dict(), sort_keys=False))
    assert RunConfig.from_yaml(path) == run
    metric = RunConfig.from_dict({**MINIMAL, "curation": {"strategy": "srd", "metric": "length"}})
    assert metric.curation.scoring_metric == "length"
    assert metric.to_dict()["curation"]["metric"] == "length"


def test_a_spectrumkd_section_without_strategy_writes_what_it_always_wrote():
    run = RunConfig.from_dict({**MINIMAL, "curation": {"lambda_a": 0.2}})
    assert run.curation.strategy == "spectrumkd" and run.curation.spectrumkd.lambda_a == 0.2
    assert run.to_dict()["curation"] == {
        "difficulties": None,
        **SpectrumKDConfig(lambda_a=0.2).to_dict(),
    }
    pocl = RunConfig.from_dict({**MINIMAL, "curation": {"strategy": "pocl"}})
    with pytest.raises(ValueError, match="curation.strategy is pocl, not spectrumkd"):
        pocl.curation.spectrumkd  # noqa: B018 - the property refuses


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("curation.strategy=bogus", "unknown curation strategy 'bogus'; choose one of spectrumkd"),
        (
            "curation.lambda_a=0.2",  # with strategy pocl below: SpectrumKD's setting
            "unknown curation setting(s) lambda_a for strategy pocl; known: strategy, "
            "difficulties, metric, metric_options, epochs_per_stage",
        ),
        ("curation.epochs_per_stage=two", "curation.epochs_per_stage takes int, not 'two'"),
        ("curation.epochs_per_stage=0", "epochs_per_stage=0 must be an integer >= 1"),
        ("curation.metric=3", "curation.metric takes a metric name or null, not 3"),
    ],
)
def test_a_bad_strategy_or_setting_is_refused_in_one_line(override, message):
    values = {**MINIMAL, "curation": {"strategy": "pocl"}}
    apply_override(values, override)
    with pytest.raises(ValueError) as caught:
        RunConfig.from_dict(values)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_metric_takes_its_options_from_the_run_config_and_they_round_trip(tmp_path):
    section = {"strategy": "pocl", "metric": "reflection_rouge", "metric_options": {"seed": 3}}
    run = RunConfig.from_dict({**MINIMAL, "curation": section})
    assert run.curation.metric_options == {"seed": 3}
    path = tmp_path / "run_config.yaml"
    path.write_text(yaml.safe_dump(run.to_dict(), sort_keys=False))
    assert RunConfig.from_yaml(path) == run
    assert (
        "metric_options"
        not in RunConfig.from_dict({**MINIMAL, "curation": {"strategy": "pocl"}}).to_dict()[
            "curation"
        ]
    )


@pytest.mark.parametrize(
    "section",
    [
        {"difficulties": "d.jsonl", "metric": "length"},
        {"difficulties": "d.jsonl", "metric_options": {"include_prompt": True}},
    ],
)
def test_a_metric_beside_a_difficulties_table_is_refused_rather_than_ignored(section):
    with pytest.raises(ValueError) as caught:
        RunConfig.from_dict({**MINIMAL, "curation": {"strategy": "pocl", **section}})
    assert "drop them or set difficulties to null" in str(caught.value)


def test_options_a_metric_does_not_take_are_refused_before_any_model_loads():
    from spectrumkd.jobs import known_metric

    with pytest.raises(ValueError, match="metric 'length' has no option 'cap'"):
        known_metric("length", {"cap": 3})
    assert known_metric("length", {"include_prompt": True}) == "length"
