"""The context API's alert knowledge base."""

from __future__ import annotations

import pytest

from kubernaut.services.context_api import knowledge

UPSTREAM = [
    "KubePodCrashLooping",
    "KubePodNotReady",
    "KubeDeploymentReplicasMismatch",
    "KubeDeploymentRolloutStuck",
    "KubeContainerWaiting",
    "KubeNodeNotReady",
    "KubePersistentVolumeFillingUp",
    "KubeJobFailed",
]


@pytest.mark.parametrize("name", UPSTREAM)
def test_upstream_alerts(name: str) -> None:
    entry = knowledge.get_alert_knowledge(name)
    assert entry.alert_name == name
    assert entry.origin == "kubernetes-mixin"
    assert entry.runbook_url == (
        f"https://runbooks.prometheus-operator.dev/runbooks/kubernetes/{name.lower()}"
    )
    assert entry.summary.strip()
    assert "\n" not in entry.summary
    assert entry.subject_labels
    assert len(entry.likely_causes) >= 2
    assert all(c.strip() for c in entry.likely_causes)


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("KubePodCrashLooping", ["namespace", "pod", "container"]),
        ("KubePodNotReady", ["namespace", "pod"]),
        ("KubeDeploymentReplicasMismatch", ["namespace", "deployment"]),
        ("KubeDeploymentRolloutStuck", ["namespace", "deployment"]),
        ("KubeContainerWaiting", ["namespace", "pod", "container"]),
        ("KubeNodeNotReady", ["node"]),
        ("KubePersistentVolumeFillingUp", ["namespace", "persistentvolumeclaim"]),
        ("KubeJobFailed", ["namespace", "job_name"]),
        ("KubeContainerOOMKilled", ["namespace", "pod", "container"]),
    ],
)
def test_subject_labels(name: str, labels: list[str]) -> None:
    assert list(knowledge.get_alert_knowledge(name).subject_labels) == labels


@pytest.mark.parametrize(
    ("name", "summary"),
    [
        ("KubePodCrashLooping", "Pod is crash looping."),
        ("KubeDeploymentRolloutStuck", "Deployment rollout is not progressing."),
        ("KubeNodeNotReady", "Node is not ready."),
        ("KubeJobFailed", "Job failed to complete."),
    ],
)
def test_upstream_summaries(name: str, summary: str) -> None:
    assert knowledge.get_alert_knowledge(name).summary == summary


def test_oom_killed_is_kubernauts_own() -> None:
    entry = knowledge.get_alert_knowledge("KubeContainerOOMKilled")
    assert entry.origin == "kubernaut"
    # No upstream rule, so no upstream runbook to point at.
    assert entry.runbook_url == ""
    assert entry.summary.strip()
    assert entry.likely_causes


@pytest.mark.parametrize("name", ["KubeSomethingElse", "kubepodcrashlooping", "", " "])
def test_unknown_alert(name: str) -> None:
    with pytest.raises(knowledge.UnknownAlert) as info:
        knowledge.get_alert_knowledge(name)
    assert info.value.name == name
    assert isinstance(info.value, LookupError)


def test_results_are_fresh_copies() -> None:
    entry = knowledge.get_alert_knowledge("KubeNodeNotReady")
    entry.subject_labels.append("pod")
    entry.runbook_url = "https://evil.example/"
    again = knowledge.get_alert_knowledge("KubeNodeNotReady")
    assert list(again.subject_labels) == ["node"]
    assert again.runbook_url.startswith("https://runbooks.prometheus-operator.dev/")
