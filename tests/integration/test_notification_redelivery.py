"""Redelivery: what the outbox took but no channel delivered is attempted again in the
background, with backoff and limits, never twice, against a real PostgreSQL and a real
SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from kubernaut.devstack.smtp import MailSink
from kubernaut.services.notification.outbox import Outbox, OutboxDatabase
from kubernaut.services.notification.redelivery import Redelivery, Sweep
from kubernaut.services.notification.settings import RedeliverySettings
from tests.fixtures.waiting import eventually
from tests.integration.test_notification_events import (
    KIND_NAME,
    notifier_for,
    outbox,
    outbox_row,
    rendered,
    settle,
)

pytestmark = pytest.mark.integration
__all__ = ["outbox"]  # the fixture, shared with the outbox's own tests

# Attempt again at once: these tests are about what is attempted, not when.
AT_ONCE: dict[str, Any] = {"first_backoff_seconds": 0, "max_backoff_seconds": 0}


@pytest.fixture
async def database(database_dsn: str, outbox: Outbox) -> AsyncIterator[OutboxDatabase]:
    """The outbox as the service holds it (migrated by the `outbox` fixture)."""
    db = OutboxDatabase(database_dsn)
    try:
        yield db
    finally:
        await db.close()


async def _sql(dsn: str, statement: str, *args: object) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def _failed(outbox: Outbox, sink: MailSink, key: str) -> int:
    """`key` taken by the outbox while the mail server (`sink`, stopped here) was down:
    failed once. Returns the server's port, for one started again there."""
    port = sink.port
    sink.stop()
    down = await outbox.deliver_once(
        key, rendered(), notifier_for(port), incident_id="inc-1", event_kind=KIND_NAME
    )
    assert not down.sent
    return port


class CountedRedelivery(Redelivery):
    """Redelivery that counts its finished sweeps, for a test to wait for sweeps, not time."""

    sweeps = 0

    async def sweep(self) -> Sweep:
        done = await super().sweep()
        self.sweeps += 1
        return done


def _undelivered_gauge() -> float | None:
    return REGISTRY.get_sample_value("kubernaut_notification_undelivered")


async def test_a_message_no_channel_took_is_delivered_once_the_mail_server_is_back(
    outbox: Outbox,
    database: OutboxDatabase,
    mail_sink: MailSink,
    database_dsn: str,
    tmp_path: Path,
) -> None:
    port = await _failed(outbox, mail_sink, "wf-1/approval_needed")
    redelivery = Redelivery(database, notifier_for(port), RedeliverySettings(**AT_ONCE))

    # Still down: attempted again, still failed, and counted as owed.
    assert await redelivery.sweep() == Sweep(failed=1)
    row = await outbox_row(database_dsn, "wf-1/approval_needed")
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert _undelivered_gauge() == 1

    with MailSink(tmp_path / "mail-again", port=port) as restarted:
        # The background loop, as the service runs it.
        running = CountedRedelivery(
            database, notifier_for(port), RedeliverySettings(interval_seconds=0.05, **AT_ONCE)
        )
        running.start()
        try:
            [mail] = await restarted.wait_for(1)
            # More sweeps: nothing is sent again. Counted, not slept: three sweeps that
            # started after the delivery have finished.
            after = running.sweeps + 1

            async def three_more_sweeps() -> bool:
                return running.sweeps >= after + 3

            await eventually(three_more_sweeps, "three more sweeps", timeout=10)
        finally:
            await running.stop()
        await settle(restarted, 1, database_dsn, "wf-1/approval_needed")
    assert rendered().subject in " ".join(str(mail.message["Subject"]).split())
    row = await outbox_row(database_dsn, "wf-1/approval_needed")
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 3, "")
    assert await redelivery.sweep() == Sweep()
    assert _undelivered_gauge() == 0


async def test_backoff_attempts_and_age_bound_what_is_attempted_again(
    outbox: Outbox,
    database: OutboxDatabase,
    mail_sink: MailSink,
    database_dsn: str,
    tmp_path: Path,
) -> None:
    port = await _failed(outbox, mail_sink, "wf-2/failed")
    notifier = notifier_for(port)
    at_once = Redelivery(database, notifier, RedeliverySettings(**AT_ONCE))
    with MailSink(tmp_path / "mail-again", port=port) as restarted:
        # Failed a moment ago: its backoff has not passed.
        waiting = Redelivery(database, notifier, RedeliverySettings(first_backoff_seconds=3600))
        assert await waiting.sweep() == Sweep()
        # One attempt allowed, one made: given up.
        limited = Redelivery(database, notifier, RedeliverySettings(max_attempts=1, **AT_ONCE))
        assert await limited.sweep() == Sweep()
        # Too old to be worth telling now.
        await _sql(
            database_dsn,
            "UPDATE notification.outbox SET created_at = now() - interval '2 days'"
            " WHERE idempotency_key = 'wf-2/failed'",
        )
        assert await at_once.sweep() == Sweep()
        assert (await outbox_row(database_dsn, "wf-2/failed"))["attempts"] == 1
        await settle(restarted, 0, database_dsn, "wf-2/failed")

        # Pending: an attempt in progress is left alone; one a crash cut short is taken again.
        message = rendered("inc-3")
        for key, minutes in (("wf-3/in-progress", 0), ("wf-3/cut-short", 10)):
            await _sql(
                database_dsn,
                "INSERT INTO notification.outbox"
                " (idempotency_key, incident_id, event_kind, subject, body, updated_at)"
                " VALUES ($1, 'inc-3', $2, $3, $4, now() - make_interval(mins => $5))",
                key,
                KIND_NAME,
                message.subject,
                message.body,
                minutes,
            )
        assert await at_once.sweep() == Sweep(sent=1)
        await settle(restarted, 1, database_dsn, "wf-2/failed", "wf-3/cut-short")
        assert (await outbox_row(database_dsn, "wf-3/cut-short"))["status"] == "sent"
        assert (await outbox_row(database_dsn, "wf-3/in-progress"))["status"] == "pending"


async def test_a_sweep_and_a_callers_repeat_deliver_once(
    outbox: Outbox,
    database: OutboxDatabase,
    mail_sink: MailSink,
    database_dsn: str,
    tmp_path: Path,
) -> None:
    port = await _failed(outbox, mail_sink, "wf-4/succeeded")
    notifier = notifier_for(port)
    sweeps = [Redelivery(database, notifier, RedeliverySettings(**AT_ONCE)) for _ in range(3)]

    with MailSink(tmp_path / "mail-again", port=port) as restarted:
        swept, repeat = await asyncio.gather(
            asyncio.gather(*(sweep.sweep() for sweep in sweeps)),
            outbox.deliver_once(
                "wf-4/succeeded", rendered(), notifier, incident_id="inc-1", event_kind=KIND_NAME
            ),
        )
        await settle(restarted, 1, database_dsn, "wf-4/succeeded")

    assert sum(s.sent for s in swept) + repeat.sent == 1
    assert sum(s.failed for s in swept) == 0
    row = await outbox_row(database_dsn, "wf-4/succeeded")
    assert (row["status"], row["attempts"]) == ("sent", 2)
