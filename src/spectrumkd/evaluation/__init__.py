"""Evaluation stage, grouped by what it evaluates.

- :mod:`.instruction`: instruction following as the SpectrumKD paper reports it (MiniLLM
  protocol: ROUGE-L over five sampling seeds) and distillation quality without generation (CE on
  the references, KL to a teacher); its runner is the ``evaluate`` command's run.
- :mod:`.maths` (GSM8K, MATH-500) and :mod:`.code` (HumanEval, MBPP, with the sandbox): greedy
  pass@1 through the one runner of :mod:`.greedy`, joining ``evaluate`` through
  :data:`SUITE_RUNNERS` (:mod:`.registry`).
- :mod:`.judge`: the pairwise LLM-as-judge win rate; :mod:`.compare`: paired statistics
  between two evaluation folders. :mod:`.rouge` is the metric shared with training validation.
"""

from spectrumkd.evaluation.code import code_suite_runner
from spectrumkd.evaluation.compare import (
    HIGHER_IS_BETTER,
    Paired,
    compare_metric,
    compare_runs,
    comparison_table,
    default_out_path,
    relative_gain,
    rouge_per_example,
    write_comparison,
)
from spectrumkd.evaluation.instruction import (
    DEFAULT_SEEDS,
    INSTRUCTION_SUITE_NAMES,
    INSTRUCTION_SUITES,
    MAX_PROMPT_TOKENS,
    Decoding,
    EvalExample,
    QualityResult,
    QualityRow,
    Suite,
    SuiteSpec,
    available_suites,
    distillation_quality,
    evaluate_instruction_following,
    examples_from_rows,
    filter_prompts,
    load_rows,
    load_suite,
    register_suite,
    suite_path,
    summarize_quality,
    summary_table,
)
from spectrumkd.evaluation.judge import (
    DEFAULT_KEY_ENV,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    JudgeConfig,
    judge_eval_runs,
    run_files,
)
from spectrumkd.evaluation.maths import maths_suite_runner
from spectrumkd.evaluation.maths_difficulty import MATHS_VERIFIED
from spectrumkd.evaluation.registry import SUITE_RUNNERS, SuiteContext
from spectrumkd.evaluation.rouge import corpus_rouge_l, rouge_l, rouge_l_scores
from spectrumkd.models.generation import generate

__all__ = [
    "DEFAULT_KEY_ENV",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_SEEDS",
    "DEFAULT_TEMPERATURE",
    "HIGHER_IS_BETTER",
    "INSTRUCTION_SUITES",
    "INSTRUCTION_SUITE_NAMES",
    "MATHS_VERIFIED",
    "MAX_PROMPT_TOKENS",
    "SUITE_RUNNERS",
    "Decoding",
    "EvalExample",
    "JudgeConfig",
    "Paired",
    "QualityResult",
    "QualityRow",
    "Suite",
    "SuiteContext",
    "SuiteSpec",
    "available_suites",
    "code_suite_runner",
    "compare_metric",
    "compare_runs",
    "comparison_table",
    "corpus_rouge_l",
    "default_out_path",
    "distillation_quality",
    "evaluate_instruction_following",
    "examples_from_rows",
    "filter_prompts",
    "generate",
    "judge_eval_runs",
    "load_rows",
    "load_suite",
    "maths_suite_runner",
    "register_suite",
    "relative_gain",
    "rouge_l",
    "rouge_l_scores",
    "rouge_per_example",
    "run_files",
    "suite_path",
    "summarize_quality",
    "summary_table",
    "write_comparison",
]

# The maths and code suites run through the same `evaluate` command and summary.
for _name in ("gsm8k", "math"):
    register_suite(_name, maths_suite_runner(_name))
for _name in ("humaneval", "mbpp"):
    register_suite(_name, code_suite_runner(_name))
