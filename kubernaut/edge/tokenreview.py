"""Kubernetes TokenReview for in-cluster senders: AlertManager running in the cluster
presents its projected ServiceAccount token, the API server says whose it is, and the edge
accepts only the users on an explicit allow list.

The API server's verdicts are cached by the SHA-256 of the token (the token itself is
never kept, logged or echoed): who a token belongs to for `cache_seconds`, that it belongs
to nobody for `negative_cache_seconds`, so a stranger cannot make the edge hammer the API
server. The allow list is applied on every request, never cached. The edge's own identity
needs `create` on `tokenreviews.authentication.k8s.io` (the `system:auth-delegator`
ClusterRole grants it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException

from kubernaut.edge.security import ReviewUnavailable, Unauthorized
from kubernaut.edge.settings import TokenReviewSettings
from kubernaut.runtime.kube import ClusterNotConfigured, KubeConnection
from kubernaut.runtime.settings import KubeSettings

__all__ = [
    "ReviewUnavailable",
    "TokenReviewer",
    "Unauthorized",
]

log = logging.getLogger("kubernaut.edge")

# Verdicts kept at most; the oldest go first. Tokens are few in practice (one per sender
# and rotation), so this only matters when strangers send many different tokens.
MAX_CACHED_VERDICTS = 4096


@dataclass(frozen=True)
class _Verdict:
    """What the API server said about one token: whose it is ("" for nobody)."""

    username: str
    expires: float


class TokenReviewer:
    """Asks the API server who a bearer token belongs to (TokenReview) and accepts only
    the allowed users. Owns `connection` and closes it in `close()`."""

    def __init__(
        self,
        settings: TokenReviewSettings,
        connection: KubeConnection,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_cached: int = MAX_CACHED_VERDICTS,
    ) -> None:
        if not settings.allowed_users:
            raise ValueError(
                "token review needs an allow list: set KUBERNAUT_HTTP_TOKEN_REVIEW_ALLOWED_USERS "
                "(e.g. system:serviceaccount:monitoring:alertmanager); any ServiceAccount in "
                "the cluster can get a valid token"
            )
        self.settings = settings
        self.connection = connection
        self.clock = clock
        self.max_cached = max_cached
        self._allowed = frozenset(settings.allowed_users)
        self._verdicts: dict[bytes, _Verdict] = {}
        # One API call per token at a time: a burst of webhooks with one new token
        # waits for a single review.
        self._pending: dict[bytes, asyncio.Task[str]] = {}

    async def review(self, token: str) -> str:
        """The token's username. Unauthorized when the API server does not know the token
        (or not for our audiences) or its user is not allowed; ReviewUnavailable when the
        API server cannot answer."""
        username = await self._username(token)
        if not username:
            raise Unauthorized("the bearer token is not valid")
        if username not in self._allowed:
            raise Unauthorized(
                f"{username} may not send alerts (not in the token review allow list)"
            )
        return username

    async def close(self) -> None:
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()
        self._verdicts.clear()
        await self.connection.close()

    async def _username(self, token: str) -> str:
        key = hashlib.sha256(token.encode()).digest()
        cached = self._verdicts.get(key)
        if cached is not None and cached.expires > self.clock():
            return cached.username
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.create_task(self._ask(key, token))
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settled(key, done))
        # Shielded: one waiter going away (its client hung up) does not cancel the review
        # the others wait for.
        return await asyncio.shield(pending)

    def _settled(self, key: bytes, done: asyncio.Task[str]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have gone already

    async def _ask(self, key: bytes, token: str) -> str:
        username = await self._token_review(token)
        ttl = self.settings.cache_seconds if username else self.settings.negative_cache_seconds
        self._remember(key, _Verdict(username, self.clock() + ttl))
        return username

    def _remember(self, key: bytes, verdict: _Verdict) -> None:
        self._verdicts.pop(key, None)  # re-inserted last: the dict's order is by age
        if len(self._verdicts) >= self.max_cached:
            now = self.clock()
            for stale in [k for k, v in self._verdicts.items() if v.expires <= now]:
                del self._verdicts[stale]
            while self._verdicts and len(self._verdicts) >= self.max_cached:
                del self._verdicts[next(iter(self._verdicts))]
        self._verdicts[key] = verdict

    async def _token_review(self, token: str) -> str:
        """The API server's answer: the username, or "" when it does not accept the token."""
        body = client.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=client.V1TokenReviewSpec(
                token=token, audiences=list(self.settings.audiences) or None
            ),
        )
        timeout = self.connection.settings.request_timeout_seconds
        try:
            async with asyncio.timeout(timeout * 2):
                api = client.AuthenticationV1Api(await self.connection.api())
                answer: Any = await api.create_token_review(body, _request_timeout=timeout)
        except ApiException as error:
            # Only the status and reason: the body of an error answer is not ours to log.
            why = f"HTTP {error.status} {error.reason}" if error.status else str(error.reason)
            raise self._unavailable(why) from error
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise self._unavailable(str(error) or type(error).__name__) from error
        except (ClusterNotConfigured, ConfigException) as error:
            raise self._unavailable(f"no usable cluster configuration: {error}") from error
        status = answer.status
        if status is None or not status.authenticated or status.user is None:
            return ""
        if self.settings.audiences and not set(status.audiences or ()) & set(
            self.settings.audiences
        ):
            # An authenticator that ignores audiences says so by returning none of ours.
            return ""
        return str(status.user.username or "")

    @staticmethod
    def _unavailable(why: str) -> ReviewUnavailable:
        log.warning("token review unavailable", extra={"why": why})
        return ReviewUnavailable(f"the Kubernetes API server cannot review tokens now: {why}")


def reviewer_for(settings: TokenReviewSettings, kube: KubeSettings) -> TokenReviewer | None:
    """The configured reviewer, asking the cluster `kube` configures; None when disabled;
    ValueError when enabled without an allow list."""
    return TokenReviewer(settings, KubeConnection(kube)) if settings.enabled else None
