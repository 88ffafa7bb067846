"""Kubernaut's client helper: a channel to one service (see kubernaut.api.client)."""

from kubernaut.api.client import (
    DEFAULT_TIMEOUT_SECONDS,
    MTLS,
    RETRY_POLICY,
    DefaultDeadline,
    SyncDefaultDeadline,
    aio_channel,
    channel,
    channel_options,
    is_idempotent,
    service_config,
    service_descriptor,
)

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MTLS",
    "RETRY_POLICY",
    "DefaultDeadline",
    "SyncDefaultDeadline",
    "aio_channel",
    "channel",
    "channel_options",
    "is_idempotent",
    "service_config",
    "service_descriptor",
]
