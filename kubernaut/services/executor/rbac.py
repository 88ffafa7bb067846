"""The executor's least-privilege RBAC, derived from the action catalogue.

Every permission an action declares, and nothing else, goes into one ClusterRole, with
`get` on the GitOps objects that say where a managed object's manifests are (Argo CD
Applications, Flux Kustomizations and GitRepositories; GITOPS=pull_request) and what
RunCheck's checks read (`get` and `list` only: checks.CHECK_READS, checks.SCOPE_READS); the
executor's ServiceAccount is bound to it. Adding an action with new verbs changes the
role here, in the dev stack and (later) in the Helm chart, from one place.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from kubernaut.services.executor.catalogue import list_actions
from kubernaut.services.executor.checks import CHECK_READS, SCOPE_READS
from kubernaut.services.executor.cluster import KINDS
from kubernaut.services.executor.gitops import SOURCE_READ_RESOURCES

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
    for group, resource in SOURCE_READ_RESOURCES:
        verbs[(group, resource)].add("get")
    for kind, read in [*SCOPE_READS, *(r for reads in CHECK_READS.values() for r in reads)]:
        verbs[(KINDS[kind].group, KINDS[kind].plural)].update(read)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs[(group, resource)])}
        for group, resource in sorted(verbs)
    ]
