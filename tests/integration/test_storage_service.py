"""storage over gRPC: readiness follows PostgreSQL, records round-trip, intelligence and
effectiveness compute from them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.effectiveness.v1 import effectiveness_pb2
from kubernaut.effectiveness.v1.effectiveness_pb2_grpc import EffectivenessServiceStub
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.intelligence.v1.intelligence_pb2_grpc import IntelligenceServiceStub
from kubernaut.storage.v1 import storage_pb2
from kubernaut.storage.v1.storage_pb2_grpc import StorageServiceStub

from kubernaut.devstack.postgres import EmbeddedPostgres
from kubernaut.devstack.processes import free_port
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.names import LIVENESS_HEALTH_SERVICE, ServiceName
from kubernaut.runtime.server import start_service
from kubernaut.runtime.settings import RuntimeSettings
from tests.fixtures.kubernaut import InProcessStack

pytestmark = pytest.mark.integration


async def _health(clients: Clients, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(clients.channel(ServiceName.STORAGE)).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    status: int = reply.status
    return status


async def test_storage_is_not_serving_until_postgresql_answers(
    runtime_settings: RuntimeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg", port=free_port())
    # Initialise once to learn the DSN, then stop: storage starts with PostgreSQL down.
    monkeypatch.setenv("KUBERNAUT_DATABASE_URL", postgres.start())
    postgres.stop()
    running = await start_service(ServiceName.STORAGE, runtime_settings, serve_metrics=False)
    clients = Clients(runtime_settings, addresses={ServiceName.STORAGE: running.address})
    try:
        await asyncio.sleep(1)
        assert await _health(clients) == health_pb2.HealthCheckResponse.NOT_SERVING
        # Alive all the same: a liveness probe must not restart it for PostgreSQL's outage.
        assert (
            await _health(clients, LIVENESS_HEALTH_SERVICE)
            == health_pb2.HealthCheckResponse.SERVING
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clients.stub(StorageServiceStub).GetStoreStatus(
                storage_pb2.GetStoreStatusRequest()
            )
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

        postgres.start()
        for _ in range(100):
            if await _health(clients) == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.1)
        assert await _health(clients) == health_pb2.HealthCheckResponse.SERVING
        status = await clients.stub(StorageServiceStub).GetStoreStatus(
            storage_pb2.GetStoreStatusRequest()
        )
        assert status.server_version.startswith("18")
        assert status.pgvector_version
        assert [m.version for m in status.migrations] == list(range(1, 12))
    finally:
        await clients.close()
        await running.shutdown()
        postgres.stop()


def _record(alert: str, action: str, outcome: int) -> storage_pb2.ActionRecord:
    record = storage_pb2.ActionRecord(
        action_id=str(uuid.uuid4()),
        alert_name=alert,
        action=action,
        target=alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout"),
        outcome=outcome,  # type: ignore[arg-type]
    )
    record.started_at.GetCurrentTime()
    return record


async def test_recorded_actions_feed_intelligence_and_effectiveness(stack: InProcessStack) -> None:
    alert = f"TestAlert{uuid.uuid4().hex[:8]}"
    outcomes = [
        *[("restart_deployment", storage_pb2.ACTION_OUTCOME_SUCCEEDED)] * 8,
        ("restart_deployment", storage_pb2.ACTION_OUTCOME_ROLLED_BACK),
        ("rollback_deployment", storage_pb2.ACTION_OUTCOME_FAILED),
        ("rollback_deployment", storage_pb2.ACTION_OUTCOME_DRY_RUN),
    ]
    executor = stack.clients(ServiceName.EXECUTOR.account)
    storage = executor.stub(StorageServiceStub)
    records = [_record(alert, action, outcome) for action, outcome in outcomes]
    for record in records:
        reply = await storage.RecordAction(storage_pb2.RecordActionRequest(record=record))
        assert reply.created
    # A retry of the same record is a no-op; a different record under the same id is not.
    again = await storage.RecordAction(storage_pb2.RecordActionRequest(record=records[0]))
    assert not again.created
    clash = storage_pb2.ActionRecord()
    clash.CopyFrom(records[0])
    clash.message = "something else"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.RecordAction(storage_pb2.RecordActionRequest(record=clash))
    assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS
    await executor.close()

    operator = stack.clients()
    stats = await operator.stub(IntelligenceServiceStub).GetActionStats(
        intelligence_pb2.GetActionStatsRequest(alert_name=alert)
    )
    by_action = {s.action: s for s in stats.stats}
    assert by_action["restart_deployment"].attempts == 9
    assert by_action["restart_deployment"].succeeded == 8
    assert by_action["restart_deployment"].rolled_back == 1
    assert by_action["restart_deployment"].success_rate == pytest.approx(8 / 9)
    # 8 of 9: the 95% Wilson interval is 57%-98%.
    assert by_action["restart_deployment"].success_lower_bound == pytest.approx(0.565, abs=1e-3)
    # The dry-run changed nothing, so it is not an attempt.
    assert by_action["rollback_deployment"].attempts == 1

    verdicts = await operator.stub(EffectivenessServiceStub).GetActionEffectiveness(
        effectiveness_pb2.GetActionEffectivenessRequest(alert_name=alert)
    )
    by_action_verdict = {v.action: v.verdict for v in verdicts.actions}
    # Effective by the interval's lower bound (57% >= 50%), not by the mean.
    assert by_action_verdict == {
        "restart_deployment": remediation_pb2.VERDICT_EFFECTIVE,
        # One attempt is no evidence: unknown, never effective.
        "rollback_deployment": remediation_pb2.VERDICT_UNKNOWN,
    }
    await operator.close()
