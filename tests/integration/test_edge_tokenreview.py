"""TokenReview at the edge against a real API server: ServiceAccount tokens from the
TokenRequest API are accepted only for the allowed users and audiences, the edge's own
identity needs no more than `system:auth-delegator`, and an API server that cannot be
reached means "retry", never "accepted" or "refused"."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kubernaut.devstack.identities import write_token_kubeconfig
from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.processes import free_port
from kubernaut.edge.security import Authenticator, ReviewUnavailable, SenderCheck, Unauthorized
from kubernaut.edge.settings import TokenReviewSettings
from kubernaut.edge.tokenreview import TokenReviewer
from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.settings import KubeSettings
from tests.fixtures.cluster import eventually, kube_api

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EDGE_AUDIENCE = "kubernaut-edge"


@dataclass(frozen=True)
class Accounts:
    """A namespace of the module's own with ServiceAccounts `alertmanager` (allowed),
    `stranger` (not allowed), `edge` (bound to system:auth-delegator, as the chart's edge
    would be) and `nobody` (no permissions at all)."""

    namespace: str
    auth_delegator_binding: str

    def user(self, account: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{account}"


@pytest.fixture(scope="module")
async def accounts(kube: LocalCluster) -> AsyncIterator[Accounts]:
    namespace = f"tokenreview-{uuid.uuid4().hex[:8]}"
    await kube_api(kube, "POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    for account in ("alertmanager", "stranger", "edge", "nobody"):
        await kube_api(
            kube,
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"metadata": {"name": account}},
        )
    binding = f"{namespace}-edge-auth-delegator"
    await kube_api(
        kube,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "metadata": {"name": binding},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "edge", "namespace": namespace}],
        },
    )
    try:
        yield Accounts(namespace, binding)
    finally:
        await kube_api(
            kube, "DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding}"
        )
        await kube_api(kube, "DELETE", f"/api/v1/namespaces/{namespace}")


async def token_for(
    kube: LocalCluster, accounts: Accounts, account: str, audiences: list[str] | None = None
) -> str:
    """A fresh token for the ServiceAccount (TokenRequest API), for the API server's own
    audience unless `audiences` are given."""
    spec: dict[str, Any] = {"expirationSeconds": 600}
    if audiences is not None:
        spec["audiences"] = audiences
    answer = await kube_api(
        kube,
        "POST",
        f"/api/v1/namespaces/{accounts.namespace}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    token: str = answer["status"]["token"]
    return token


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> Path:
    return write_token_kubeconfig(path, server, ca_file, "edge", token)


def reviewer_for(
    kubeconfig: Path, allowed_users: tuple[str, ...], audiences: tuple[str, ...] = ()
) -> TokenReviewer:
    settings = TokenReviewSettings(enabled=True, allowed_users=allowed_users, audiences=audiences)
    connection = KubeConnection(KubeSettings(kubeconfig=str(kubeconfig), request_timeout_seconds=5))
    return TokenReviewer(settings, connection)


@pytest.fixture
async def edge_kubeconfig(kube: LocalCluster, accounts: Accounts, tmp_path: Path) -> Path:
    """The credentials of the `edge` ServiceAccount: the edge reviews as itself, with only
    the permissions system:auth-delegator grants."""
    token = await token_for(kube, accounts, "edge")
    return write_kubeconfig(
        tmp_path / "edge.kubeconfig", kube.info.apiserver_url, kube.info.ca_file, token
    )


@pytest.fixture
async def reviewer(
    edge_kubeconfig: Path, accounts: Accounts, kube: LocalCluster
) -> AsyncIterator[TokenReviewer]:
    reviewer = reviewer_for(edge_kubeconfig, (accounts.user("alertmanager"),))

    async def can_review() -> bool:
        # The binding was just made: RBAC's caches may take a moment to see it.
        try:
            await reviewer._token_review("not-a-token")
        except ReviewUnavailable:
            return False
        return True

    await eventually(can_review, "the edge's system:auth-delegator binding to apply")
    yield reviewer
    await reviewer.close()


async def test_the_allowed_service_account_is_accepted_by_name(
    reviewer: TokenReviewer, kube: LocalCluster, accounts: Accounts
) -> None:
    token = await token_for(kube, accounts, "alertmanager")
    assert await reviewer.review(token) == accounts.user("alertmanager")


async def test_another_service_account_is_refused_by_name(
    reviewer: TokenReviewer, kube: LocalCluster, accounts: Accounts
) -> None:
    token = await token_for(kube, accounts, "stranger")
    with pytest.raises(Unauthorized) as refused:
        await reviewer.review(token)
    assert accounts.user("stranger") in str(refused.value)
    assert token not in str(refused.value)


@pytest.mark.parametrize(
    "garbage",
    [
        "garbage",
        # Well-formed JWT, signed by nobody the API server trusts.
        "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
    ],
)
async def test_a_garbage_token_is_refused(reviewer: TokenReviewer, garbage: str) -> None:
    with pytest.raises(Unauthorized, match="the bearer token is not valid"):
        await reviewer.review(garbage)


async def test_audiences_are_enforced_when_set(
    edge_kubeconfig: Path, reviewer: TokenReviewer, kube: LocalCluster, accounts: Accounts
) -> None:
    allowed = (accounts.user("alertmanager"),)
    for_the_edge = await token_for(kube, accounts, "alertmanager", [EDGE_AUDIENCE])
    for_someone_else = await token_for(kube, accounts, "alertmanager", ["someone-else"])
    for_the_api_server = await token_for(kube, accounts, "alertmanager")
    strict = reviewer_for(edge_kubeconfig, allowed, audiences=(EDGE_AUDIENCE,))
    try:
        assert await strict.review(for_the_edge) == accounts.user("alertmanager")
        for token in (for_someone_else, for_the_api_server):
            with pytest.raises(Unauthorized, match="not valid"):
                await strict.review(token)
    finally:
        await strict.close()
    # Without audiences the API server's own is required: a token made for another
    # service's audience is not a credential for the edge either.
    with pytest.raises(Unauthorized, match="not valid"):
        await reviewer.review(for_the_edge)


async def test_the_edge_names_the_reviewed_sender(
    reviewer: TokenReviewer, kube: LocalCluster, accounts: Accounts
) -> None:
    async def sender_of(request: Request) -> JSONResponse:
        return JSONResponse({"sender": request.state.sender})

    app = SenderCheck(
        Starlette(routes=[Route("/hook", sender_of, methods=["POST"])]),
        Authenticator.of(["static-token"], reviewer=reviewer),
        frozenset({"/hook"}),
    )
    token = await token_for(kube, accounts, "alertmanager")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:

        async def post(bearer: str) -> httpx.Response:
            return await client.post(
                "/hook", json={}, headers={"Authorization": f"Bearer {bearer}"}
            )

        assert (await post(token)).json() == {"sender": accounts.user("alertmanager")}
        assert (await post("static-token")).json() == {"sender": "token#1"}
        stranger = await post(await token_for(kube, accounts, "stranger"))
        assert stranger.status_code == 401
        assert accounts.user("stranger") in stranger.json()["error"]


async def test_an_identity_without_review_rights_cannot_review(
    kube: LocalCluster, accounts: Accounts, tmp_path: Path
) -> None:
    # What the edge would see without its system:auth-delegator binding: 503, not 401.
    nobody = write_kubeconfig(
        tmp_path / "nobody.kubeconfig",
        kube.info.apiserver_url,
        kube.info.ca_file,
        await token_for(kube, accounts, "nobody"),
    )
    reviewer = reviewer_for(nobody, (accounts.user("alertmanager"),))
    try:
        with pytest.raises(ReviewUnavailable, match="403"):
            await reviewer.review(await token_for(kube, accounts, "alertmanager"))
    finally:
        await reviewer.close()


async def test_an_unreachable_api_server_means_retry(
    kube: LocalCluster, accounts: Accounts, tmp_path: Path
) -> None:
    token = await token_for(kube, accounts, "alertmanager")
    closed_port = write_kubeconfig(
        tmp_path / "closed.kubeconfig", f"https://127.0.0.1:{free_port()}", kube.info.ca_file, token
    )
    for kubeconfig in (closed_port, tmp_path / "missing.kubeconfig"):
        reviewer = reviewer_for(kubeconfig, (accounts.user("alertmanager"),))
        try:
            with pytest.raises(ReviewUnavailable) as unavailable:
                await reviewer.review(token)
            assert token not in str(unavailable.value)
            # Not remembered: the next request asks again.
            with pytest.raises(ReviewUnavailable):
                await reviewer.review(token)
        finally:
            await reviewer.close()
