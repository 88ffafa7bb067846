"""Analyses on the record (RecordAnalysis, GetIncident.analyses): the Store against a real
PostgreSQL, then the same over gRPC as ai_analysis calls it."""

from __future__ import annotations

import uuid

import grpc
import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.runtime.names import ServiceName
from kubernaut.services.storage.store import InvalidRecord, Store, UnknownIncident
from tests.fixtures.grpc_errors import code_of, field_violations
from tests.fixtures.kubernaut import InProcessStack

pytestmark = pytest.mark.integration

SUBJECT = alert_pb2.ResourceRef(cluster="prod-eu", namespace="shop", kind="Deployment", name="web")
PROMPT = "You are Kubernaut's analyst.\nAlert: KubePodCrashLooping\nToken: [REDACTED]"


def model_analysis(answer: str = '{"decision":"remediate"}') -> remediation_pb2.Analysis:
    """An analysis a model took part in, every reasoning field set."""
    return remediation_pb2.Analysis(
        decision=remediation_pb2.DECISION_REMEDIATE,
        recommendation=remediation_pb2.Recommendation(
            action=remediation_pb2.ActionParams(
                restart_deployment=remediation_pb2.RestartDeploymentParams()
            ),
            target=SUBJECT,
            confidence=0.8,
            reasons=["the pods crash-loop since 18:02"],
            approval_required=True,
            approval_reason="the model chose without the rules' backing",
        ),
        reasons=["the pods crash-loop since 18:02", "a restart fixed this alert 3 times"],
        analyzer="local",
        runbook_url="https://runbooks.example/KubePodCrashLooping",
        reasoning=remediation_pb2.ModelReasoning(
            provider="local",
            model="qwen2.5-0.5b-instruct",
            prompt=PROMPT,
            tool_uses=[
                remediation_pb2.ToolUse(
                    name="describe_resource",
                    arguments='{"kind":"Deployment","name":"web","namespace":"shop"}',
                    result_sha256="3f2a9c1b0d4e" + "0" * 52,
                    result_chars=812,
                ),
                remediation_pb2.ToolUse(
                    name="action_history",
                    arguments="{}",
                    result_sha256="a1" * 32,
                    result_chars=40,
                ),
            ],
            answer=answer,
            validation="valid",
            input_tokens=1234,
            output_tokens=56,
            cost_usd=0.00123,
            latency_seconds=2.5,
            guard="disagreed: approval",
        ),
    )


def rules_analysis() -> remediation_pb2.Analysis:
    """The rules deciding alone because the model timed out."""
    return remediation_pb2.Analysis(
        decision=remediation_pb2.DECISION_NO_ACTION,
        reasons=["no rule acts on KubeNodeNotReady without a PodDisruptionBudget"],
        analyzer="rules",
        reasoning=remediation_pb2.ModelReasoning(
            latency_seconds=20.0,
            fallback_reason="no decision within 20s (KUBERNAUT_AI_ANSWER_TIMEOUT_SECONDS)",
            guard="rules only",
        ),
    )


def firing_alert() -> alert_pb2.Alert:
    alert = alert_pb2.Alert(
        name="KubePodCrashLooping",
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"alertname": "KubePodCrashLooping", "namespace": "shop"},
        source=alert_pb2.ALERT_SOURCE_ALERTMANAGER,
    )
    alert.starts_at.GetCurrentTime()
    return alert


async def open_incident(store: Store) -> str:
    incident, _ = await store.open_incident(f"fp-{uuid.uuid4().hex}", firing_alert(), SUBJECT)
    return incident.incident_id


# -- the store ------------------------------------------------------------------------------------


async def test_an_analysis_is_recorded_with_its_reasoning_intact(store: Store) -> None:
    incident_id = await open_incident(store)
    analysis_id = str(uuid.uuid4())
    recorded, created = await store.record_analysis(analysis_id, incident_id, model_analysis())
    assert created
    assert recorded.analysis_id == analysis_id
    assert recorded.incident_id == incident_id
    assert recorded.analysis == model_analysis()
    assert recorded.recorded_at.ByteSize()

    detail = await store.get_incident(incident_id)
    assert list(detail.analyses) == [recorded]
    assert detail.analyses[0].analysis.reasoning.prompt == PROMPT


async def test_the_same_analysis_id_again_returns_the_stored_one(store: Store) -> None:
    incident_id = await open_incident(store)
    analysis_id = str(uuid.uuid4())
    first, _ = await store.record_analysis(analysis_id, incident_id, model_analysis())
    # A retry carrying something else still records nothing: the first one stands.
    again, created = await store.record_analysis(
        analysis_id, incident_id, model_analysis(answer='{"decision":"no_action"}')
    )
    assert not created
    assert again == first
    assert list((await store.get_incident(incident_id)).analyses) == [first]


