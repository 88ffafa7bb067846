"""Redaction of secrets before anything leaves a process for a model or comes back from an
investigator (and before it is put on the record): bearer tokens and Authorization headers,
key=value pairs whose key says secret, cloud access keys, private key blocks, JWTs, long
random-looking strings, and the patterns an operator adds (KUBERNAUT_AI_REDACT_PATTERNS)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

MASK = "[REDACTED]"

_BUILT_IN = (
    # Authorization: Bearer x / Basic x, and a bare "Bearer x".
    r"(?i)\b(authorization\s*[:=]\s*)(bearer|basic|token)?\s*[^\s\"',;]+",
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}",
    # password=..., api_key: ..., "secret": "..." and the like.
    r"(?i)([\"']?\b[\w.-]*(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|"
    r"private[_-]?key|credential)s?[\"']?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;}\]]+)",
    # AWS access key ids, GitHub/Slack/OpenAI-style tokens.
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\b(ghp|gho|ghs|ghu|github_pat|xox[abprs]|sk|sk-ant|glpat)[-_][A-Za-z0-9_-]{16,}",
    # JWTs.
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    # PEM private keys.
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
    # Long hex or base64 runs (40+ characters): keys and tokens, rarely anything else.
    r"\b[A-Fa-f0-9]{40,}\b",
    r"\b[A-Za-z0-9+/]{40,}={0,2}",
)


class Redactor:
    def __init__(self, extra_patterns: Iterable[str] = ()) -> None:
        self._patterns = [re.compile(p) for p in (*_BUILT_IN, *extra_patterns)]

    def __call__(self, text: str) -> str:
        for pattern in self._patterns:
            text = pattern.sub(_masked, text)
        return text


def _masked(match: re.Match[str]) -> str:
    # Keep the key of a key=value pair (or the header name): what was hidden stays legible.
    groups = match.groups()
    if (
        groups
        and groups[0]
        and match.group(0).startswith(groups[0])
        and groups[0] != match.group(0)
    ):
        prefix = groups[0]
        if prefix.rstrip().endswith((":", "=")):
            return prefix + MASK
    return MASK


def redact_url(url: str) -> str:
    """`url` without credentials, for evidence and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***@{host}").geturl()
