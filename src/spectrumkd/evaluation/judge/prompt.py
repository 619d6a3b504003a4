"""What the judge is asked and how its answer is read: the pairwise prompt (this project's own
wording) and the ``[[A]]``/``[[B]]``/``[[C]]`` verdict.

Changing the prompt must change :data:`PROMPT_VERSION`, which is part of every cache key and of
the cache file's name.
"""

from __future__ import annotations

import re

PROMPT_VERSION = "pairwise-v1"
ORDERS = ("ab", "ba")  # ab: the student's answer is A; ba: the student's answer is B
VERDICTS = ("A", "B", "C")

SYSTEM_PROMPT = """\
You are asked to compare two replies that two AI assistants gave to the same user request, and \
to decide which reply serves the user better.

Judge by what matters to the person who asked: does the reply do what was requested, is it \
correct, is it on topic, does it cover what the request needs (no more, no less), and is it \
clear? A longer reply is not better for being longer. The order in which the replies appear \
says nothing about their quality, and the labels A and B are arbitrary: do not let either \
influence you.

Start with a brief comparison of the two replies, a few sentences at most. Then finish with \
your decision on a line of its own, written exactly as one of:
[[A]] when reply A is better,
[[B]] when reply B is better,
[[C]] when neither is better than the other."""

USER_TEMPLATE = """\
## Request
{question}

## Reply A
<<<
{answer_a}
>>>

## Reply B
<<<
{answer_b}
>>>

Compare the two replies, then give your decision as [[A]], [[B]] or [[C]]."""

# [[A]] / [[B]] / [[C]]; inner spaces and lower case are accepted (a judge's typing, not doubt).
_VERDICT = re.compile(r"\[\[\s*([ABCabc])\s*\]\]")


def build_messages(question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The chat messages of one judgment: the system prompt and the filled user template."""
    user = USER_TEMPLATE.format(question=question, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"`` or ``"C"``; None when the text names no verdict, or two different ones
    (a judge that writes both ``[[A]]`` and ``[[B]]`` has not decided; picking one would be a
    guess). The same verdict repeated is accepted."""
    found = {match.upper() for match in _VERDICT.findall(text or "")}
    return found.pop() if len(found) == 1 else None
