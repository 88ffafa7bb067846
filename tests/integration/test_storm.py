"""A storm, scaled down for CI (2,000 alerts in 20 s across 200 workloads; `python -m
bench.storm` runs the full 10,000 in a minute across 1,000): through the edge and the ten
services, each its own process on the session's dev stack, with production settings.
Nothing is answered with a 5xx, the gateway's queue drains, the edge's and the gateway's
memory stays bounded, and the storm is grouped as designed: one incident per alert name,
listing every workload, none opened per workload."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bench.storm import EDGE, KINDS, RSS_BOUND, running_mesh, storm
from kubernaut.devstack.stack import StackInfo

pytestmark = pytest.mark.integration

ALERTS = 2000
WORKLOADS = 200
SECONDS = 20.0


@pytest.mark.timeout(300)
async def test_a_storm_is_answered_drained_bounded_and_grouped(
    dev_stack: StackInfo, tmp_path: Path
) -> None:
    async with running_mesh(tmp_path / "mesh", dev=dev_stack) as mesh:
        result = await storm(
            mesh,
            ALERTS,
            WORKLOADS,
            SECONDS,
            per_body=10,
            tag=uuid.uuid4().hex[:8],
            drain_timeout=60,
        )
    posted, record = result.posted, result.record
    distinct = WORKLOADS * len(KINDS)
    assert result.alerts == ALERTS and result.distinct == distinct

    # Every body answered 2xx, or 429/503 and then taken on a retry; never another 5xx.
    assert set(posted.statuses) <= {200, 429, 503}, posted.statuses
    assert not posted.errors and not posted.given_up, (posted.errors, posted.given_up)
    assert sum(posted.dispositions.values()) == ALERTS
    # The first alert of each workload and kind is a storm member, the re-sends duplicates.
    assert posted.dispositions == {
        "ALERT_DISPOSITION_STORM": distinct,
        "ALERT_DISPOSITION_DUPLICATE": ALERTS - distinct,
    }, posted.dispositions

    # Every accepted alert was handed to alert_processor; nothing was set aside.
    assert result.drained_after is not None, f"{record.queued} alerts still queued"
    assert record.set_aside == 0
    assert record.fingerprints == distinct and record.alerts == ALERTS
    assert record.in_storms == distinct

    # Grouped: one incident per alert name, each a storm's, together listing every
    # workload's resource; none opened per workload, none dropped.
    assert record.incidents == {name: 1 for name, _, _ in KINDS}, record.incidents
    assert record.storm_incidents == len(KINDS)
    assert record.resources_listed == distinct
    assert record.dropped == 0

    for name in ("gateway", EDGE):
        start, peak = result.rss_start[name], result.rss_peak[name]
        assert 0 < peak <= RSS_BOUND * start, (name, start, peak)
    assert result.problems() == []
