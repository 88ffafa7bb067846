"""The dev stack's cluster identities: the executor may do exactly its catalogue's verbs,
context_api may only read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client, config  # type: ignore[import-untyped]

from kubernaut.devstack.stack import StackInfo

pytestmark = pytest.mark.integration


def _allowed(kubeconfig: str, verb: str, group: str, resource: str) -> bool:
    api = config.new_client_from_config(kubeconfig)
    try:
        review: Any = client.AuthorizationV1Api(api).create_self_subject_access_review(
            {"spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource}}}
        )
        return bool(review.status.allowed)
    finally:
        api.close()


@pytest.mark.parametrize(
    ("account", "verb", "group", "resource", "allowed"),
    [
        ("executor", "patch", "apps", "deployments", True),
        ("executor", "list", "apps", "replicasets", True),
        ("executor", "delete", "apps", "deployments", False),
        ("executor", "delete", "", "namespaces", False),
        ("executor", "get", "", "secrets", False),
        ("executor", "create", "", "pods", False),
        ("context-api", "list", "", "pods", True),
        ("context-api", "list", "", "events", True),
        ("context-api", "patch", "apps", "deployments", False),
        ("context-api", "get", "", "secrets", False),
    ],
)
async def test_cluster_identities_have_least_privilege(
    dev_stack: StackInfo, account: str, verb: str, group: str, resource: str, allowed: bool
) -> None:
    kubeconfig = dev_stack.components["kubernetes"].details[f"{account}_kubeconfig"]
    assert await asyncio.to_thread(_allowed, kubeconfig, verb, group, resource) is allowed
