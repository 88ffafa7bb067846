"""The bad-rollout scenario of the demo and the end-to-end tests: a sample app that runs,
a rollout that makes its pods crash-loop, and what healed looks like.

Pods misbehave through the dev stack's KWOK stages, selected by a pod annotation, so a
rollout that adds the annotation breaks the app and a rollback to the previous pod
template heals it, as a bad image and its rollback would on a real cluster.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kubernaut.devstack.stages import SIMULATE_ANNOTATION, PodSimulation
from kubernaut.runtime.kube import MANAGED_LABEL, KubeConnection
from kubernaut.runtime.settings import KubeSettings

GOOD_IMAGE = "registry.example/shop/checkout:1.4.2"
BAD_IMAGE = "registry.example/shop/checkout:1.5.0"


@dataclass(frozen=True)
class DeploymentState:
    image: str
    simulate: str
    replicas: int
    ready: int
    updated: int
    available: int

    @property
    def healthy(self) -> bool:
        return self.replicas > 0 and self.ready == self.updated == self.available == self.replicas

    @property
    def healed(self) -> bool:
        """Every pod Ready on the good image, none simulating a failure."""
        return self.healthy and self.image == GOOD_IMAGE and not self.simulate


class BadRollout:
    """A Deployment `name` (checkout) in `namespace`, opted in to Kubernaut or not."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str = "shop",
        *,
        opted_in: bool = True,
        replicas: int = 2,
        name: str = "checkout",
        pod_labels: dict[str, str] | None = None,
    ) -> None:
        """`pod_labels`: more labels on its pods (e.g. one a Service shared with another app
        selects)."""
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.name = name
        self.pod_labels = dict(pod_labels or {})
        self.opted_in = opted_in
        self.replicas = replicas
        self._connection = KubeConnection(KubeSettings(kubeconfig=str(kubeconfig)))

    async def _client(self) -> client.ApiClient:
        return await self._connection.api()

    async def close(self) -> None:
        await self._connection.close()

    def _deployment(self) -> dict[str, Any]:
        labels = {"app": self.name}
        return {
            "metadata": {"name": self.name, "labels": labels},
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": {**self.pod_labels, **labels}},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": GOOD_IMAGE,
                                "resources": {"limits": {"memory": "256Mi"}},
                            }
                        ]
                    },
                },
            },
        }

    async def deploy(self, timeout: float = 60.0) -> None:
        """Create the namespace and the app; wait until every pod is Ready."""
        api = await self._client()
        labels = {MANAGED_LABEL: "true"} if self.opted_in else {}
        try:
            namespace: Any = {"metadata": {"name": self.namespace, "labels": labels}}
            await client.CoreV1Api(api).create_namespace(namespace)
        except ApiException as error:
            if error.status != 409:
                raise
        deployment: Any = self._deployment()  # the client takes plain dicts as bodies
        await client.AppsV1Api(api).create_namespaced_deployment(self.namespace, deployment)
        await self.wait(lambda s: s.healthy and s.image == GOOD_IMAGE, timeout)

    async def break_it(self) -> None:
        """Roll out a new image whose pods crash-loop."""
        patch = {
            "spec": {
                "template": {
                    "metadata": {
                        "annotations": {SIMULATE_ANNOTATION: PodSimulation.CRASHLOOP.value}
                    },
                    "spec": {"containers": [{"name": "app", "image": BAD_IMAGE}]},
                }
            }
        }
        await client.AppsV1Api(await self._client()).patch_namespaced_deployment(
            self.name, self.namespace, patch
        )

    async def state(self) -> DeploymentState:
        deployment = await client.AppsV1Api(await self._client()).read_namespaced_deployment(
            self.name, self.namespace
        )
        template = deployment.spec.template
        status = deployment.status
        return DeploymentState(
            image=template.spec.containers[0].image,
            simulate=(template.metadata.annotations or {}).get(SIMULATE_ANNOTATION, ""),
            replicas=deployment.spec.replicas or 0,
            ready=status.ready_replicas or 0,
            updated=status.updated_replicas or 0,
            available=status.available_replicas or 0,
        )

    async def healed(self) -> bool:
        return (await self.state()).healed

    async def wait(self, predicate: Any, timeout: float) -> DeploymentState:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            state = await self.state()
            if predicate(state):
                return state
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"deployment {self.namespace}/{self.name} is {state}")
            await asyncio.sleep(0.5)
