"""The judge endpoint: any OpenAI-compatible chat server (base URL, model, key from an
environment variable), asked once per judgment; the ``openai`` client retries transient
failures, and errors come back as one line that never shows the key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from spectrumkd.evaluation.judge.prompt import PROMPT_VERSION

DEFAULT_TEMPERATURE = 0.7  # the paper's judge setting
DEFAULT_MAX_TOKENS = 1024
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class JudgeConfig:
    """The judge endpoint and its sampling; the key itself is read from ``key_env`` only."""

    base_url: str
    model: str
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    key_env: str = DEFAULT_KEY_ENV
    timeout_s: float = 120.0
    # The openai client retries connection errors, 408, 409, 429 and 5xx with exponential
    # back-off (0.5 s doubling to 8 s, jittered; a Retry-After header wins).
    max_retries: int = 5
    workers: int = 4  # judgments in flight at once

    def __post_init__(self) -> None:
        if not self.base_url.strip():
            raise ValueError("the judge needs a base URL, e.g. https://api.deepseek.com/v1")
        if not self.model.strip():
            raise ValueError("the judge needs a model name, e.g. deepseek-chat")
        if not self.temperature >= 0:
            raise ValueError(f"judge temperature must be >= 0, got {self.temperature}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"judge max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout_s}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def public(self) -> dict[str, Any]:
        """What the summary records: no key, and no credentials embedded in the URL."""
        return {
            "base_url": redact_url(self.base_url),
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "prompt_version": PROMPT_VERSION,
            "key_env": self.key_env,
        }


def redact_url(url: str) -> str:
    """``url`` without user:password and query string (where some gateways put keys)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class JudgeReply:
    text: str
    finish_reason: str | None


class OpenAIJudge:
    """One chat completion per judgment through the ``openai`` client (v1+)."""

    def __init__(self, config: JudgeConfig, api_key: str | None = None) -> None:
        from openai import OpenAI

        key = api_key if api_key is not None else os.environ.get(config.key_env)
        if not key:
            raise ValueError(
                f"no judge API key: set the environment variable {config.key_env} (or name "
                "another one with --judge-key-env); a server without keys accepts any value"
            )
        self.config = config
        self._key = key
        self._client = OpenAI(
            base_url=config.base_url,
            api_key=key,
            max_retries=config.max_retries,
            timeout=config.timeout_s,
        )

    def __repr__(self) -> str:  # never show the key
        url = redact_url(self.config.base_url)
        return f"OpenAIJudge(model={self.config.model!r}, base_url={url!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def complete(self, messages: list[dict[str, str]]) -> JudgeReply:
        import openai

        config = self.config
        options: dict[str, Any] = {"temperature": config.temperature}
        if config.max_tokens is not None:
            options["max_tokens"] = config.max_tokens
        where = f"judge endpoint {redact_url(config.base_url)}"
        try:
            response = self._client.chat.completions.create(
                model=config.model, messages=messages, **options
            )
        except openai.APIStatusError as error:
            status = error.status_code
            body = error.body  # the openai client hands over the "error" object's contents
            message = body.get("message") if isinstance(body, dict) else None
            detail = self._redact(str(message or error.message or "")).strip()
            detail = detail.splitlines()[0] if detail else "no message"
            if status in (401, 403):
                raise ValueError(
                    f"{where} refused the key in ${config.key_env} (HTTP {status})"
                ) from None
            if status == 429 or status >= 500:
                # Still failing after the client's retries: an outage, worth a later rerun.
                raise ConnectionError(
                    f"{where} still answers HTTP {status} after {config.max_retries} retries: "
                    f"{detail}"
                ) from None
            raise ValueError(f"{where} answered HTTP {status}: {detail}") from None
        except openai.APIConnectionError as error:  # includes timeouts
            raise ConnectionError(
                f"{where}: {type(error).__name__} after {config.max_retries} retries"
            ) from None
        if not response.choices:
            raise ValueError(f"{where} answered without any choice (model {config.model!r})")
        choice = response.choices[0]
        return JudgeReply(choice.message.content or "", choice.finish_reason)
