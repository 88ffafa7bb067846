"""storage: owns Kubernaut's shared record in PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from kubernaut.storage.v1 import storage_pb2, storage_pb2_grpc
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.interceptors import abort_invalid
from services.runtime.server import ServiceContext, ServiceSpec
from services.storage.store import (
    InvalidPageToken,
    InvalidRecord,
    RecordConflict,
    Store,
    StoreUnavailable,
    redact_dsn,
)

log = logging.getLogger(__name__)


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_", frozen=True, extra="ignore")

    database_url: str = "postgresql://kubernaut@127.0.0.1:5432/kubernaut"


class Database:
    """Connects and migrates on first success, so the service starts (NOT_SERVING)
    while PostgreSQL is still down and turns SERVING once it answers."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._store: Store | None = None
        self._lock = asyncio.Lock()

    async def store(self) -> Store:
        async with self._lock:
            if self._store is None:
                store = await Store.connect(self.dsn)
                try:
                    applied = await store.migrate()
                except BaseException:
                    await store.close()
                    raise
                log.info("database ready", extra={"dsn": redact_dsn(self.dsn), "migrated": applied})
                self._store = store
            return self._store

    async def ready(self) -> bool:
        try:
            return await (await self.store()).ping()
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()


@contextlib.asynccontextmanager
async def unavailable_as_status(context: Any) -> AsyncIterator[None]:
    try:
        yield
    except StoreUnavailable as error:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, database: Database) -> None:
        self.database = database

    async def GetStoreStatus(
        self, request: storage_pb2.GetStoreStatusRequest, context: Any
    ) -> storage_pb2.GetStoreStatusResponse:
        async with unavailable_as_status(context):
            status = await (await self.database.store()).status()
        response = storage_pb2.GetStoreStatusResponse(
            server_version=status.server_version, pgvector_version=status.pgvector_version
        )
        for migration in status.migrations:
            entry = response.migrations.add(version=migration.version, name=migration.name)
            entry.applied_at.FromDatetime(migration.applied_at)
        return response

    async def RecordAction(
        self, request: storage_pb2.RecordActionRequest, context: Any
    ) -> storage_pb2.RecordActionResponse:
        async with unavailable_as_status(context):
            try:
                created = await (await self.database.store()).record_action(request.record)
            except RecordConflict as error:
                await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(error))
            except InvalidRecord as error:
                await abort_invalid(context, "record", str(error))
        return storage_pb2.RecordActionResponse(created=created)

    async def ListActionRecords(
        self, request: storage_pb2.ListActionRecordsRequest, context: Any
    ) -> storage_pb2.ListActionRecordsResponse:
        async with unavailable_as_status(context):
            try:
                records, token = await (await self.database.store()).list_actions(
                    request.alert_name, request.page_size, request.page_token
                )
            except InvalidPageToken as error:
                await abort_invalid(context, "page_token", str(error))
        return storage_pb2.ListActionRecordsResponse(records=records, next_page_token=token)


async def build(ctx: ServiceContext) -> ServiceSpec:
    database = Database(StorageSettings().database_url)
    return ServiceSpec(
        StorageServicer(database),
        readiness=[("postgresql", database.ready)],
        on_stop=[database.close],
    )
