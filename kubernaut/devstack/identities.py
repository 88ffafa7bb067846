"""Cluster identities for the services that talk to Kubernetes: a ServiceAccount each,
bound to a ClusterRole of exactly what the service needs, and a kubeconfig with a token
for it. The executor gets the verbs of its catalogue; context_api read-only access."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubernaut.devstack.kube import ClusterInfo, LocalCluster
from kubernaut.services.context_api import rbac as context_api_rbac
from kubernaut.services.executor import rbac as executor_rbac

NAMESPACE = "kubernaut"
TOKEN_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Identity:
    account: str
    role: str
    rules: list[dict[str, Any]]


IDENTITIES = (
    Identity(executor_rbac.SERVICE_ACCOUNT, executor_rbac.ROLE_NAME, executor_rbac.policy_rules()),
    Identity(
        context_api_rbac.SERVICE_ACCOUNT,
        context_api_rbac.ROLE_NAME,
        context_api_rbac.policy_rules(),
    ),
)


def manifests(
    identity: Identity, namespace: str = NAMESPACE
) -> list[tuple[str, str, dict[str, Any]]]:
    """(collection path, name, object) for the ServiceAccount, ClusterRole and binding."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    return [
        (
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            identity.account,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": identity.account}},
        ),
        (
            f"{rbac}/clusterroles",
            identity.role,
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": identity.role},
                "rules": identity.rules,
            },
        ),
        (
            f"{rbac}/clusterrolebindings",
            identity.role,
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": identity.role},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": identity.role,
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": identity.account, "namespace": namespace}
                ],
            },
        ),
    ]


def _apply(cluster: LocalCluster, collection: str, name: str, obj: dict[str, Any]) -> None:
    """Create, or replace when it exists: the role must follow the catalogue."""
    status, body = cluster.api("POST", collection, obj)
    if status == 409:
        status, current = cluster.api("GET", f"{collection}/{name}")
        obj = {
            **obj,
            "metadata": {
                **obj["metadata"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            },
        }
        status, body = cluster.api("PUT", f"{collection}/{name}", obj)
    if status >= 300:
        raise RuntimeError(f"could not apply {collection}/{name}: HTTP {status}: {body}")


def write_token_kubeconfig(path: Path, server: str, ca_file: Path, user: str, token: str) -> Path:
    """A kubeconfig (mode 0600) in which `user` presents a bearer `token` to `server`."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "dev",
                        "cluster": {
                            "server": server,
                            "certificate-authority-data": base64.b64encode(
                                ca_file.read_bytes()
                            ).decode(),
                        },
                    }
                ],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": user, "context": {"cluster": "dev", "user": user}}],
                "current-context": user,
            }
        )
    )
    return path


def provision(cluster: LocalCluster, info: ClusterInfo, out_dir: Path) -> dict[str, Path]:
    """Apply every identity and write `<account>.kubeconfig` files; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    status, body = cluster.api(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
    )
    if status >= 300 and status != 409:
        raise RuntimeError(f"could not create namespace {NAMESPACE}: HTTP {status}: {body}")
    kubeconfigs = {}
    for identity in IDENTITIES:
        for collection, name, obj in manifests(identity):
            _apply(cluster, collection, name, obj)
        status, token = cluster.api(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{identity.account}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": TOKEN_SECONDS},
            },
        )
        if status >= 300:
            raise RuntimeError(
                f"TokenRequest for {identity.account} failed: HTTP {status}: {token}"
            )
        path = write_token_kubeconfig(
            out_dir / f"{identity.account}.kubeconfig",
            info.apiserver_url,
            info.ca_file,
            identity.account,
            token["status"]["token"],
        )
        kubeconfigs[identity.account] = path
    return kubeconfigs
