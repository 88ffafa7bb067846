"""The clusters a service reads or changes, by name: one KubeConnection each.

A `ResourceRef.cluster` names the cluster of an object (empty: the default one). The names
and how each is reached (KUBERNAUT_KUBE_CLUSTERS: kubeconfig, context or in-cluster) are
shared by every service that talks to clusters (context_api reads, the executor acts), so
that the evidence about an object and the action on it come from the same cluster; each
service still reaches it with its own kubeconfig, as its own least-privileged identity.
With no clusters configured there is one, `default_cluster`, reached by the other
KUBERNAUT_KUBE_* settings ($KUBECONFIG or in-cluster).
"""

from __future__ import annotations

import asyncio

from kubernaut.runtime.kube import KubeConnection
from kubernaut.runtime.settings import ClusterConfig, KubeSettings

__all__ = ["ClusterConfig", "ClusterRegistry", "UnknownCluster"]


class UnknownCluster(LookupError):
    """A request names a cluster that is not configured."""

    def __init__(self, cluster: str, known: tuple[str, ...]) -> None:
        super().__init__(
            f"unknown cluster {cluster!r}; the configured clusters are {', '.join(known) or 'none'}"
            " (KUBERNAUT_KUBE_CLUSTERS)"
        )
        self.cluster = cluster
        self.known = known


def _cluster_settings(kube: KubeSettings) -> dict[str, KubeSettings]:
    """The KubeSettings of each named cluster: the shared ones (timeouts) with the cluster's
    kubeconfig (empty: the service's own lookup), context (empty: the kubeconfig's current
    one) and in-cluster choice. No clusters configured: `default_cluster`, as `kube` says."""
    if not kube.clusters:
        return {kube.default_cluster: kube}
    return {
        name: kube.model_copy(
            update={
                "kubeconfig": config.kubeconfig or kube.kubeconfig,
                "context": config.context,
                "in_cluster": config.in_cluster,
                "clusters": {},
            }
        )
        for name, config in kube.clusters.items()
    }


class ClusterRegistry:
    """The configured clusters by name, one KubeConnection each (made with the registry;
    a connection connects on first use)."""

    def __init__(self, kube: KubeSettings) -> None:
        settings = _cluster_settings(kube)
        if "" in settings:
            # An empty ResourceRef.cluster means the default cluster, so no cluster can
            # be called that.
            raise ValueError(
                "a cluster name must not be empty (KUBERNAUT_KUBE_CLUSTERS,"
                " KUBERNAUT_KUBE_DEFAULT_CLUSTER)"
            )
        self._names = tuple(sorted(settings))
        if kube.default_cluster in settings:
            self._default = kube.default_cluster
        elif len(self._names) == 1:
            self._default = self._names[0]
        else:
            raise ValueError(
                f"the default cluster {kube.default_cluster!r}"
                " (KUBERNAUT_KUBE_DEFAULT_CLUSTER) is not one of the configured clusters"
                f" ({', '.join(self._names)}); set it to one of them"
            )
        self._connections = {name: KubeConnection(settings[name]) for name in self._names}

    @property
    def names(self) -> tuple[str, ...]:
        """Every cluster's name, sorted."""
        return self._names

    @property
    def default(self) -> str:
        return self._default

    def resolve(self, name: str) -> str:
        """The cluster a ResourceRef's `cluster` means: empty is the default one. Raises
        UnknownCluster for a name not configured (never falls back to the default)."""
        if not name:
            return self._default
        if name not in self._connections:
            raise UnknownCluster(name, self._names)
        return name

    def connection(self, name: str) -> KubeConnection:
        return self._connections[self.resolve(name)]

    @property
    def configured(self) -> bool:
        """The default cluster can be reached at all (a kubeconfig, or in a pod); without
        it the service runs but refuses its cluster RPCs."""
        return self._connections[self._default].configured

    async def ready(self) -> bool:
        """Every configured cluster's API server answers (a readiness check)."""
        configured = [c for c in self._connections.values() if c.configured]
        answers = await asyncio.gather(*(connection.ready() for connection in configured))
        return all(answers)

    async def close(self) -> None:
        await asyncio.gather(*(connection.close() for connection in self._connections.values()))
