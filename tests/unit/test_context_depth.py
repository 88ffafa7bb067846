"""The parts of a workload's context that are plain functions: the Secrets a pod spec uses
(names only), which Services select its pods, a node's state, and why a part is missing."""

from __future__ import annotations

from types import SimpleNamespace

from kubernetes_asyncio.client.exceptions import ApiException

from kubernaut.services.context_api.resources import (
    missing_because,
    node_state,
    secrets_used,
    selects,
)


def test_every_way_a_pod_spec_names_a_secret_is_found() -> None:
    spec = {
        "containers": [
            {
                "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x"}}},
                    {"name": "C", "value": "plain"},
                ],
                "envFrom": [{"secretRef": {"name": "api"}}, {"configMapRef": {"name": "cfg"}}],
            }
        ],
        "initContainers": [{"envFrom": [{"secretRef": {"name": "migrate"}}]}],
        "volumes": [
            {"name": "v1", "secret": {"secretName": "tls"}},
            {"name": "v2", "projected": {"sources": [{"secret": {"name": "bundle"}}]}},
            {"name": "v3", "configMap": {"name": "cfg"}},
        ],
        "imagePullSecrets": [{"name": "pull"}],
    }
    assert secrets_used(spec) == ["api", "bundle", "db", "migrate", "pull", "tls"]
    assert secrets_used({}) == []


def test_a_service_selects_pods_whose_labels_hold_its_selector() -> None:
    pods = {"app": "web", "tier": "front"}
    assert selects({"app": "web"}, pods)
    assert not selects({"app": "web", "tier": "back"}, pods)
    assert not selects({}, pods) and not selects(None, pods)


def test_a_node_says_its_readiness_pressure_and_cordon() -> None:
    def condition(kind: str, status: str, reason: str = "") -> SimpleNamespace:
        return SimpleNamespace(type=kind, status=status, reason=reason)

    node = SimpleNamespace(
        metadata=SimpleNamespace(name="n1"),
        spec=SimpleNamespace(unschedulable=True),
        status=SimpleNamespace(
            conditions=[
                condition("Ready", "False", "KubeletNotReady"),
                condition("MemoryPressure", "True"),
                condition("DiskPressure", "False"),
            ]
        ),
    )
    state = node_state(node)
    assert (state.name, state.ready, state.not_ready_reason) == ("n1", False, "KubeletNotReady")
    assert list(state.pressure) == ["MemoryPressure"] and state.unschedulable


def test_a_missing_part_says_why() -> None:
    assert missing_because(ApiException(status=403)).startswith("forbidden (403)")
    assert missing_because(ApiException(status=500)) == "the API server answered 500"
    assert missing_because(OSError("refused")) == "not read (OSError: refused)"
