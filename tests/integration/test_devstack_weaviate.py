"""`kubernaut up --vector-store weaviate`: the dev stack starts a Weaviate server of its own
and storage is told to search there."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubernaut.devstack.stack import DevStack, _alive, _stop_pid
from kubernaut.devstack.system import Tuning, service_env
from kubernaut.runtime.names import ServiceName
from kubernaut.services.storage.vectors import VectorFilter
from kubernaut.services.storage.vectors.index import open_vector_store
from kubernaut.services.storage.vectors.settings import VectorBackend, VectorStoreSettings
from tests.fixtures.devstack import recorded_stack

pytestmark = pytest.mark.integration


async def test_the_dev_stacks_weaviate_is_where_storage_searches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weaviate = DevStack(tmp_path, vector_store="weaviate")._start_weaviate()
    try:
        assert _alive(weaviate)
        info = recorded_stack(str(tmp_path), weaviate=weaviate)
        _, per_service = service_env(info, Tuning())
        storage = per_service[ServiceName.STORAGE]
        for variable, value in storage.items():
            monkeypatch.setenv(variable, value)
        settings = VectorStoreSettings()
        assert settings.store is VectorBackend.WEAVIATE
        store = await open_vector_store(settings, "")
        try:
            assert await store.count(VectorFilter(model="all-minilm-l6-v2-int8")) == 0
        finally:
            await store.close()
    finally:
        _stop_pid(weaviate)
    assert not _alive(weaviate)
    # Without it, storage keeps pgvector: nothing is set for it.
    _, per_service = service_env(recorded_stack(str(tmp_path)), Tuning())
    assert ServiceName.STORAGE not in per_service
