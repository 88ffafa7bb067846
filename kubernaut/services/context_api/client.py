"""What callers of context_api share: reading a resource's context where "the cluster cannot
say" is an answer, not a failure."""

from __future__ import annotations

import logging

import grpc
from kubernaut.common.v1 import alert_pb2
from kubernaut.context_api.v1 import context_api_pb2
from kubernaut.context_api.v1.context_api_pb2_grpc import ContextAPIServiceStub

log = logging.getLogger(__name__)

# context_api could not describe the object: it is gone (NOT_FOUND), no cluster is
# configured or its identity may not read it (FAILED_PRECONDITION), or its kind is not one
# it reads (INVALID_ARGUMENT, e.g. a ConfigMap). Callers go on without context;
# anything else (UNAVAILABLE, ...) is an error worth retrying.
NO_CONTEXT = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


class ResourceGone(LookupError):
    """context_api says the resource does not exist."""


async def resource_context(
    context_api: ContextAPIServiceStub,
    resource: alert_pb2.ResourceRef,
    *,
    gone_is_none: bool = True,
) -> context_api_pb2.ResourceContext | None:
    """The resource's context, or None when context_api cannot describe it. With
    `gone_is_none` false, a resource that does not exist raises ResourceGone instead."""
    try:
        found = await context_api.GetResourceContext(
            context_api_pb2.GetResourceContextRequest(resource=resource)
        )
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND and not gone_is_none:
            raise ResourceGone(error.details() or "the object does not exist") from error
        if error.code() in NO_CONTEXT:
            log.info(
                "no context for the resource",
                extra={"code": error.code().name, "why": error.details()},
            )
            return None
        raise
    context: context_api_pb2.ResourceContext = found.context
    return context
