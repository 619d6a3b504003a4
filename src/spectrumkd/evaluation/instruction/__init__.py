"""Instruction following as the SpectrumKD paper reports it (MiniLLM protocol: ROUGE-L on
DollyEval, SelfInst, VicunaEval, S-NI and an UnNI subset, sampled at temperature 1 over five
seeds), with the distillation quality of the same sets (CE on the references, KL to a teacher).

:mod:`.suites` loads the sets, :mod:`.runner` runs ``evaluate`` over them (and dispatches the
registered suites), :mod:`.quality` measures CE and KL without generating.
"""

from spectrumkd.evaluation.instruction.quality import (
    QualityResult,
    QualityRow,
    distillation_quality,
    summarize_quality,
)
from spectrumkd.evaluation.instruction.runner import (
    DEFAULT_SEEDS,
    MAX_PROMPT_TOKENS,
    Decoding,
    available_suites,
    evaluate_instruction_following,
    filter_prompts,
    register_suite,
    summary_table,
)
from spectrumkd.evaluation.instruction.suites import (
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

__all__ = [
    "DEFAULT_SEEDS",
    "INSTRUCTION_SUITES",
    "INSTRUCTION_SUITE_NAMES",
    "MAX_PROMPT_TOKENS",
    "Decoding",
    "EvalExample",
    "QualityResult",
    "QualityRow",
    "Suite",
    "SuiteSpec",
    "available_suites",
    "distillation_quality",
    "evaluate_instruction_following",
    "examples_from_rows",
    "filter_prompts",
    "load_rows",
    "load_suite",
    "register_suite",
    "suite_path",
    "summarize_quality",
    "summary_table",
]
