"""The kubernaut command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from kubernaut.runtime.names import all_accounts

pytestmark = pytest.mark.integration


def kubernaut(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNAUT_")}
    env["KUBERNAUT_STATE_DIR"] = str(state)
    env["KUBERNAUT_PORT_BASE"] = "1"  # nothing listens on ports 1..10
    return subprocess.run(
        [sys.executable, "-m", "kubernaut.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_certs_init_issues_a_spiffe_identity_per_account_and_keeps_the_ca(tmp_path: Path) -> None:
    result = kubernaut(tmp_path, "certs", "init")
    assert result.returncode == 0, result.stderr
    certs = tmp_path / "certs"
    for account in all_accounts():
        cert = x509.load_pem_x509_certificate((certs / f"{account}.crt").read_bytes())
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == [f"spiffe://cluster.local/ns/kubernaut/sa/{account}"]
        assert oct((certs / f"{account}.key").stat().st_mode & 0o777) == "0o600"
    ca = (certs / "ca.crt").read_bytes()
    assert kubernaut(tmp_path, "certs", "init").returncode == 0
    assert (certs / "ca.crt").read_bytes() == ca
    assert kubernaut(tmp_path, "certs", "init", "--force").returncode == 0
    assert (certs / "ca.crt").read_bytes() != ca


def test_status_lists_every_service_and_fails_when_they_are_down(tmp_path: Path) -> None:
    assert kubernaut(tmp_path, "certs", "init").returncode == 0
    result = kubernaut(tmp_path, "status")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "ADDRESS", "HEALTH"]
    assert len(lines) == 11
    assert all("UNAVAILABLE" in line for line in lines[1:])


def test_serve_rejects_an_unknown_service(tmp_path: Path) -> None:
    result = kubernaut(tmp_path, "serve", "billing")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_serve_without_certificates_says_how_to_make_them(tmp_path: Path) -> None:
    result = kubernaut(tmp_path, "serve", "executor")
    assert result.returncode == 1
    assert "kubernaut certs init" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_misspelt_setting_naming_the_valid_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNAUT_")}
    env["KUBERNAUT_STATE_DIR"] = str(tmp_path)
    env["KUBERNAUT_EXECUTOR_COOLDOWN_SECOND"] = "5"
    result = subprocess.run(
        [sys.executable, "-m", "kubernaut.cli.main", "serve", "executor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        "KUBERNAUT_EXECUTOR_COOLDOWN_SECOND (did you mean KUBERNAUT_EXECUTOR_COOLDOWN_SECONDS?)"
        in result.stderr
    )
