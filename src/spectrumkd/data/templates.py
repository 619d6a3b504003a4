"""Prompt templates used by the SpectrumKD paper, as pure string functions.

The instruction template must match the MiniLLM/DistiLLM processed Dolly files byte for byte:
teacher scores and student evaluations are only comparable with published numbers when the
prompt the model sees is exactly the one those papers used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TEMPLATES = ("instruction", "math", "code", "chat", "none")

# Rendered by concatenation rather than str.format so braces inside user text (code, LaTeX)
# are never interpreted and the "\\boxed{}" literal needs no escaping.
_INSTRUCTION_WITH_INPUT_HEAD = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
)
_INSTRUCTION_NO_INPUT_HEAD = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n"
)
_INPUT_HEADER = "\n\n### Input:\n"
_RESPONSE_HEADER = "\n\n### Response:\n"
_MATH_SUFFIX = (
    "\nPlease reason step by step, and put your final answer within \\boxed{}.\n\n### Solution:\n"
)
_CODE_PREFIX = (
    "Please provide a self-contained Python script that solves the following problem in a "
    "markdown code block:\n\n### Problem:\n"
)
_CODE_SUFFIX = (
    "\n\n### Response:\nBelow is a Python script with a self-contained function that solves the "
    "problem and passes corresponding tests:\n"
)


def render_instruction(instruction: str, input: str = "") -> str:
    """Alpaca/MiniLLM template (paper Figure 5); an empty or missing input drops the Input block."""
    if input:
        return _INSTRUCTION_WITH_INPUT_HEAD + instruction + _INPUT_HEADER + input + _RESPONSE_HEADER
    return _INSTRUCTION_NO_INPUT_HEAD + instruction + _RESPONSE_HEADER


def render_math(problem: str, few_shot: Sequence[tuple[str, str]] = ()) -> str:
    """Math template (paper Figure 7), optionally preceded by solved (problem, solution) shots."""
    shots = "".join(
        "### Problem:\n" + shot_problem + _MATH_SUFFIX + shot_solution + "\n\n"
        for shot_problem, shot_solution in few_shot
    )
    return shots + "### Problem:\n" + problem + _MATH_SUFFIX


def render_code(problem: str) -> str:
    """Code template (paper Figure 8); the response prefix primes a fenced Python answer."""
    return _CODE_PREFIX + problem + _CODE_SUFFIX


def render_chat(tokenizer: Any, messages: list[dict]) -> str:
    """The tokenizer's own chat template, ending with the assistant generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"tokenizer {name!r} has no chat template; use template='instruction' (or 'math', "
            "'code', 'none'), or load a tokenizer of an instruction-tuned model"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
