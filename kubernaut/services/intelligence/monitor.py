"""The anomaly gauge, kubernaut_intelligence_anomalies{scope,key}, and the background loop
that keeps it current between GetAnomalies calls (the runtime's ClaimLoop, as the other
services' background work runs)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import grpc
from kubernaut.intelligence.v1 import intelligence_pb2
from prometheus_client import Gauge

from kubernaut.runtime.leases import ClaimLoop
from kubernaut.services.intelligence.anomalies import Anomalies

log = logging.getLogger(__name__)

# The most series the gauge shows at once (the furthest above their thresholds): a storm
# across namespaces must not become a cardinality storm.
MAX_SERIES: Final = 100

ANOMALIES: Final = Gauge(
    "kubernaut_intelligence_anomalies",
    "Incidents opened in the last bucket (an hour by default) for a namespace or alert "
    "name whose rate is anomalous against its own baseline; a series exists only while its "
    "key is anomalous (alert on its presence).",
    ["scope", "key"],
)

_SCOPES: Final = {
    intelligence_pb2.ANOMALY_SCOPE_NAMESPACE: "namespace",
    intelligence_pb2.ANOMALY_SCOPE_ALERT: "alert",
}


def publish(found: Anomalies) -> None:
    """Show exactly the anomalies of `found` on the gauge."""
    ANOMALIES.clear()
    for anomaly in found.anomalies[:MAX_SERIES]:
        ANOMALIES.labels(_SCOPES.get(anomaly.scope, "unknown"), anomaly.key).set(anomaly.count)


class AnomalyMonitor:
    """Evaluates anomalies every `interval_seconds` and publishes them; 0 never."""

    def __init__(
        self, evaluate: Callable[[], Awaitable[Anomalies]], interval_seconds: float
    ) -> None:
        self._evaluate = evaluate
        self._interval = interval_seconds
        self._loop = ClaimLoop(
            "intelligence-anomalies",
            self._round,
            log=log,
            store="storage",
            poll_seconds=interval_seconds or 1.0,
            unavailable=grpc.aio.AioRpcError,
            # The first look after one interval: storage may still be starting.
            start_idle=True,
        )

    def start(self) -> None:
        if self._interval > 0:
            self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _round(self) -> bool:
        publish(await self._evaluate())
        return False
