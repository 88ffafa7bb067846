"""The chaos suite's own parts, fast: the seeded fault plan and the stalling proxy."""

from __future__ import annotations

import asyncio

from kubernaut.devstack.chaos import FaultKind, ProxyMesh, plan_faults
from kubernaut.runtime.names import ServiceName


def test_a_plan_replays_from_its_seed_and_meets_every_kind_first() -> None:
    plan = plan_faults(7, 600)
    assert plan == plan_faults(7, 600)
    assert plan != plan_faults(8, 600)
    assert {f.kind for f in plan[: len(FaultKind)]} == set(FaultKind)
    starts = [f.at for f in plan]
    assert starts == sorted(starts) and starts[-1] < 600
    for fault in plan:
        if fault.kind in (FaultKind.KILL, FaultKind.BLACKHOLE):
            assert ServiceName(fault.target)
        if fault.kind is FaultKind.APISERVER:
            assert fault.duration == 20


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_black_holed_service_stalls_and_heals_without_losing_bytes() -> None:
    server, port = await _echo_server()
    mesh = ProxyMesh({ServiceName.STORAGE: ("127.0.0.1", port)})
    mesh.start()
    try:
        assert mesh.addresses_env() == {
            "KUBERNAUT_STORAGE_ADDRESS": f"127.0.0.1:{mesh.ports[ServiceName.STORAGE]}"
        }
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.ports[ServiceName.STORAGE])
        writer.write(b"one")
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"one"

        mesh.stall(ServiceName.STORAGE)
        await asyncio.sleep(0.1)
        writer.write(b"two")
        # Nothing comes back while it is black-holed, on this connection or a new one.
        pending = asyncio.ensure_future(reader.readexactly(3))
        late_reader, late_writer = await asyncio.open_connection(
            "127.0.0.1", mesh.ports[ServiceName.STORAGE]
        )
        late_writer.write(b"new")
        late = asyncio.ensure_future(late_reader.readexactly(3))
        await asyncio.sleep(0.5)
        assert not late.done() and not pending.done()
        assert mesh.stalled() == [ServiceName.STORAGE]

        mesh.heal(ServiceName.STORAGE)
        assert await asyncio.wait_for(late, 5) == b"new"
        assert await asyncio.wait_for(pending, 5) == b"two"
        writer.close()
        late_writer.close()
    finally:
        mesh.stop()
        server.close()
