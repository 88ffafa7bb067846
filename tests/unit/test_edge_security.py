"""The edge's door: tokens (with rotation), TokenReview for in-cluster senders, signatures,
size and content-type limits, and that every refusal is a JSON body naming the reason,
before the body is even parsed; each accepted request knows its sender."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernaut.gateway.v1 import gateway_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kubernaut.edge.app import ALERTMANAGER_PATH, create_app
from kubernaut.edge.security import (
    Authenticator,
    ReviewUnavailable,
    SenderCheck,
    Unauthorized,
    sign,
)
from kubernaut.edge.settings import EdgeSettings, TokenReviewSettings
from kubernaut.edge.tokenreview import TokenReviewer, reviewer_for
from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.settings import KubeSettings

OLD, NEW = "old-token-0123456789", "new-token-9876543210"
SECRET = "hmac-secret"


def body(**overrides: Any) -> bytes:
    webhook = {
        "version": "4",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "KubePodCrashLooping", "namespace": "shop"},
                "startsAt": "2026-11-26T10:00:00Z",
            }
        ],
        **overrides,
    }
    return json.dumps(webhook).encode()


class Gateway:
    """Counts what reaches the gateway: a refused request must never get there."""

    def __init__(self) -> None:
        self.requests: list[gateway_pb2.SubmitAlertsRequest] = []

    async def __call__(
        self, request: gateway_pb2.SubmitAlertsRequest
    ) -> gateway_pb2.SubmitAlertsResponse:
        self.requests.append(request)
        return gateway_pb2.SubmitAlertsResponse()


@pytest.fixture
def gateway() -> Gateway:
    return Gateway()


async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as client:
        yield client


@pytest.fixture
async def edge(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(gateway, Authenticator.of([OLD, NEW]), max_body_bytes=4096)
    async for client in client_for(app):
        yield client


@pytest.fixture
async def signed_edge(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(gateway, Authenticator.of([NEW], SECRET))
    async for client in client_for(app):
        yield client


def headers(token: str | None = NEW, content_type: str = "application/json") -> dict[str, str]:
    found = {"content-type": content_type}
    if token is not None:
        found["authorization"] = f"Bearer {token}"
    return found


@pytest.mark.parametrize("token", [OLD, NEW])
async def test_both_tokens_of_a_rotation_are_accepted(
    edge: httpx.AsyncClient, gateway: Gateway, token: str
) -> None:
    reply = await edge.post(ALERTMANAGER_PATH, content=body(), headers=headers(token))
    assert reply.status_code == 200, reply.text
    assert len(gateway.requests) == 1


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "a bearer token is required"),
        ("Basic dXNlcjpwYXNz", "a bearer token is required"),
        ("Bearer ", "a bearer token is required"),
        ("Bearer wrong", "the bearer token is not valid"),
        (f"Bearer {NEW}x", "the bearer token is not valid"),
    ],
)
async def test_a_missing_or_wrong_token_is_a_401_naming_the_check(
    edge: httpx.AsyncClient, gateway: Gateway, authorization: str | None, reason: str
) -> None:
    sent = {"content-type": "application/json"}
    if authorization is not None:
        sent["authorization"] = authorization
    reply = await edge.post(ALERTMANAGER_PATH, content=body(), headers=sent)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reason in reply.json()["error"]
    # Neither the presented credential nor a configured token is ever echoed.
    presented = (authorization or "").partition(" ")[2]
    answer = reply.text + "".join(f"{k}: {v}\n" for k, v in reply.headers.items())
    for secret in (presented, OLD, NEW):
        assert not secret or secret not in answer, secret
    assert gateway.requests == []


async def test_authentication_comes_before_the_body_is_read_as_json(
    edge: httpx.AsyncClient, gateway: Gateway
) -> None:
    reply = await edge.post(ALERTMANAGER_PATH, content=b"{not json", headers=headers(None))
    assert reply.status_code == 401


async def test_a_body_that_is_not_json_is_a_415(edge: httpx.AsyncClient, gateway: Gateway) -> None:
    reply = await edge.post(
        ALERTMANAGER_PATH, content=body(), headers=headers(content_type="text/plain")
    )
    assert reply.status_code == 415
    assert "application/json" in reply.json()["error"]
    assert gateway.requests == []


async def test_json_with_a_charset_is_json(edge: httpx.AsyncClient) -> None:
    reply = await edge.post(
        ALERTMANAGER_PATH,
        content=body(),
        headers=headers(content_type="application/json; charset=utf-8"),
    )
    assert reply.status_code == 200


async def test_a_body_over_the_limit_is_a_413_by_its_declared_length(
    edge: httpx.AsyncClient, gateway: Gateway
) -> None:
    large = body(padding="x" * 5000)
    reply = await edge.post(ALERTMANAGER_PATH, content=large, headers=headers())
    assert reply.status_code == 413
    assert "larger than 4096 bytes" in reply.json()["error"]
    assert gateway.requests == []


async def test_a_chunked_body_over_the_limit_is_a_413_too(
    edge: httpx.AsyncClient, gateway: Gateway
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000  # no Content-Length: only counting can catch it

    reply = await edge.post(ALERTMANAGER_PATH, content=chunks(), headers=headers())
    assert reply.status_code == 413
    assert gateway.requests == []


async def test_malformed_json_is_a_400_naming_the_problem(edge: httpx.AsyncClient) -> None:
    reply = await edge.post(ALERTMANAGER_PATH, content=b"{not json", headers=headers())
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid webhook body"


async def test_a_signed_body_is_accepted_and_a_tampered_one_is_not(
    signed_edge: httpx.AsyncClient, gateway: Gateway
) -> None:
    sent = body()
    good = {**headers(), "X-Kubernaut-Signature": sign(SECRET, sent)}
    assert (
        await signed_edge.post(ALERTMANAGER_PATH, content=sent, headers=good)
    ).status_code == 200
    tampered = body(status="resolved")
    reply = await signed_edge.post(ALERTMANAGER_PATH, content=tampered, headers=good)
    assert reply.status_code == 401
    assert "signature does not match" in reply.json()["error"]
    unsigned = await signed_edge.post(ALERTMANAGER_PATH, content=sent, headers=headers())
    assert unsigned.status_code == 401
    assert len(gateway.requests) == 1


async def test_unknown_paths_and_methods_are_json_too(edge: httpx.AsyncClient) -> None:
    missing = await edge.get("/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong = await edge.get(ALERTMANAGER_PATH, headers=headers())
    assert wrong.status_code == 405 and "error" in wrong.json()


async def test_the_openapi_document_describes_the_webhook(edge: httpx.AsyncClient) -> None:
    document = (await edge.get("/openapi.json")).json()
    operation = document["paths"][ALERTMANAGER_PATH]["post"]
    assert {"400", "401", "413", "415", "503"} <= set(operation["responses"])
    assert "AlertmanagerWebhook" in document["components"]["schemas"]


async def test_the_authenticator_compares_every_token() -> None:
    # A prefix of a valid token, or a valid token plus more, is not valid.
    check = Authenticator.of([NEW]).check
    for wrong in (NEW[:-1], NEW + "0", ""):
        with pytest.raises(Unauthorized):
            await check({"authorization": f"Bearer {wrong}"}, b"")
    # The scheme is case-insensitive.
    assert await check({"authorization": f"bearer {NEW}"}, b"") == "token#1"


def test_settings_refuse_an_open_door_unless_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("TOKENS", "TOKENS_FILE", "ALLOW_ANONYMOUS", "HMAC_SECRET"):
        monkeypatch.delenv(f"KUBERNAUT_HTTP_{key}", raising=False)
    with pytest.raises(ValueError, match="no webhook tokens"):
        EdgeSettings().authenticator()
    assert EdgeSettings(allow_anonymous=True).authenticator() is None

    monkeypatch.setenv("KUBERNAUT_HTTP_TOKENS", f"{OLD}, {NEW}")
    assert EdgeSettings().authenticator() == Authenticator.of([OLD, NEW])
    assert OLD not in repr(EdgeSettings())  # secrets stay out of logs and reprs

    monkeypatch.delenv("KUBERNAUT_HTTP_TOKENS")
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{NEW}\n\n")
    monkeypatch.setenv("KUBERNAUT_HTTP_TOKENS_FILE", str(token_file))
    from_file = EdgeSettings().authenticator()
    assert from_file is not None and from_file.tokens == (NEW.encode(),)
    # The file's tokens are re-read when it changes (tests/unit/test_rotation.py).
    assert from_file.token_file is not None


# -- who the sender is, and TokenReview ------------------------------------------------------

ALERTMANAGER = "system:serviceaccount:monitoring:alertmanager"
STRANGER = "system:serviceaccount:default:stranger"
SA_TOKEN = "eyJhbGciOiJSUzI1NiJ9.serviceaccount-token.signature"
STRANGER_TOKEN = "eyJhbGciOiJSUzI1NiJ9.stranger-token.signature"


class Reviewer:
    """Stands in for a token reviewer: knows the users of some tokens, or cannot answer."""

    def __init__(self, users: dict[str, str], *, unavailable: bool = False) -> None:
        self.users = users
        self.unavailable = unavailable
        self.reviewed: list[str] = []

    async def review(self, token: str) -> str:
        self.reviewed.append(token)
        if self.unavailable:
            raise ReviewUnavailable("the Kubernetes API server cannot review tokens now")
        if token not in self.users:
            raise Unauthorized("the bearer token is not valid")
        return self.users[token]


async def sender_of(request: Request) -> JSONResponse:
    return JSONResponse({"sender": request.state.sender})


def sender_echo(authenticator: Authenticator | None) -> SenderCheck:
    """An application that answers with the identity SenderCheck gave the request."""
    app = Starlette(routes=[Route("/hook", sender_of, methods=["POST"])])
    return SenderCheck(app, authenticator, frozenset({"/hook"}))


async def sender_seen(authenticator: Authenticator | None, token: str | None) -> httpx.Response:
    transport = httpx.ASGITransport(app=sender_echo(authenticator))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        return await client.post("/hook", content=body(), headers=headers(token))


@pytest.mark.parametrize(("token", "identity"), [(OLD, "token#1"), (NEW, "token#2")])
async def test_a_static_token_sender_is_named_by_the_tokens_position(
    token: str, identity: str
) -> None:
    reply = await sender_seen(Authenticator.of([OLD, NEW]), token)
    assert reply.json() == {"sender": identity}


async def test_an_anonymous_sender_is_named_by_its_address() -> None:
    reply = await sender_seen(None, None)
    assert reply.json() == {"sender": "127.0.0.1"}  # httpx's ASGI transport's client


async def test_a_sender_without_an_address_is_anonymous() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope["state"])
        await JSONResponse({})(scope, receive, send)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body(), "more_body": False}

    async def send(message: Any) -> None:
        pass

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/hook",
        "headers": [(b"content-type", b"application/json")],
        "client": None,
    }
    await SenderCheck(app, None, frozenset({"/hook"}))(scope, receive, send)
    assert seen == {"sender": "anonymous"}


async def test_only_a_token_that_is_not_static_goes_to_the_reviewer() -> None:
    reviewer = Reviewer({SA_TOKEN: ALERTMANAGER})
    authenticator = Authenticator.of([OLD, NEW], reviewer=reviewer)
    assert (await sender_seen(authenticator, NEW)).json() == {"sender": "token#2"}
    assert reviewer.reviewed == []
    assert (await sender_seen(authenticator, SA_TOKEN)).json() == {"sender": ALERTMANAGER}
    assert reviewer.reviewed == [SA_TOKEN]
    refused = await sender_seen(authenticator, STRANGER_TOKEN)
    assert refused.status_code == 401
    assert refused.json() == {"error": "the bearer token is not valid"}


async def test_a_reviewed_sender_must_sign_too_and_is_not_reviewed_unsigned() -> None:
    reviewer = Reviewer({SA_TOKEN: ALERTMANAGER})
    authenticator = Authenticator.of([NEW], SECRET, reviewer=reviewer)
    check = authenticator.check
    sent = body()
    with pytest.raises(Unauthorized, match="X-Kubernaut-Signature header must be"):
        await check({"authorization": f"Bearer {SA_TOKEN}"}, sent)
    assert reviewer.reviewed == []  # no API server call for a sender without the secret
    signed = {"authorization": f"Bearer {SA_TOKEN}", "x-kubernaut-signature": sign(SECRET, sent)}
    assert await check(signed, sent) == ALERTMANAGER


async def test_a_review_that_cannot_be_made_is_a_503_to_retry(gateway: Gateway) -> None:
    authenticator = Authenticator.of([NEW], reviewer=Reviewer({}, unavailable=True))
    async for client in client_for(create_app(gateway, authenticator)):
        reply = await client.post(ALERTMANAGER_PATH, content=body(), headers=headers(SA_TOKEN))
        assert reply.status_code == 503
        assert reply.json() == {"error": "cannot verify the token now; retry"}
        assert SA_TOKEN not in reply.text
    assert gateway.requests == []


async def test_no_token_reaches_logs_or_answers(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A real TokenReviewer whose cluster cannot be reached, and one whose users are known.
    unreachable = TokenReviewer(
        TokenReviewSettings(allowed_users=(ALERTMANAGER,)),
        KubeConnection(KubeSettings(kubeconfig="/nonexistent/kubeconfig")),
    )
    known = Reviewer({SA_TOKEN: ALERTMANAGER, STRANGER_TOKEN: STRANGER})
    answers: list[str] = []
    for reviewer in (unreachable, known):
        app = create_app(gateway, Authenticator.of([OLD, NEW], reviewer=reviewer))
        async for client in client_for(app):
            for token in (SA_TOKEN, STRANGER_TOKEN, "garbage-token-123", OLD):
                reply = await client.post(ALERTMANAGER_PATH, content=body(), headers=headers(token))
                answers.append(reply.text + str(reply.headers))
    await unreachable.close()
    logged = [str(record.__dict__) for record in caplog.records]
    assert any("token review unavailable" in line for line in logged)
    for token in (SA_TOKEN, STRANGER_TOKEN, "garbage-token-123", OLD, NEW):
        assert not [line for line in logged + answers if token in line], token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedReviewer(TokenReviewer):
    """The real TokenReviewer (cache, allow list, settings) with the API server's answers
    scripted per token: a username, "" for unauthenticated, or an exception."""

    def __init__(
        self,
        answers: dict[str, str | Exception],
        clock: Clock,
        *,
        allowed: tuple[str, ...] = (ALERTMANAGER,),
        max_cached: int = 100,
    ) -> None:
        settings = TokenReviewSettings(allowed_users=allowed, cache_seconds=60)
        connection = KubeConnection(KubeSettings(kubeconfig="/nonexistent/kubeconfig"))
        super().__init__(settings, connection, clock=clock, max_cached=max_cached)
        self.answers = answers
        self.asked: list[str] = []

    async def _token_review(self, token: str) -> str:
        self.asked.append(token)
        await asyncio.sleep(0)  # an API call yields to other requests
        answer = self.answers[token]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_the_reviewer_accepts_only_allowed_users_and_names_the_refused() -> None:
    reviewer = ScriptedReviewer({SA_TOKEN: ALERTMANAGER, STRANGER_TOKEN: STRANGER}, Clock())
    assert await reviewer.review(SA_TOKEN) == ALERTMANAGER
    with pytest.raises(Unauthorized) as refused:
        await reviewer.review(STRANGER_TOKEN)
    assert STRANGER in str(refused.value) and STRANGER_TOKEN not in str(refused.value)


async def test_verdicts_are_cached_by_digest_positive_long_and_negative_briefly() -> None:
    clock = Clock()
    reviewer = ScriptedReviewer({SA_TOKEN: ALERTMANAGER, "garbage": ""}, clock)
    for _ in range(3):
        assert await reviewer.review(SA_TOKEN) == ALERTMANAGER
        with pytest.raises(Unauthorized, match="not valid"):
            await reviewer.review("garbage")
    assert reviewer.asked == [SA_TOKEN, "garbage"]
    # Keyed by the SHA-256 of the token, never the token.
    assert set(reviewer._verdicts) == {
        hashlib.sha256(token.encode()).digest() for token in (SA_TOKEN, "garbage")
    }
    clock.now += 5  # the negative verdict is gone, the positive one stays
    await reviewer.review(SA_TOKEN)
    with pytest.raises(Unauthorized):
        await reviewer.review("garbage")
    assert reviewer.asked == [SA_TOKEN, "garbage", "garbage"]
    clock.now += 60
    await reviewer.review(SA_TOKEN)
    assert reviewer.asked[-1] == SA_TOKEN


async def test_an_unavailable_review_is_not_cached_and_bursts_share_one_call() -> None:
    reviewer = ScriptedReviewer({SA_TOKEN: ReviewUnavailable("down")}, Clock())
    with pytest.raises(ReviewUnavailable):
        await reviewer.review(SA_TOKEN)
    reviewer.answers[SA_TOKEN] = ALERTMANAGER
    burst = await asyncio.gather(*(reviewer.review(SA_TOKEN) for _ in range(10)))
    assert burst == [ALERTMANAGER] * 10
    assert reviewer.asked == [SA_TOKEN, SA_TOKEN]


async def test_the_cache_is_bounded() -> None:
    tokens = [f"token-{n}" for n in range(10)]
    reviewer = ScriptedReviewer(dict.fromkeys(tokens, ALERTMANAGER), Clock(), max_cached=3)
    for token in tokens:
        await reviewer.review(token)
    assert len(reviewer._verdicts) == 3
    await reviewer.review(tokens[-1])  # the newest are kept
    assert len(reviewer.asked) == 10


def test_token_review_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = "KUBERNAUT_HTTP_TOKEN_REVIEW_"
    for key in ("ENABLED", "AUDIENCES", "ALLOWED_USERS", "CACHE_SECONDS"):
        monkeypatch.delenv(prefix + key, raising=False)
    assert reviewer_for(TokenReviewSettings(), KubeSettings()) is None  # off unless chosen
    monkeypatch.setenv(prefix + "ENABLED", "true")
    with pytest.raises(ValueError, match="allow list"):
        reviewer_for(TokenReviewSettings(), KubeSettings())
    monkeypatch.setenv(prefix + "AUDIENCES", "kubernaut, ")
    monkeypatch.setenv(prefix + "ALLOWED_USERS", f"{ALERTMANAGER}, {STRANGER}")
    settings = TokenReviewSettings()
    assert settings.audiences == ("kubernaut",)
    assert settings.allowed_users == (ALERTMANAGER, STRANGER)
    assert settings.cache_seconds == 60
    assert isinstance(reviewer_for(settings, KubeSettings()), TokenReviewer)
