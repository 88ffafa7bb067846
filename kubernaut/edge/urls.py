"""Where the HTTP edge is reached, as a client (the dev stack's AlertManager, the CLI) sees
it: from the edge's own settings."""

from __future__ import annotations

import contextlib
import ipaddress

from kubernaut.edge.app import ALERTMANAGER_PATH
from kubernaut.edge.settings import EdgeSettings


def edge_url() -> str:
    """Where the HTTP edge listens (`KUBERNAUT_HTTP_HOST`/`_PORT`), as a client reaches it:
    a wildcard address becomes loopback."""
    edge = EdgeSettings()
    host = edge.host or "127.0.0.1"
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{edge.port}"


def edge_webhook_url() -> str:
    """The edge's AlertManager webhook: where the dev stack's AlertManager sends alerts."""
    return edge_url() + ALERTMANAGER_PATH
