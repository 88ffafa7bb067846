"""The executor's least-privilege RBAC, derived from the action catalogue.

Every permission an action declares, and nothing else, goes into one ClusterRole; the
executor's ServiceAccount is bound to it. Adding an action with new verbs changes the
role here, in the dev stack and (later) in the Helm chart, from one place.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kubernaut.services.executor.catalogue import list_actions

ROLE_NAME = "kubernaut-executor"
SERVICE_ACCOUNT = "executor"


def policy_rules() -> list[dict[str, Any]]:
    """One rule per (API group, resource), verbs merged over all actions, sorted."""
    verbs: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for action in list_actions():
        for permission in action.permissions:
            resource = permission.resource
            if permission.subresource:
                resource = f"{resource}/{permission.subresource}"
            verbs[(permission.api_group, resource)].update(permission.verbs)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs[(group, resource)])}
        for group, resource in sorted(verbs)
    ]
