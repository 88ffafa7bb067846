"""intelligence against the real storage: a week of history seeded in a real PostgreSQL
through storage's Store, the intelligence service reading it over storage's gRPC API, and
`kubernaut insights` (the real command, over gRPC) naming what was planted."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from kubernaut.common.v1 import alert_pb2
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.intelligence.v1.intelligence_pb2_grpc import IntelligenceServiceStub
from kubernaut.storage.v1 import storage_pb2
from prometheus_client import REGISTRY

from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.server import RunningService, start_service
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.storage.store import Store
from tests.fixtures.intelligence_history import WordsEmbedder
from tests.fixtures.kubernaut import subprocess_env
from tests.fixtures.postgres import fresh_database

pytestmark = pytest.mark.integration

SUCCEEDED = storage_pb2.ACTION_OUTCOME_SUCCEEDED
ROLLED_BACK = storage_pb2.ACTION_OUTCOME_ROLLED_BACK
REMEDIATED = storage_pb2.INCIDENT_STATUS_REMEDIATED


def firing(name: str, **labels: str) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"alertname": name, "severity": "warning", **labels},
        annotations={"summary": f"{name} on {labels.get('namespace', 'the node')}"},
    )


def workload(name: str, namespace: str = "shop", kind: str = "Deployment") -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(namespace=namespace, kind=kind, name=name)


@dataclass
class Seeded:
    recurring_ids: list[str]
    approved: str


async def handle(
    store: Store,
    alert: alert_pb2.Alert,
    subject: alert_pb2.ResourceRef,
    action: str,
    outcome: storage_pb2.ActionOutcome.ValueType,
    status: storage_pb2.IncidentStatus.ValueType,
) -> str:
    """An incident as the loop handles it: opened, an action recorded, closed."""
    incident, created = await store.open_incident(f"fp-{uuid.uuid4().hex}", alert, subject)
    assert created
    record = storage_pb2.ActionRecord(
        action_id=str(uuid.uuid4()),
        incident_id=incident.incident_id,
        alert_name=alert.name,
        action=action,
        target=subject,
        outcome=outcome,
    )
    record.started_at.GetCurrentTime()
    await store.record_action(record)
    await store.update_incident(incident.incident_id, status, "seeded")
    return incident.incident_id


async def seed_week(store: Store) -> Seeded:
    """shop/web's crash loop fixed by a restart four times over (the fix does not hold);
    rollbacks of stuck rollouts that mostly fail (1 of 6); scaling that works (5 of 5); a
    disk alert on three nodes that fires on and on (50 more alerts each); alice approved
    one fix by hand."""
    web = workload("web")
    recurring = [
        await handle(
            store,
            firing("KubePodCrashLooping", namespace="shop", pod="web-1"),
            web,
            "restart_deployment",
            SUCCEEDED,
            REMEDIATED,
        )
        for _ in range(4)
    ]
    for n in range(6):
        worked = n == 0
        await handle(
            store,
            firing("KubeDeploymentRolloutStuck", namespace="shop", deployment=f"api-{n}"),
            workload(f"api-{n}"),
            "rollback_deployment",
            SUCCEEDED if worked else ROLLED_BACK,
            REMEDIATED if worked else storage_pb2.INCIDENT_STATUS_FAILED,
        )
    for n in range(5):
        await handle(
            store,
            firing("KubeDeploymentReplicasMismatch", namespace="payments", deployment=f"pay-{n}"),
            workload(f"pay-{n}", "payments"),
            "scale_deployment",
            SUCCEEDED,
            REMEDIATED,
        )
    for n in range(3):
        node = alert_pb2.ResourceRef(kind="Node", name=f"node-{n}")
        incident, _ = await store.open_incident(
            f"fp-{uuid.uuid4().hex}", firing("NodeFilesystemAlmostFull", node=f"node-{n}"), node
        )
        await store.count_incident_alerts(incident.incident_id, 50)
        await store.update_incident(
            incident.incident_id, storage_pb2.INCIDENT_STATUS_NO_ACTION, "not actionable"
        )
    approval = storage_pb2.AppendAuditEntryRequest(
        entry_id=str(uuid.uuid4()),
        principal="person:alice@example.com",
        service="workflow",
        method="DecideApproval",
        incident_id=recurring[0],
        target="workflow/w1",
        request_digest="0" * 64,
        outcome_code="OK",
    )
    approval.at.GetCurrentTime()
    await store.append_audit_entry(approval)
    return Seeded(recurring, recurring[0])


@dataclass
class Services:
    storage: RunningService
    intelligence: RunningService
    settings: RuntimeSettings
    seeded: Seeded

    def clients(self) -> Clients:
        return Clients(
            self.settings,
            addresses={
                ServiceName.STORAGE: self.storage.address,
                ServiceName.INTELLIGENCE: self.intelligence.address,
            },
        )


@pytest_asyncio.fixture(scope="module")
async def services(postgres_dsn: str, runtime_settings: RuntimeSettings) -> AsyncIterator[Services]:
    """storage and intelligence on a database of their own, seeded with a week."""
    async with fresh_database(postgres_dsn) as dsn:
        store = await Store.connect(dsn, embedder=WordsEmbedder())
        try:
            await store.migrate()
            seeded = await seed_week(store)
        finally:
            await store.close()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("KUBERNAUT_DATABASE_URL", dsn)
            # Only GetAnomalies evaluates, so the test sees what its call did.
            patch.setenv("KUBERNAUT_INTELLIGENCE_ANOMALY_INTERVAL_SECONDS", "0")
            storage = await start_service(
                ServiceName.STORAGE, runtime_settings, serve_metrics=False
            )
            settings = runtime_settings.model_copy(update={"storage_address": storage.address})
            intelligence = await start_service(
                ServiceName.INTELLIGENCE, settings, serve_metrics=False
            )
        running = Services(storage, intelligence, runtime_settings, seeded)
        try:
            clients = running.clients()
            statuses = await wait_serving(
                clients, [ServiceName.STORAGE, ServiceName.INTELLIGENCE], timeout=30
            )
            await clients.close()
            assert set(statuses.values()) == {"SERVING"}, statuses
            yield running
        finally:
            await intelligence.shutdown()
            await storage.shutdown()


async def insights(services: Services, tmp_path: Path, *flags: str) -> str:
    """`kubernaut insights` as a person runs it, against the intelligence service."""
    assert services.settings.certs_dir is not None
    port = int(services.intelligence.address.rsplit(":", 1)[1])
    env = subprocess_env(tmp_path, services.settings.certs_dir, {ServiceName.INTELLIGENCE: port})
    # Not subprocess.run: the services answer from this process' event loop.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubernaut.cli.main",
        "insights",
        *flags,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_kubernaut_insights_names_the_planted_patterns(
    services: Services, tmp_path: Path
) -> None:
    text = await insights(services, tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith("Insights ") and lines[0].endswith(
        "UTC (7 days): 18 incidents, 168 alerts"
    )
    recurring = lines[lines.index("Recurring incidents: the fix does not hold") + 2]
    assert recurring.split()[:6] == [
        "Deployment",
        "shop/web",
        "KubePodCrashLooping",
        "4",
        "3",
        "restart_deployment",
    ]
    worst = lines[lines.index(next(line for line in lines if line.startswith("Least"))) + 2]
    assert worst.split()[:5] == [
        "rollback_deployment",
        "KubeDeploymentRolloutStuck",
        "6",
        "1",
        "17%",
    ]
    noisiest = lines[lines.index("Noisiest alerts") + 2]
    assert noisiest.split() == ["NodeFilesystemAlmostFull", "3", "153", "3"]
    # The four restarts of web are too few to judge (5 attempts needed).
    assert "1 action(s) per alert had fewer than 5 attempts: too few to judge." in lines
    # 4 + 1 + 5 remediated; alice approved one.
    assert "9 of 10 remediated incidents needed no person: about 4.5 h saved" in text

    markdown = await insights(services, tmp_path, "--markdown", "--window", "2d", "--top", "1")
    assert markdown.startswith("# Insights ")
    assert "(2 days): 18 incidents" in markdown.splitlines()[0]
    assert "| Deployment shop/web | KubePodCrashLooping | 4 | 3 | restart_deployment |" in markdown
    assert "| rollback_deployment | KubeDeploymentRolloutStuck | 6 | 1 | 17% |" in markdown
    assert "| NodeFilesystemAlmostFull | 3 | 153 | 3 |" in markdown
    # --top 1: one row a table.
    assert "KubeDeploymentReplicasMismatch" not in markdown


async def test_a_bad_window_is_refused_by_the_command(services: Services, tmp_path: Path) -> None:
    assert services.settings.certs_dir is not None
    env = subprocess_env(tmp_path, services.settings.certs_dir, {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kubernaut.cli.main",
        "insights",
        "--window",
        "91d",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "at most 90 days" in err.decode()


async def test_the_typed_rpcs_over_the_seeded_history(services: Services) -> None:
    clients = services.clients()
    try:
        intelligence = clients.stub(IntelligenceServiceStub)
        found = await intelligence.GetRecurringIncidents(
            intelligence_pb2.GetRecurringIncidentsRequest()
        )
        [recurring] = found.recurring
        assert list(recurring.incident_ids) == services.seeded.recurring_ids
        assert (recurring.incidents, recurring.fixes_not_held) == (4, 3)
        assert not found.truncated
        # Filtered by workload (storage filters it) and with a higher bar.
        only = await intelligence.GetRecurringIncidents(
            intelligence_pb2.GetRecurringIncidentsRequest(
                subject=workload("web"), alert_name="KubePodCrashLooping", min_incidents=5
            )
        )
        assert list(only.recurring) == []

        stats = await intelligence.GetActionStats(
            intelligence_pb2.GetActionStatsRequest(alert_name="KubeDeploymentRolloutStuck")
        )
        [rollback] = stats.stats
        assert (rollback.attempts, rollback.succeeded, rollback.rolled_back) == (6, 1, 5)
        assert rollback.enough_samples
        assert rollback.success_lower_bound == pytest.approx(0.0301, abs=1e-4)
        assert rollback.success_upper_bound == pytest.approx(0.5635, abs=1e-4)
        assert rollback.trend.direction == intelligence_pb2.TREND_DIRECTION_TOO_FEW
        assert rollback.trend.recent_attempts == 6

        anomalies = await intelligence.GetAnomalies(intelligence_pb2.GetAnomaliesRequest())
        keys = {(a.scope, a.key) for a in anomalies.anomalies}
        # Everything happened within the hour, in namespaces and alerts with no baseline.
        assert (intelligence_pb2.ANOMALY_SCOPE_NAMESPACE, "shop") in keys
        assert (intelligence_pb2.ANOMALY_SCOPE_ALERT, "KubeDeploymentRolloutStuck") in keys
        assert anomalies.baseline_buckets == 168
        gauge = REGISTRY.get_sample_value(
            "kubernaut_intelligence_anomalies", {"scope": "namespace", "key": "shop"}
        )
        assert gauge == 10.0

        clusters = await intelligence.GetIncidentClusters(
            intelligence_pb2.GetIncidentClustersRequest(min_cluster_size=3)
        )
        assert clusters.embedding_model == "test-words-384"
        assert clusters.incidents == 18
        by_alert = {c.common_alert: c for c in clusters.clusters}
        web = by_alert["KubePodCrashLooping"]
        assert (web.size, web.common_namespace, web.remediated_share) == (4, "shop", 1.0)
        assert set(web.incident_ids) == set(services.seeded.recurring_ids)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await intelligence.GetRecurringIncidents(
                intelligence_pb2.GetRecurringIncidentsRequest(min_incidents=1)
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await intelligence.GetInsights(
                intelligence_pb2.GetInsightsRequest(window_seconds=91 * 86400)
            )
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await clients.close()


def test_windows_parse_as_the_command_takes_them() -> None:
    from kubernaut.cli.insights import BadWindow, parse_window

    assert parse_window("7d") == 7 * 86400
    assert parse_window("36h") == 36 * 3600
    assert parse_window("3600") == 3600
    for bad in ("", "0d", "7w", "-1d", "100d"):
        with pytest.raises(BadWindow):
            parse_window(bad)
    assert dt.timedelta(seconds=parse_window("90d")) == dt.timedelta(days=90)
