"""Retention: incidents closed longer ago than KUBERNAUT_INCIDENT_RETENTION_DAYS move to the
archive tables (Store.archive_closed), in batches, in the background of every replica."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Final

from kubernaut.runtime.database import LazyDatabase
from kubernaut.runtime.leases import ClaimLoop
from kubernaut.services.storage.store import Store, StoreUnavailable

ARCHIVE_BATCH: Final = 1000

_log = logging.getLogger(__name__)


class Archiver:
    """Archives a batch, again at once while batches come back full, else waits
    `poll_seconds`. Retention 0 archives nothing (the loop never starts)."""

    def __init__(
        self,
        database: LazyDatabase[Store],
        retention_days: float,
        poll_seconds: float,
        batch: int = ARCHIVE_BATCH,
    ) -> None:
        self._database = database
        self._batch = batch
        self._older_than = dt.timedelta(days=retention_days)
        self._loop = ClaimLoop(
            "incident-archiver",
            self.archive_once,
            log=_log,
            store="PostgreSQL",
            poll_seconds=poll_seconds,
            unavailable=StoreUnavailable,
        )
        self.enabled = retention_days > 0

    async def archive_once(self) -> bool:
        """One batch; True when it was full (more may be due)."""
        store = await self._database.store()
        archived = await store.archive_closed(self._older_than, self._batch)
        if archived:
            _log.info(
                "archived %d incidents closed more than %s ago",
                len(archived),
                self._older_than,
                extra={"archived": len(archived)},
            )
        return len(archived) == self._batch

    def start(self) -> None:
        if self.enabled:
            self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