async def test_analyses_come_back_oldest_first(store: Store) -> None:
    incident_id = await open_incident(store)
    # Ids in descending order, so that ordering by id would reverse them.
    ids = sorted((str(uuid.uuid4()) for _ in range(3)), reverse=True)
    for analysis_id, analysis in zip(
        ids, [rules_analysis(), model_analysis(), rules_analysis()], strict=True
    ):
        await store.record_analysis(analysis_id, incident_id, analysis)
    analyses = (await store.get_incident(incident_id)).analyses
    assert [a.analysis_id for a in analyses] == ids
    times = [a.recorded_at.ToDatetime() for a in analyses]
    assert times == sorted(times)
    # Another incident's analyses are not among them.
    other = await open_incident(store)
    await store.record_analysis(str(uuid.uuid4()), other, rules_analysis())
    assert len((await store.get_incident(incident_id)).analyses) == 3


async def test_an_analysis_of_an_unknown_incident_is_refused(store: Store) -> None:
    with pytest.raises(UnknownIncident):
        await store.record_analysis(str(uuid.uuid4()), str(uuid.uuid4()), rules_analysis())


async def test_what_cannot_be_summed_or_stored_is_refused(store: Store) -> None:
    incident_id = await open_incident(store)
    negative = model_analysis()
    negative.reasoning.cost_usd = -1.0
    with pytest.raises(InvalidRecord) as caught:
        await store.record_analysis(str(uuid.uuid4()), incident_id, negative)
    assert caught.value.field == "analysis.reasoning.cost_usd"
    nul = model_analysis(answer="before\x00after")
    with pytest.raises(InvalidRecord) as caught:
        await store.record_analysis(str(uuid.uuid4()), incident_id, nul)
    assert caught.value.field == "analysis"
    assert (await store.get_incident(incident_id)).analyses == []


# -- over gRPC ------------------------------------------------------------------------------------


async def test_record_analysis_over_grpc(stack: InProcessStack) -> None:
    operator = stack.clients()
    ai_analysis = stack.clients(ServiceName.AI_ANALYSIS.account)
    try:
        storage = operator.stub(StorageServiceStub)
        recorder = ai_analysis.stub(StorageServiceStub)
        opened = await storage.OpenIncident(
            storage_pb2.OpenIncidentRequest(
                fingerprint=f"fp-{uuid.uuid4().hex}",
                alert=firing_alert(),
                subject=SUBJECT,
            )
        )
        incident_id = opened.incident.incident_id

        first_id, second_id = sorted((str(uuid.uuid4()) for _ in range(2)), reverse=True)
        request = storage_pb2.RecordAnalysisRequest(
            analysis_id=first_id, incident_id=incident_id, analysis=rules_analysis()
        )
        first = await recorder.RecordAnalysis(request)
        assert first.created
        assert first.recorded.analysis == rules_analysis()
        retried = await recorder.RecordAnalysis(request)
        assert not retried.created
        assert retried.recorded == first.recorded
        second = await recorder.RecordAnalysis(
            storage_pb2.RecordAnalysisRequest(
                analysis_id=second_id, incident_id=incident_id, analysis=model_analysis()
            )
        )
        assert second.created

        got = await storage.GetIncident(storage_pb2.GetIncidentRequest(incident_id=incident_id))
        assert list(got.analyses) == [first.recorded, second.recorded]
        assert got.analyses[1].analysis.reasoning == model_analysis().reasoning

        unknown = storage_pb2.RecordAnalysisRequest(
            analysis_id=str(uuid.uuid4()), incident_id=str(uuid.uuid4()), analysis=rules_analysis()
        )
        assert await code_of(recorder.RecordAnalysis(unknown)) is grpc.StatusCode.NOT_FOUND

        malformed = storage_pb2.RecordAnalysisRequest(
            analysis_id="not-a-uuid", incident_id=incident_id
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await recorder.RecordAnalysis(malformed)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == {"analysis_id", "analysis"}

        # What protovalidate lets through and the store refuses names its field too.
        negative = model_analysis()
        negative.reasoning.input_tokens = -5
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await recorder.RecordAnalysis(
                storage_pb2.RecordAnalysisRequest(
                    analysis_id=str(uuid.uuid4()), incident_id=incident_id, analysis=negative
                )
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == {"analysis.reasoning.input_tokens"}

        got = await storage.GetIncident(storage_pb2.GetIncidentRequest(incident_id=incident_id))
        assert len(got.analyses) == 2
    finally:
        await operator.close()
        await ai_analysis.close()
