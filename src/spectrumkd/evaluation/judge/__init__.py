"""LLM-as-judge: the pairwise win rate of a student's answers against a reference model's.

The paper judges the distilled student against its teacher on the instruction sets with a
strong model (DeepSeek-V3-0324 at temperature 0.7) and an MT-Bench-style pairwise prompt. This
module does the same against any OpenAI-compatible chat endpoint (base URL, model, key from an
environment variable).

How a set is judged:

- Answers come from two evaluation folders written by ``spectrumkd evaluate`` (the student's and
  the reference model's, e.g. the teacher evaluated the same way): ``OUT/<set>/<run>.jsonl``,
  paired by id. The question is the instruction (and its input) of the data file.
- Every pair is judged twice, once with the student's answer in position A (order ``ab``) and
  once in position B (order ``ba``), so a judge that prefers a position gains the student
  nothing on average.
- A verdict is ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie) in the judge's text. A text with none of
  them, or with two different ones, is *unparseable*: it is counted and reported, never guessed.
- The student's score per judgment is 1 for a win, 0.5 for a tie, 0 for a loss; a pair's score
  is the mean over its two orders. A pair with an unparseable judgment in either order gets no
  score (``null``) and is left out of the win rate, because keeping the one parsed order would
  bring back the position bias the two orders cancel. ``unparseable`` counts such judgments and
  ``excluded_pairs`` the pairs they cost.
- Every judgment is appended to a cache (flushed and fsynced one by one), keyed by everything
  the judge's answer depends on; a rerun, or a run after a crash, asks only for what is missing.

The judging prompt (:mod:`.prompt`) is this project's own wording. Changing it must change
:data:`PROMPT_VERSION`, which is part of every cache key and of the cache file's name.

Parts: :mod:`.prompt` (the prompt and verdict parsing), :mod:`.client` (the endpoint),
:mod:`.cache` (judgments kept across runs), :mod:`.answers` (the two folders' answers),
:mod:`.scores` (win rates), :mod:`.run` (a whole judged comparison).
"""

from spectrumkd.evaluation.judge.answers import (
    choose_run,
    load_questions,
    pair_answers,
    question_text,
    read_answers,
    run_files,
)
from spectrumkd.evaluation.judge.cache import JudgmentCache, cache_key
from spectrumkd.evaluation.judge.client import (
    DEFAULT_KEY_ENV,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    JudgeConfig,
    JudgeReply,
    OpenAIJudge,
    redact_url,
)
from spectrumkd.evaluation.judge.prompt import (
    ORDERS,
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    USER_TEMPLATE,
    VERDICTS,
    build_messages,
    parse_verdict,
)
from spectrumkd.evaluation.judge.run import (
    JudgeItem,
    judge_cache_path,
    judge_eval_runs,
    judge_items,
)
from spectrumkd.evaluation.judge.scores import (
    judge_table,
    pair_score,
    student_score,
    summarize_pairs,
)

__all__ = [
    "DEFAULT_KEY_ENV",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "ORDERS",
    "PROMPT_VERSION",
    "SYSTEM_PROMPT",
    "USER_TEMPLATE",
    "VERDICTS",
    "JudgeConfig",
    "JudgeItem",
    "JudgeReply",
    "JudgmentCache",
    "OpenAIJudge",
    "build_messages",
    "cache_key",
    "choose_run",
    "judge_cache_path",
    "judge_eval_runs",
    "judge_items",
    "judge_table",
    "load_questions",
    "pair_answers",
    "pair_score",
    "parse_verdict",
    "question_text",
    "read_answers",
    "redact_url",
    "run_files",
    "student_score",
    "summarize_pairs",
]
