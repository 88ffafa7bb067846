"""People's access: roles in the call table, OIDC tokens checked against a real local
issuer (real RSA keys, JWKS over loopback HTTP), personal certificates, and the shared
operator identity off unless the dev stack turns it on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from kubernaut.devstack.oidc import LocalIssuer
from kubernaut.runtime import edges
from kubernaut.runtime.access import Access, AccessSettings, Denied, Unauthenticated
from kubernaut.runtime.edges import Role
from kubernaut.runtime.identity import Peer, _peer
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.principals import PrincipalKind

S = ServiceName

BINDINGS = {
    "viewer": ["group:everyone"],
    "approver": ["group:approvers", "cert:carol"],
    "operator": ["user:bob@example.com"],
    "admin": ["group:platform"],
}


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    started = LocalIssuer().start()
    yield started
    started.stop()


def _access(issuer: LocalIssuer | None = None, **overrides: object) -> Access:
    env: dict[str, object] = {"role_bindings": BINDINGS}
    if issuer is not None:
        env |= {"oidc_issuer": issuer.url, "oidc_audience": issuer.audience}
    env |= overrides
    return Access(AccessSettings(**env))  # type: ignore[arg-type]


NO_PEER = Peer(None, None)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_roles_come_from_the_call_table_reads_approvals_actions_and_the_rest() -> None:
    assert edges.role_needed(S.WORKFLOW, "GetWorkflow") is Role.VIEWER
    assert edges.role_needed(S.STORAGE, "ListIncidents") is Role.VIEWER
    assert edges.role_needed(S.WORKFLOW, "DecideApproval") is Role.APPROVER
    assert edges.role_needed(S.EXECUTOR, "ExecuteAction") is Role.OPERATOR
    assert edges.role_needed(S.EXECUTOR, "RollbackAction") is Role.OPERATOR
    # Anything else that changes something is the administrator's.
    assert edges.role_needed(S.GATEWAY, "SubmitAlerts") is Role.ADMIN
    # The audit-trail writes are the services' alone.
    assert edges.role_needed(S.STORAGE, "RecordAction") is None
    # Each role includes the ones before it.
    assert edges.role_allows({"operator"}, Role.APPROVER)
    assert not edges.role_allows({"approver"}, Role.OPERATOR)
    assert edges.role_allows({"admin"}, Role.OPERATOR)
    assert not edges.role_allows(set(), Role.VIEWER)


async def test_a_token_names_the_person_and_their_groups_give_roles(issuer: LocalIssuer) -> None:
    access = _access(issuer)
    alice = await access.principal(
        NO_PEER, _bearer(issuer.token("alice@example.com", groups=["approvers", "everyone"]))
    )
    assert (alice.kind, alice.name) == (PrincipalKind.PERSON, "alice@example.com")
    assert alice.roles == {"approver", "viewer"}
    access.check(alice, S.WORKFLOW, "DecideApproval")
    access.check(alice, S.STORAGE, "GetIncident")
    with pytest.raises(Denied, match=r"needs the operator role \(held: approver, viewer\)"):
        access.check(alice, S.EXECUTOR, "ExecuteAction")

    bob = await access.principal(NO_PEER, _bearer(issuer.token("bob@example.com")))
    assert bob.roles == {"operator"}
    access.check(bob, S.EXECUTOR, "RollbackAction")
    access.check(bob, S.WORKFLOW, "DecideApproval")  # the approver's rights too
    with pytest.raises(Denied, match="needs the admin role"):
        access.check(bob, S.GATEWAY, "SubmitAlerts")
    with pytest.raises(Denied, match="only Kubernaut's own services"):
        access.check(bob, S.STORAGE, "RecordAction")

    nobody = await access.principal(NO_PEER, _bearer(issuer.token("eve@example.com")))
    with pytest.raises(Denied, match=r"needs the viewer role \(held: none\)"):
        access.check(nobody, S.STORAGE, "ListIncidents")


async def test_tokens_that_do_not_hold_are_refused_saying_why(issuer: LocalIssuer) -> None:
    access = _access(issuer)
    cases = {
        "Signature has expired": issuer.token("a@example.com", lifetime_seconds=-120),
        "Audience doesn't match": issuer.token("a@example.com", audience="someone-else"),
        "Invalid issuer": issuer.token("a@example.com", issuer="https://evil.example.com"),
    }
    for reason, token in cases.items():
        with pytest.raises(Unauthenticated, match=reason):
            await access.principal(NO_PEER, _bearer(token))
    # Signed by a key the issuer never published, under a key id it did publish.
    forged = jwt.encode(
        jwt.decode(cases["Signature has expired"], options={"verify_signature": False})
        | {"exp": 2**31, "iss": issuer.url, "aud": issuer.audience},
        rsa.generate_private_key(65537, 2048),
        algorithm="RS256",
        headers={"kid": issuer.jwks()["keys"][0]["kid"]},
    )
    with pytest.raises(Unauthenticated, match="Signature verification failed"):
        await access.principal(NO_PEER, _bearer(forged))
    with pytest.raises(Unauthenticated, match="malformed"):
        await access.principal(NO_PEER, _bearer("not.a-token"))
    # No issuer configured: a token is an error, not a silent anonymous call.
    with pytest.raises(Unauthenticated, match="no OIDC issuer is configured"):
        await _access().principal(NO_PEER, _bearer(issuer.token("a@example.com")))


async def test_rotated_issuer_keys_are_fetched_when_a_token_names_a_new_one(
    issuer: LocalIssuer,
) -> None:
    access = _access(issuer)
    before = issuer.token("alice@example.com", groups=["everyone"])
    await access.principal(NO_PEER, _bearer(before))
    fetches = issuer.jwks_fetches
    issuer.rotate()
    after = issuer.token("alice@example.com", groups=["everyone"])
    assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
    person = await access.principal(NO_PEER, _bearer(after))
    assert person.name == "alice@example.com"
    assert issuer.jwks_fetches == fetches + 1
    # The old key still verifies until the issuer drops it from its set.
    await access.principal(NO_PEER, _bearer(before))


def test_a_personal_certificate_names_the_person() -> None:
    peer = _peer("spiffe://cluster.local/person/carol", "cluster.local", "kubernaut")
    assert (peer.person, peer.account) == ("carol", None)
    service = _peer("spiffe://cluster.local/ns/kubernaut/sa/workflow", "cluster.local", "kubernaut")
    assert (service.person, service.account) == (None, "workflow")
    # Another trust domain's "person" is nobody here.
    assert _peer("spiffe://evil.example/person/carol", "cluster.local", "kubernaut").person is None


async def test_certificate_people_get_the_roles_bound_to_cert_subjects() -> None:
    access = _access()
    carol = await access.principal(Peer("spiffe://cluster.local/person/carol", None, "carol"), {})
    assert (carol.kind, carol.name, carol.roles) == (
        PrincipalKind.PERSON,
        "carol",
        frozenset({"approver"}),
    )
    access.check(carol, S.WORKFLOW, "DecideApproval")


async def test_the_shared_operator_is_refused_unless_the_dev_stack_turns_it_on() -> None:
    operator = Peer("spiffe://cluster.local/ns/kubernaut/sa/operator", "operator")
    production = _access(shared_operator=False)
    principal = await production.principal(operator, {})
    assert principal.kind is PrincipalKind.OPERATOR
    with pytest.raises(Denied, match="local dev stack only"):
        production.check(principal, S.WORKFLOW, "GetWorkflow")
    _access(shared_operator=True).check(principal, S.EXECUTOR, "ExecuteAction")
    # Services stay ruled by the call table, whatever the people's settings.
    workflow = await production.principal(
        Peer("spiffe://cluster.local/ns/kubernaut/sa/workflow", "workflow"), {}
    )
    production.check(workflow, S.EXECUTOR, "ExecuteAction")
    with pytest.raises(Denied, match="not in Kubernaut's call table"):
        production.check(workflow, S.WORKFLOW, "DecideApproval")


EDGE = Peer("spiffe://cluster.local/ns/kubernaut/sa/gateway-http", "gateway-http")


async def test_the_edge_decides_approvals_only_for_people_it_authenticated() -> None:
    access = _access(role_bindings={"approver": ["slack:U0AL1CE", "link:oncall"]})
    alice = await access.principal(EDGE, {"kubernaut-on-behalf-of": "slack:U0AL1CE"})
    assert (alice.kind, alice.name, alice.roles, alice.via) == (
        PrincipalKind.PERSON,
        "slack:U0AL1CE",
        frozenset({"approver"}),
        "gateway-http",
    )
    assert alice.label == "person:slack:U0AL1CE"
    assert alice.audit_label == "person:slack:U0AL1CE via gateway-http"
    access.check(alice, S.WORKFLOW, "DecideApproval")
    # For a person, the edge decides approvals and nothing else, whatever their roles.
    with pytest.raises(Denied, match="acts for people only to decide approvals"):
        access.check(alice, S.WORKFLOW, "GetWorkflow")
    # A person the role bindings do not name may not approve.
    bob = await access.principal(EDGE, {"kubernaut-on-behalf-of": "slack:U0B0B"})
    with pytest.raises(Denied, match="needs the approver role"):
        access.check(bob, S.WORKFLOW, "DecideApproval")
    # The edge never speaks for token or certificate people: they call for themselves.
    for subject in ("user:root@example.com", "cert:carol", "group:platform", "slack:", "x"):
        with pytest.raises(Unauthenticated, match="acts only for a Slack user"):
            await access.principal(EDGE, {"kubernaut-on-behalf-of": subject})
    # On its own account, the edge submits alerts and may not decide.
    edge = await access.principal(EDGE, {})
    assert edge.kind is PrincipalKind.EDGE
    access.check(edge, S.GATEWAY, "SubmitAlerts")
    with pytest.raises(Denied, match="only for a person"):
        access.check(edge, S.WORKFLOW, "DecideApproval")
    # Only the edge's word counts: a service passing the header is still itself.
    workflow = await access.principal(
        Peer("spiffe://cluster.local/ns/kubernaut/sa/workflow", "workflow"),
        {"kubernaut-on-behalf-of": "slack:U0AL1CE"},
    )
    assert (workflow.kind, workflow.via) == (PrincipalKind.SERVICE, "")


def test_bindings_and_algorithms_are_checked_at_start() -> None:
    with pytest.raises(ValidationError, match="must be group:<name>"):
        AccessSettings(role_bindings={"viewer": ["alice"]})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        AccessSettings(role_bindings={"superuser": ["group:x"]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="public-key"):
        Access(
            AccessSettings(oidc_issuer="http://x", oidc_audience="k", oidc_algorithms=("HS256",))
        )
    with pytest.raises(ValueError, match="AUDIENCE is required"):
        Access(AccessSettings(oidc_issuer="http://x"))


def test_role_bindings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNAUT_ACCESS_ROLE_BINDINGS", json.dumps(BINDINGS))
    settings = AccessSettings()
    assert settings.role_bindings[Role.OPERATOR] == ("user:bob@example.com",)


def test_the_cli_calls_as_the_person_its_flags_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509

    from kubernaut.cli.identity import identity_of
    from kubernaut.cli.main import main, parser
    from kubernaut.runtime.certs import init_dev_pki
    from kubernaut.runtime.settings import RuntimeSettings

    args = parser().parse_args(
        ["--token-file", str(tmp_path / "me.token"), "workflows", "approve", "wf-1"]
    )
    identity = identity_of(args)
    assert identity.token_file == tmp_path / "me.token"
    # The token goes with every call: no file, no call made as nobody.
    clients = identity.clients(RuntimeSettings(state_dir=tmp_path))
    assert clients.token_file is not None
    with pytest.raises(FileNotFoundError, match=r"me\.token"):
        clients.token_file.token()
    (tmp_path / "me.token").write_text("header.claims.signature\n")
    assert clients.token_file.token() == "header.claims.signature"

    monkeypatch.setenv("KUBERNAUT_STATE_DIR", str(tmp_path))
    init_dev_pki(tmp_path / "certs", ["operator"], trust_domain="cluster.local", namespace="k")
    assert main(["certs", "person", "dave"]) == 0
    assert "cert:dave" in capsys.readouterr().out
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "person-dave.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/person/dave"
    ]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert parser().parse_args(["--cert", "dave", "incidents", "list"]).cert == "dave"


async def test_kubernaut_login_gets_a_token_by_the_device_grant(
    issuer: LocalIssuer, tmp_path: Path
) -> None:
    from kubernaut.cli.login import LoginFailed, device_login

    shown: list[str] = []

    def person_reads_and_confirms(text: str) -> None:
        # What the person does in a browser with the code the CLI showed.
        shown.append(text)
        issuer.approve_device(text.rsplit(" ", 1)[1], "alice@example.com", groups=["approvers"])

    saved = await device_login(
        issuer.url, issuer.audience, tmp_path / "token", tell=person_reads_and_confirms
    )
    assert "/activate?user_code=" in shown[0]
    assert saved.stat().st_mode & 0o777 == 0o600
    person = await _access(issuer).principal(NO_PEER, _bearer(saved.read_text().strip()))
    assert (person.name, person.roles) == ("alice@example.com", frozenset({"approver"}))

    # A code nobody confirms expires: the CLI says so instead of waiting for ever.
    ticks = iter([0.0, 0.5, 700.0])
    with pytest.raises(LoginFailed, match="expired"):
        await device_login(
            issuer.url,
            issuer.audience,
            tmp_path / "never",
            tell=shown.append,
            clock=lambda: next(ticks),
        )
    assert not (tmp_path / "never").exists()


async def test_the_console_carries_a_persons_own_token_and_makes_only_its_calls(
    issuer: LocalIssuer,
) -> None:
    access = _access(issuer)
    admin = await access.principal(
        EDGE, _bearer(issuer.token("root@example.com", groups=["platform"]))
    )
    assert (admin.kind, admin.name, admin.via, admin.vouched) == (
        PrincipalKind.PERSON,
        "root@example.com",
        "gateway-http",
        False,
    )
    assert admin.audit_label == "person:root@example.com via gateway-http"
    access.check(admin, S.STORAGE, "ListIncidents")
    access.check(admin, S.WORKFLOW, "DecideApproval")
    # Whatever the person's roles, the console makes its own calls only.
    with pytest.raises(Denied, match="not a call the console makes"):
        access.check(admin, S.EXECUTOR, "ExecuteAction")
    # The token is checked here, not taken on the edge's word.
    with pytest.raises(Unauthenticated):
        await access.principal(EDGE, _bearer(issuer.token("x@example.com", audience="other")))
    viewer = await access.principal(
        EDGE, _bearer(issuer.token("eve@example.com", groups=["everyone"]))
    )
    access.check(viewer, S.STORAGE, "GetIncident")
    with pytest.raises(Denied, match="needs the approver role"):
        access.check(viewer, S.WORKFLOW, "DecideApproval")
    # Without a person, the edge reads nothing.
    with pytest.raises(Denied, match="only for a person"):
        access.check(await access.principal(EDGE, {}), S.STORAGE, "ListIncidents")
