"""Evaluation stage: instruction following as the SpectrumKD paper reports it (MiniLLM protocol:
ROUGE-L on DollyEval, SelfInst, VicunaEval, S-NI and an UnNI subset, sampled at temperature 1
over five seeds) and distillation quality without generation (CE on the references, KL to a
teacher). Other suites plug into the same run through :data:`SUITE_RUNNERS`."""

from spectrumkd.evaluation.quality import (
    QualityResult,
    QualityRow,
    distillation_quality,
    summarize_quality,
)
from spectrumkd.evaluation.rouge import corpus_rouge_l, rouge_l, rouge_l_scores
from spectrumkd.evaluation.runner import (
    DEFAULT_SEEDS,
    MAX_PROMPT_TOKENS,
    SUITE_RUNNERS,
    Decoding,
    SuiteContext,
    available_suites,
    evaluate_instruction_following,
    filter_prompts,
    register_suite,
    summary_table,
)
from spectrumkd.evaluation.suites import (
    INSTRUCTION_SUITE_NAMES,
    INSTRUCTION_SUITES,
    EvalExample,
    Suite,
    SuiteSpec,
    examples_from_rows,
    load_rows,
    load_suite,
    suite_path,
)
from spectrumkd.models.generation import generate

__all__ = [
    "DEFAULT_SEEDS",
    "INSTRUCTION_SUITES",
    "INSTRUCTION_SUITE_NAMES",
    "MAX_PROMPT_TOKENS",
    "SUITE_RUNNERS",
    "Decoding",
    "EvalExample",
    "QualityResult",
    "QualityRow",
    "Suite",
    "SuiteContext",
    "SuiteSpec",
    "available_suites",
    "corpus_rouge_l",
    "distillation_quality",
    "evaluate_instruction_following",
    "examples_from_rows",
    "filter_prompts",
    "generate",
    "load_rows",
    "load_suite",
    "register_suite",
    "rouge_l",
    "rouge_l_scores",
    "suite_path",
    "summarize_quality",
    "summary_table",
]

# The maths and code suites run through the same `evaluate` command and summary.
from spectrumkd.evaluation.code import code_suite_runner  # noqa: E402
from spectrumkd.evaluation.maths import maths_suite_runner  # noqa: E402

for _name in ("gsm8k", "math"):
    register_suite(_name, maths_suite_runner(_name))
for _name in ("humaneval", "mbpp"):
    register_suite(_name, code_suite_runner(_name))
