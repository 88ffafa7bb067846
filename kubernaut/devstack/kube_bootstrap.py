"""Talking to the local control plane's components (see `kubernaut.devstack.kube`): whether
each is ready, and the objects a start makes sure of (kube-state-metrics' read-only RBAC
identity, the fake KWOK nodes).

Plain `http.client` with client certificates from the cluster's PKI: the admin's for the
API server, the API server's etcd client for etcd; kube-state-metrics is plain HTTP.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from kubernaut.devstack.kube_layout import NODE_LABEL, KubeClusterError, StateLayout
from kubernaut.devstack.processes import LOOPBACK

Ports = Mapping[str, int]
Check = Callable[[], str | None]
"""A readiness check: None when ready, else why not."""

_KSM_ROLE = "kubernaut:kube-state-metrics"
_NODES_PATH = f"/api/v1/nodes?labelSelector={NODE_LABEL}%3Dkwok"


class ControlPlane:
    """Requests to one state directory's components, on the ports given to each call."""

    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        # Per client certificate; cleared by forget_credentials().
        self._ssl_contexts: dict[str, ssl.SSLContext] = {}

    def forget_credentials(self) -> None:
        """Drop the cached TLS contexts: the PKI may have been replaced."""
        self._ssl_contexts.clear()

    def _ssl_context(self, client: str = "admin") -> ssl.SSLContext:
        context = self._ssl_contexts.get(client)
        if context is None:
            pki = self.layout.pki
            context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            context.load_cert_chain(pki / f"{client}.crt", pki / f"{client}.key")
            self._ssl_contexts[client] = context
        return context

    def api(
        self, ports: Ports, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        """One admin request to the API server: (HTTP status, decoded JSON or text)."""
        return request(LOOPBACK, ports["apiserver"], method, path, self._ssl_context(), body)

    # -- readiness --------------------------------------------------------------------------

    def readiness_check(self, name: str, ports: Ports) -> Check:
        """What says component `name` is ready once started."""
        checks: dict[str, Check] = {
            "etcd": lambda: self.etcd_healthy(ports),
            "kube-apiserver": lambda: self.apiserver_ready(ports),
            "kube-controller-manager": lambda: _https_health(
                ports["controller_manager"], self._ssl_context()
            ),
            "kube-scheduler": lambda: _https_health(ports["scheduler"], self._ssl_context()),
            # KWOK has no health endpoint of its own here: its nodes turning Ready is the check.
            "kwok": lambda: None,
            "kube-state-metrics": lambda: self.kube_state_metrics_ready(ports),
        }
        return checks[name]

    def etcd_healthy(self, ports: Ports) -> str | None:
        context = self._ssl_context("apiserver-etcd-client")
        status, body = request(LOOPBACK, ports["etcd_client"], "GET", "/health", context)
        if status == 200 and isinstance(body, dict) and body.get("health") == "true":
            return None
        return f"/health answered {status}: {body}"

    def apiserver_ready(self, ports: Ports) -> str | None:
        try:
            status, body = self.api(ports, "GET", "/readyz?verbose")
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"
        if status == 200:
            return None
        failing = [ln for ln in str(body).splitlines() if "failed" in ln]
        return f"/readyz answered {status}: {'; '.join(failing) or body}"

    def kube_state_metrics_ready(self, ports: Ports) -> str | None:
        status, body = request(
            LOOPBACK, ports["kube_state_metrics"], "GET", "/metrics", None, timeout=10
        )
        if status != 200:
            return f"/metrics answered {status}"
        if "kube_node_info" not in str(body):
            return "/metrics has no kube_node_info yet"
        return None

    def ready_nodes(self, ports: Ports) -> set[str]:
        """The Ready fake nodes' names."""
        status, body = self.api(ports, "GET", _NODES_PATH)
        if status != 200:
            raise KubeClusterError("kube-apiserver", f"listing nodes answered {status}: {body}")
        ready = set()
        for node in body.get("items", []):
            for cond in node.get("status", {}).get("conditions") or []:
                if cond.get("type") == "Ready" and cond.get("status") == "True":
                    ready.add(node["metadata"]["name"])
        return ready

    def nodes_not_ready(self, ports: Ports, names: tuple[str, ...]) -> str | None:
        missing = sorted(set(names) - self.ready_nodes(ports))
        return f"nodes not Ready: {', '.join(missing)}" if missing else None

    def default_service_account_missing(self, ports: Ports) -> str | None:
        """The controller manager's last start-up step: the `default` ServiceAccount."""
        status, _ = self.api(ports, "GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return None if status == 200 else f"ServiceAccount default/default: HTTP {status}"

    # -- cluster objects --------------------------------------------------------------------

    def _create(self, ports: Ports, path: str, obj: Mapping[str, Any]) -> None:
        """POST `obj`; one that exists already (409) is fine."""
        status, body = self.api(ports, "POST", path, obj)
        if status not in (200, 201, 409):
            kind = obj.get("kind", "object")
            raise KubeClusterError(
                "kube-apiserver",
                f"creating {kind} {obj['metadata']['name']} answered {status}: {body}",
                self.layout.log_file("kube-apiserver"),
            )

    def bootstrap_rbac(self, ports: Ports) -> None:
        """kube-state-metrics' identity may get, list and watch everything."""
        self._create(
            ports,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": _KSM_ROLE},
                "rules": [
                    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}
                ],
            },
        )
        self._create(
            ports,
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": _KSM_ROLE},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": _KSM_ROLE,
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": "kube-state-metrics",
                    }
                ],
            },
        )

    def ensure_nodes(self, ports: Ports, wanted: tuple[str, ...]) -> None:
        """Create the fake nodes `wanted`, and delete the other fake nodes."""
        for index, name in enumerate(wanted):
            self._create(ports, "/api/v1/nodes", node_manifest(name, index))
        status, body = self.api(ports, "GET", _NODES_PATH)
        if status == 200:
            for node in body.get("items", []):
                name = node["metadata"]["name"]
                if name not in wanted:
                    self.api(ports, "DELETE", f"/api/v1/nodes/{name}")


def node_manifest(name: str, index: int) -> dict[str, Any]:
    """A fake Node that KWOK manages (the `index`th: its made-up address)."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {
                NODE_LABEL: "kwok",
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "node-role.kubernetes.io/agent": "",
            },
        },
        "status": {
            "allocatable": resources,
            "capacity": resources,
            # Addresses for the record only: nothing listens there, and nothing is sent.
            "addresses": [
                {"type": "InternalIP", "address": f"10.200.{index // 250}.{index % 250 + 1}"},
                {"type": "Hostname", "address": name},
            ],
        },
    }


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    context: ssl.SSLContext | None,
    body: Mapping[str, Any] | None = None,
    *,
    timeout: float = 5.0,
) -> tuple[int, Any]:
    """One HTTP(S) request (HTTPS when `context`): (status, decoded JSON or text)."""
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    text = raw.decode(errors="replace")
    # etcd's /health says text/plain for its JSON body.
    if text.lstrip().startswith(("{", "[")):
        with contextlib.suppress(ValueError):
            return response.status, json.loads(text)
    return response.status, text


def _https_health(port: int, context: ssl.SSLContext) -> str | None:
    status, body = request(LOOPBACK, port, "GET", "/healthz", context)
    return None if status == 200 else f"/healthz answered {status}: {str(body)[:300]}"
