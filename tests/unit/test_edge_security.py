"""The edge's door: tokens (with rotation), signatures, size and content-type limits, and
that every refusal is a JSON body naming the reason, before the body is even parsed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernaut.gateway.v1 import gateway_pb2

from gateway_http.app import ALERTMANAGER_PATH, create_app
from gateway_http.main import EdgeSettings
from gateway_http.security import Authenticator, Unauthorized, sign

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


def test_the_authenticator_compares_every_token() -> None:
    # A prefix of a valid token, or a valid token plus more, is not valid.
    check = Authenticator.of([NEW]).check
    for wrong in (NEW[:-1], NEW + "0", ""):
        with pytest.raises(Unauthorized):
            check({"authorization": f"Bearer {wrong}"}, b"")
    check({"authorization": f"bearer {NEW}"}, b"")  # the scheme is case-insensitive


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
    assert EdgeSettings().authenticator() == Authenticator.of([NEW])
