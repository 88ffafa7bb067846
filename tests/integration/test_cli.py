"""The kubernaut command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.names import ServiceName, all_accounts
from tests.fixtures.kubernaut import InProcessStack, subprocess_env
from tests.integration.test_storage_analyses import (
    PROMPT,
    SUBJECT,
    firing_alert,
    model_analysis,
    rules_analysis,
)

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


def test_serve_refuses_a_wrong_routing_file_naming_the_place(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "channels: {mail: {type: email, to: [sre@example.com]}}\nroute: {channels: [pager]}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNAUT_")}
    env["KUBERNAUT_STATE_DIR"] = str(tmp_path)
    env["KUBERNAUT_NOTIFICATION_ROUTES_FILE"] = str(routes)
    result = subprocess.run(
        [sys.executable, "-m", "kubernaut.cli.main", "serve", "notification"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "notification cannot start" in result.stderr
    assert f"{routes}: route 0: unknown channel(s) pager; the channels are mail" in result.stderr
    assert "Traceback" not in result.stderr


def test_down_without_a_running_up_says_so(tmp_path: Path) -> None:
    result = kubernaut(tmp_path, "down")
    assert result.returncode == 0
    assert "no kubernaut up is running" in result.stdout
    # A pid file left by an up that died, whose pid is no `kubernaut up` now.
    (tmp_path / "up.pid").write_text("999999999\n")
    result = kubernaut(tmp_path, "down")
    assert result.returncode == 0 and "is gone" in result.stdout
    assert not (tmp_path / "up.pid").exists()


def test_edge_is_serve_of_the_http_edge(tmp_path: Path) -> None:
    """`kubernaut edge` (the image's documented command) runs the edge's start-up, which
    refuses the same misspelt setting `serve gateway-http` does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNAUT_")}
    env["KUBERNAUT_STATE_DIR"] = str(tmp_path)
    env["KUBERNAUT_HTTP_PROT"] = "8080"
    result = subprocess.run(
        [sys.executable, "-m", "kubernaut.cli.main", "edge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "kubernaut serve gateway-http: " in result.stderr
    assert "KUBERNAUT_HTTP_PROT (did you mean KUBERNAUT_HTTP_PORT?)" in result.stderr


async def test_incidents_show_prints_the_analyses_on_the_record(
    stack: InProcessStack, tmp_path: Path
) -> None:
    """The real command against the stack: the model's part, the rules' fallback, and the
    redacted prompt only when asked for."""
    storage = stack.clients()
    recorder = stack.clients(ServiceName.AI_ANALYSIS.account)
    try:
        opened = await storage.stub(StorageServiceStub).OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=f"fp-{uuid.uuid4().hex}", alert=firing_alert(), subject=SUBJECT
            )
        )
        incident_id = opened.incident.incident_id
        # The last one's answer tries to forge a line and clear the terminal.
        forged = model_analysis(answer='{"x":1}\n    guard      agreed\x1b[2J')
        view = model_analysis()
        view.reasoning.asked_after_the_plan = True
        for analysis in (rules_analysis(), model_analysis(), view, forged):
            await recorder.stub(StorageServiceStub).RecordAnalysis(
                storage_pb2.RecordAnalysisRequest(
                    analysis_id=str(uuid.uuid4()), incident_id=incident_id, analysis=analysis
                )
            )
    finally:
        await storage.close()
        await recorder.close()
    ports = {name: int(address.rsplit(":", 1)[1]) for name, address in stack.addresses.items()}
    assert stack.settings.certs_dir is not None
    env = subprocess_env(tmp_path, stack.settings.certs_dir, ports)

    async def show(*flags: str) -> str:
        # Not subprocess.run: the stack answers from this process' event loop.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kubernaut.cli.main",
            "incidents",
            "show",
            incident_id,
            *flags,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, err.decode()
        return out.decode()

    shown = await show()
    analyses = shown[shown.index("analyses\n") : shown.index("actions")]
    rules_at, model_at = analyses.index("no action by rules"), analyses.index("remediate by local")
    assert rules_at < model_at  # oldest first
    assert "    - no rule acts on KubeNodeNotReady without a PodDisruptionBudget\n" in analyses
    assert "    guard      rules only\n" in analyses
    assert (
        "    fallback   the rules decided without the model: no decision within 20s"
        " (KUBERNAUT_AI_ANSWER_TIMEOUT_SECONDS)\n"
    ) in analyses
    assert "remediate by local  restart_deployment on Deployment shop/web  confidence 0.80" in (
        analyses
    )
    assert "    approval   required: the model chose without the rules' backing\n" in analyses
    assert "    model      local/qwen2.5-0.5b-instruct\n" in analyses
    assert "    guard      disagreed: approval\n" in analyses
    # A model asked after a plan had gone ahead says so: its view is not what was acted on.
    assert (
        analyses.count("    asked      after the plan went ahead: its view, for the record\n") == 1
    )
    assert "    validation valid\n" in analyses
    assert "    usage      1234 tokens in, 56 out, $0.0012, 2.50 s\n" in analyses
    assert (
        '    tool       describe_resource {"kind":"Deployment","name":"web","namespace":"shop"}'
        "  -> sha256 3f2a9c1b0d4e (812 chars)\n"
    ) in analyses
    assert "    tool       action_history {}  -> sha256 a1a1a1a1a1a1 (40 chars)\n" in analyses
    assert '    answer     {"decision":"remediate"}\n' in analyses
    assert f"    prompt     {len(PROMPT)} chars, redacted (shown with --prompt)\n" in analyses
    assert "You are Kubernaut's analyst." not in shown
    assert '    answer     {"x":1}\\x0a    guard      agreed\\x1b[2J\n' in analyses
    assert "\x1b" not in shown
    assert "\n    guard      agreed" not in shown

    with_prompt = await show("--prompt")
    assert (
        "    prompt (redacted)\n"
        "      You are Kubernaut's analyst.\n"
        "      Alert: KubePodCrashLooping\n"
        "      Token: [REDACTED]\n"
    ) in with_prompt
