"""Code pass@1 (HumanEval, MBPP): the suite (:mod:`.suite`: loading, prompts, test programs)
and the sandbox its test programs run in (:mod:`.sandbox`, with :mod:`.isolation` choosing the
confinement, :mod:`.process` running one child and :mod:`.child` the child's own set-up)."""

from spectrumkd.evaluation.code.difficulty import CODE_EXECUTION, count_passed_tests
from spectrumkd.evaluation.code.isolation import (
    ISOLATIONS,
    landlock_abi,
    landlock_available,
    namespace_available,
    resolve_isolation,
)
from spectrumkd.evaluation.code.process import SandboxResult
from spectrumkd.evaluation.code.sandbox import run_program, run_programs
from spectrumkd.evaluation.code.suite import (
    CODE_MAX_NEW_TOKENS,
    CODE_SETS,
    CodeProblem,
    build_program,
    check_solutions,
    code_suite_runner,
    complete_solution,
    evaluate_code,
    extract_code,
    load_code_set,
    load_humaneval,
    load_mbpp,
    write_evalplus_samples,
)

__all__ = [
    "CODE_EXECUTION",
    "CODE_MAX_NEW_TOKENS",
    "CODE_SETS",
    "ISOLATIONS",
    "CodeProblem",
    "SandboxResult",
    "build_program",
    "check_solutions",
    "code_suite_runner",
    "complete_solution",
    "count_passed_tests",
    "evaluate_code",
    "extract_code",
    "landlock_abi",
    "landlock_available",
    "load_code_set",
    "load_humaneval",
    "load_mbpp",
    "namespace_available",
    "resolve_isolation",
    "run_program",
    "run_programs",
    "write_evalplus_samples",
]
