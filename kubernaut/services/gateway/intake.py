"""Where the gateway's intake lives, picked from the settings: Redis when
KUBERNAUT_GATEWAY_REDIS_URL is set, else the gateway's schema in PostgreSQL. The layout:
`settings.py` (GatewaySettings), `decisions.py` (what is decided, pure), `backend.py` (the
protocol both backends implement, and why there are two), `postgres_intake.py` and
`redis_intake.py` (the backends)."""

from __future__ import annotations

import logging

from kubernaut.runtime.database import redact_dsn
from kubernaut.services.gateway.backend import IntakeSource
from kubernaut.services.gateway.postgres_intake import IntakeDatabase
from kubernaut.services.gateway.settings import GatewaySettings

# The logger these lines were always written under (they moved here from server.py).
log = logging.getLogger("kubernaut.services.gateway.server")


def intake_source(settings: GatewaySettings) -> tuple[IntakeSource, str]:
    """Where the shared state lives, and the readiness check's name. Both connect lazily:
    the gateway starts NOT_SERVING while its state cannot be reached, and accepts nothing
    it could not keep."""
    if settings.redis_url is not None:
        # Imported only when configured: the Redis client (and the cryptography it loads)
        # is some 10 MiB of RSS a gateway on PostgreSQL never uses.
        from kubernaut.services.gateway.redis_intake import RedisIntakeSource

        url = settings.redis_url.get_secret_value()
        log.info("gateway intake in Redis", extra={"redis": redact_dsn(url)})
        return RedisIntakeSource(url, settings, key_prefix=settings.redis_key_prefix), "redis"
    log.info("gateway intake in PostgreSQL", extra={"dsn": redact_dsn(settings.database_url)})
    return IntakeDatabase(settings.database_url, settings), "postgresql"
