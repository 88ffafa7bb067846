"""context_api's RBAC: read-only access to what ResourceContextReader and PodLogReader
read."""

from __future__ import annotations

from typing import Any

ROLE_NAME = "kubernaut-context-api"
SERVICE_ACCOUNT = "context-api"

READ = ["get", "list"]


def policy_rules() -> list[dict[str, Any]]:
    return [
        {
            "apiGroups": [""],
            # ConfigMaps for what changed in the namespace (names and versions are kept,
            # never their data). Secrets are not here at all: by name only, from pod specs.
            "resources": ["pods", "events", "namespaces", "nodes", "services", "configmaps"],
            "verbs": READ,
        },
        # The endpoints behind the workload's Services.
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
        # Bounded log tails of the incident's pods (GetPodLogs); the subresource has only get.
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {
            "apiGroups": ["apps"],
            "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"],
            "verbs": READ,
        },
        {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": READ},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": READ},
        {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": READ},
        # Whether a claim's StorageClass allows it to grow.
        {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": READ},
    ]
