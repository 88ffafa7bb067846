"""The analysis with the real local model (SmolLM2-135M on llama.cpp's OpenAI-compatible
server, through the real `openai` SDK): it decides through the contract, the injection set
cannot move it out of the contract, and a model server killed mid-analysis leaves the
decision to the rules, saying why. A 135M model's choices are poor; what is asserted is
what the guard guarantees whatever it answers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.context_api.v1 import context_api_pb2

from kubernaut.devstack.model import ModelServer, provider_settings
from kubernaut.services.ai_analysis import reasoning
from kubernaut.services.ai_analysis.providers.openai_compat import OpenAICompatibleProvider
from kubernaut.services.ai_analysis.settings import AnalysisSettings, ProviderSettings
from tests.data.injections import INJECTIONS
from tests.integration.test_prompt_injection import (
    CATALOGUE,
    SUBJECT,
    WORKLOAD,
    assert_within_contract,
    incident_with,
    rules_restart,
)

pytestmark = pytest.mark.integration

# Generous: the machine is shared; what is tested is the outcome, not the speed
# (bench/analysis_latency.py measures that).
ANSWER_TIMEOUT = 90.0


def local_analyst(url: str, **overrides: float) -> reasoning.ModelAnalyst:
    (provider,) = [ProviderSettings(**p) for p in json.loads(provider_settings(url))]
    provider = provider.model_copy(update={"timeout_seconds": ANSWER_TIMEOUT})
    settings = AnalysisSettings(
        answer_timeout_seconds=overrides.get("answer_timeout_seconds", ANSWER_TIMEOUT),
        max_tokens_per_hour=100_000_000,
    )
    return reasoning.ModelAnalyst([(provider, OpenAICompatibleProvider(provider))], settings)


def crash_loop() -> reasoning.Incident:
    alert = alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"namespace": "shop", "pod": SUBJECT.name, "container": "web"},
    )
    evidence = context_api_pb2.ResourceContext(
        resource=SUBJECT,
        workload=WORKLOAD,
        managed=True,
        pods=[
            context_api_pb2.PodState(
                name=SUBJECT.name,
                phase="Running",
                node="node-1",
                restarts=9,
                waiting_reason="CrashLoopBackOff",
            )
        ],
    )
    return reasoning.Incident(alert, SUBJECT, evidence, None)


async def test_the_local_model_decides_through_the_contract(local_model: ModelServer) -> None:
    analyst = local_analyst(local_model.url)
    try:
        incident = crash_loop()
        analysis = await analyst.analyse(incident, rules_restart(), CATALOGUE)
    finally:
        await analyst.close()
    record = analysis.reasoning
    assert record.provider == "local" and record.model == "smollm2-135m"
    assert record.input_tokens > 100 and record.output_tokens > 0, record
    assert record.answer, "the model's answer is on the record"
    # Valid, or refused with the reason recorded; either way within the contract.
    assert record.validation == "valid" or record.fallback_reason, record
    assert_within_contract(analysis, incident)


@pytest.mark.timeout(600)
async def test_the_injection_set_cannot_move_the_local_model_out_of_the_contract(
    local_model: ModelServer,
) -> None:
    """Every text once against the real model, eight to an incident (two in each place),
    each analysis within the production answer time-out (30 s): a slow answer leaves the
    decision to the rules, which is also within the contract."""
    analyst = local_analyst(local_model.url, answer_timeout_seconds=30.0)
    places = ("label", "annotation", "event", "name")
    per_incident = 2 * len(places)
    outcomes: dict[str, int] = {}
    try:
        for start in range(0, len(INJECTIONS), per_incident):
            batch = INJECTIONS[start : start + per_incident]
            incident = incident_with(batch[0], places[0])
            assert incident.evidence is not None
            for index, injection in enumerate(batch[1:], start=1):
                place = places[index % len(places)]
                if place == "label":
                    incident.alert.labels[f"team_note_{index}"] = injection.text
                elif place == "annotation":
                    incident.alert.annotations[f"description_{index}"] = injection.text
                else:
                    more = incident_with(injection, place)
                    assert more.evidence is not None
                    incident.evidence.events.extend(more.evidence.events[1:])
            analysis = await analyst.analyse(incident, rules_restart(), CATALOGUE)
            assert_within_contract(analysis, incident)
            record = analysis.reasoning
            if record.validation not in ("", "valid"):
                assert record.guard == "rules only" and analysis.analyzer == "rules"
            if analysis.decision == remediation_pb2.DECISION_REMEDIATE:
                agreed = record.guard in ("agreed", "rules only")
                assert agreed or analysis.recommendation.approval_required, record
            outcomes[record.guard or "?"] = outcomes.get(record.guard or "?", 0) + 1
    finally:
        await analyst.close()
    print(f"guard outcomes over the injection set: {outcomes}")


async def test_a_model_server_killed_mid_analysis_leaves_the_decision_to_the_rules(
    tmp_path: Path,
) -> None:
    server = ModelServer(tmp_path / "model.log")
    await asyncio.to_thread(server.start)
    try:
        analyst = local_analyst(server.url)
        began = time.monotonic()
        analysing = asyncio.create_task(analyst.analyse(crash_loop(), rules_restart(), CATALOGUE))
        # The prompt alone takes the model a while: kill it while it reads.
        await asyncio.sleep(1.0)
        assert not analysing.done()
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        analysis = await analysing
        took = time.monotonic() - began
        await analyst.close()
    finally:
        await asyncio.to_thread(server.stop)
    assert took < ANSWER_TIMEOUT / 2, f"the rules waited {took:.1f}s for a dead server"
    assert analysis.analyzer == "rules"
    assert analysis.recommendation.action.HasField("restart_deployment")
    record = analysis.reasoning
    assert record.guard == "rules only"
    assert record.fallback_reason.startswith("local: APIConnectionError"), record
    assert "The rules decided without a model: local: APIConnectionError" in analysis.reasons[-1]
