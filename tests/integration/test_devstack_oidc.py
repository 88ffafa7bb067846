"""The dev stack's OIDC issuer as its own process (what `kubernaut dev-stack up` starts for
the web console): it publishes its discovery document, offers the dev stack's people on its
sign-in page, and keeps its signing key across a restart, so that tokens and console
sessions it issued stay valid."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from kubernaut.devstack.oidc import DEV_PEOPLE, DEV_ROLE_BINDINGS, IssuerProcess, sign_in_hint
from kubernaut.devstack.stack import Component, StackInfo
from kubernaut.devstack.system import Tuning, edge_env, service_env
from kubernaut.runtime.access import AccessSettings
from tests.fixtures.devstack import recorded_stack


def _key_ids(issuer: IssuerProcess) -> list[str]:
    keys = httpx.get(f"{issuer.url}/keys", timeout=5).json()["keys"]
    return [key["kid"] for key in keys]


def test_the_issuer_process_offers_the_dev_people_and_keeps_its_key(tmp_path: Path) -> None:
    key_file = tmp_path / "oidc" / "signing.key"
    with IssuerProcess(key_file, tmp_path / "oidc.log") as issuer:
        discovery = httpx.get(f"{issuer.url}/.well-known/openid-configuration", timeout=5).json()
        assert discovery["issuer"] == issuer.url
        assert discovery["code_challenge_methods_supported"] == ["S256"]
        page = httpx.get(
            f"{issuer.url}/authorize",
            params={
                "response_type": "code",
                "client_id": "kubernaut",
                "redirect_uri": "http://127.0.0.1:1/ui/callback",
                "code_challenge": "A" * 43,
                "code_challenge_method": "S256",
                "scope": "openid email groups",
                "state": "s",
            },
            timeout=5,
        )
        assert page.status_code == 200, page.text
        for email in DEV_PEOPLE:
            assert email in page.text
        first = _key_ids(issuer)
    assert key_file.stat().st_mode & 0o777 == 0o600
    with IssuerProcess(key_file, tmp_path / "oidc.log") as again:
        assert _key_ids(again) == first


def test_the_dev_people_each_have_the_role_the_hint_names() -> None:
    # The bindings are valid settings, and every person has exactly one role.
    settings = AccessSettings(role_bindings=json.loads(json.dumps(DEV_ROLE_BINDINGS)))
    for email, groups in DEV_PEOPLE.items():
        roles = [
            role.value
            for role, subjects in settings.role_bindings.items()
            if any(f"group:{group}" in subjects for group in groups)
        ]
        assert len(roles) == 1, (email, roles)
        assert f"{email} ({roles[0]})" in sign_in_hint()


def _stack(tmp_path: Path, *, oidc: bool) -> StackInfo:
    token = tmp_path / "webhook-token"
    token.write_text("t\n")
    alertmanager = Component(
        "alertmanager", 2, "", "http://127.0.0.1:9093", "", {"webhook_token_file": str(token)}
    )
    if not oidc:
        return recorded_stack(str(tmp_path), alertmanager=alertmanager)
    issuer = Component(
        "oidc",
        3,
        "kubernaut.devstack.oidc",
        "http://127.0.0.1:5556",
        "",
        {
            "issuer": "http://127.0.0.1:5556",
            "audience": "kubernaut",
            "role_bindings": json.dumps(DEV_ROLE_BINDINGS),
            "people": json.dumps(DEV_PEOPLE),
            "console_secret_file": str(tmp_path / "console-secret"),
        },
    )
    return recorded_stack(str(tmp_path), alertmanager=alertmanager, oidc=issuer)


def test_the_services_trust_the_dev_issuer_and_the_edge_serves_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNAUT_HTTP_PORT", "18080")
    info = _stack(tmp_path, oidc=True)
    common, _ = service_env(info, Tuning())
    assert common["KUBERNAUT_ACCESS_OIDC_ISSUER"] == "http://127.0.0.1:5556"
    assert json.loads(common["KUBERNAUT_ACCESS_ROLE_BINDINGS"]) == DEV_ROLE_BINDINGS
    edge = edge_env(info, common)
    assert edge["KUBERNAUT_HTTP_CONSOLE_URL"] == "http://127.0.0.1:18080"
    assert edge["KUBERNAUT_HTTP_CONSOLE_SECRET_FILE"] == str(tmp_path / "console-secret")
    # An issuer the caller names wins over the dev stack's; the console still serves.
    common, _ = service_env(
        info, Tuning(extra_env={"KUBERNAUT_ACCESS_OIDC_ISSUER": "https://dex.example.com"})
    )
    assert common["KUBERNAUT_ACCESS_OIDC_ISSUER"] == "https://dex.example.com"
    assert "KUBERNAUT_HTTP_CONSOLE_URL" in edge_env(info, common)
    # No issuer at all (a stack from before the issuer): no console, nobody could sign in.
    bare = _stack(tmp_path, oidc=False)
    common, _ = service_env(bare, Tuning())
    assert "KUBERNAUT_ACCESS_OIDC_ISSUER" not in common
    assert edge_env(bare, common) == {"KUBERNAUT_HTTP_TOKENS_FILE": str(tmp_path / "webhook-token")}
