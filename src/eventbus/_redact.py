"""Redaction and size caps for the text that LLM events capture.

``llm_request_sent`` can carry the prompt (``metadata["messages"]``) and
``llm_response_received`` the answer (``metadata["response"]``). Before that
text is put in an event it goes through a *redact* hook (by default
:func:`redact_secrets`), so a secret in a prompt never reaches a sink, a
log file or a dashboard. The :class:`~eventbus.coordinator.Emitter` then caps each
string; the full (redacted) text is saved as an artifact.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias

__all__ = ["DEFAULT_MAX_TEXT_CHARS", "REDACTED", "Redactor", "redact_secrets"]

logger = logging.getLogger("eventbus")

Redactor: TypeAlias = Callable[[str], str]
"""A redact hook: takes captured text, returns it with secrets masked."""

REDACTED = "[REDACTED]"
"""What :func:`redact_secrets` puts in place of a secret."""

DEFAULT_MAX_TEXT_CHARS = 8192
"""How many characters of each captured string an LLM event keeps by default."""


class _Rule(NamedTuple):
    """A secret pattern, tried only when one of its literal ``triggers`` is in the
    text (lowercased first when ``fold``): plain text costs a few substring scans."""

    triggers: tuple[str, ...]
    fold: bool
    pattern: re.Pattern[str]
    replacement: str


# Order matters: a private key block first (it spans lines), then headers and
# bearer tokens, then assignments, then the tokens recognised by their shape.
_RULES = (
    _Rule(
        ("PRIVATE KEY",),
        False,
        re.compile(
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
            r"(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
            re.DOTALL,
        ),
        "[REDACTED PRIVATE KEY]",
    ),
    # Authorization: Bearer xyz / Basic xyz / Token xyz / xyz (to the end of the value).
    _Rule(
        ("authorization",),
        True,
        re.compile(
            r"(?i)(\bauthorization\b[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|bot)\s+)?)"
            r"[^\s\"',;]+"
        ),
        rf"\1{REDACTED}",
    ),
    _Rule(
        ("bearer",),
        True,
        re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
        rf"\1{REDACTED}",
    ),
    # password=..., api_key: "...", OPENAI_API_KEY=..., "client_secret": "..." (quotes kept)
    _Rule(
        ("pass", "pwd", "secret", "key", "token", "credential"),
        True,
        re.compile(
            r"(?i)(\b(?:[a-z0-9]+[_-])*"
            r"(?:password|passwd|pwd|passphrase|secret|api[_-]?key|apikey|access[_-]?key"
            r"|secret[_-]?key|private[_-]?key|token|credentials?)"
            r"[\"']?\s*[:=]\s*)"
            r"(?:(\")[^\"\n]*\"|(')[^'\n]*'|[^\s\"',;]+)"
        ),
        rf"\1\2\3{REDACTED}\2\3",
    ),
    # OpenAI, Anthropic: "sk-" not preceded by a word character ("task-" is common), the
    # check placed after the literal so that the regex engine scans for the literal.
    _Rule(("sk-",), False, re.compile(r"sk-(?<!\wsk-)(?:ant-)?[A-Za-z0-9_-]{16,}"), REDACTED),
    # AWS access key id
    _Rule(("AKIA", "ASIA"), False, re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
    # GitHub classic and fine-grained tokens
    _Rule(
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        False,
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}\b|github_pat_[A-Za-z0-9_]{20,})"),
        REDACTED,
    ),
    _Rule(("xox",), False, re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), REDACTED),  # Slack
    _Rule(("AIza",), False, re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), REDACTED),  # Google
)


def redact_secrets(text: str) -> str:
    """Return ``text`` with common secrets replaced by ``[REDACTED]``: the default redact hook.

    Masked: API keys by their shape (OpenAI ``sk-...``, Anthropic
    ``sk-ant-...``, AWS ``AKIA...``, GitHub ``ghp_...``/``github_pat_...``,
    Slack ``xox...``, Google ``AIza...``), the credentials of
    ``Authorization:`` headers and ``Bearer`` tokens, the values of
    ``password=...``/``api_key: ...``-style assignments (any name ending in
    password, secret, token, key, credentials...) and whole private key
    blocks. It errs on the side of masking; it cannot know every secret, so
    pass your own hook (which may call this one) for yours.
    """
    folded: str | None = None
    for rule in _RULES:
        if rule.fold:
            if folded is None:
                folded = text.lower()
            haystack = folded
        else:
            haystack = text
        if any(trigger in haystack for trigger in rule.triggers):
            text = rule.pattern.sub(rule.replacement, text)
            folded = None
    return text


def safe_redact(redact: Redactor, text: str) -> str:
    """Return ``redact(text)``; if the hook raises or returns no string, the whole text masked.

    The failure is logged with the exception's type only: its message may
    quote the text.
    """
    try:
        result = redact(text)
    except Exception as exc:
        problem = f"raised {type(exc).__name__}"
    else:
        if isinstance(result, str):
            return result
        problem = f"returned {type(result).__name__}, not str"
    logger.error(
        "the redact hook %s; the whole text (%d chars) is masked instead", problem, len(text)
    )
    return f"[REDACTED: the redact hook {problem}]"


def redact_messages(
    messages: Sequence[Mapping[str, Any]], redact: Redactor | None
) -> list[dict[str, str]]:
    """``messages`` as ``{"role", "content"}`` dicts (other keys dropped), contents
    passed through ``redact`` (``None``: kept as given)."""
    return [
        {
            "role": str(message.get("role", "user")),
            "content": (
                str(message.get("content", ""))
                if redact is None
                else safe_redact(redact, str(message.get("content", "")))
            ),
        }
        for message in messages
    ]


def _cut(text: str, limit: int | None, key: str) -> tuple[str, int]:
    if limit is None or len(text) <= limit:
        return text, 0
    cut = len(text) - limit
    return f"{text[:limit]}…[truncated {cut} chars; full text in artifact {key}]", cut


def capture_messages(
    messages: Sequence[Mapping[str, Any]], redact: Redactor, limit: int | None, key: str
) -> tuple[list[dict[str, str]], dict[str, Any] | None, list[dict[str, str]]]:
    """Redact and cap prompt ``messages``.

    Return the messages for the event, the ``truncated`` entry (``None``
    when nothing was cut) and the full redacted messages (the artifact).
    """
    full = redact_messages(messages, redact)
    shown: list[dict[str, str]] = []
    cut_total = 0
    for message in full:
        content, cut = _cut(message["content"], limit, key)
        cut_total += cut
        shown.append({"role": message["role"], "content": content})
    if not cut_total:
        return shown, None, full
    total = sum(len(message["content"]) for message in full)
    return shown, {"chars": cut_total, "total_chars": total, "artifact": key}, full


def capture_text(
    text: str, redact: Redactor, limit: int | None, key: str
) -> tuple[str, dict[str, Any] | None, str]:
    """Redact and cap one string: (for the event, ``truncated`` entry or ``None``, full)."""
    full = safe_redact(redact, text)
    shown, cut = _cut(full, limit, key)
    if not cut:
        return shown, None, full
    return shown, {"chars": cut, "total_chars": len(full), "artifact": key}, full
