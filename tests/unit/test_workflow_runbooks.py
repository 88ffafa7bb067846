"""Runbook templates: the shipped ones load and render; bad files are refused at load with
the file and the JSON path named; versions; choosing and rendering."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernaut.common.v1 import alert_pb2, remediation_pb2
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.runtime.validation import violations_of
from kubernaut.services.executor.catalogue import describe_action
from kubernaut.services.executor.checks import CHECK_KINDS
from kubernaut.services.workflow.runbooks import (
    RunbookCatalogue,
    RunbookError,
    default_runbook_dir,
    load_runbooks,
    semver_key,
)

R = remediation_pb2


def _ref(kind: str, name: str, namespace: str = "") -> alert_pb2.ResourceRef:
    return alert_pb2.ResourceRef(cluster="prod", kind=kind, namespace=namespace, name=name)


def _alert(name: str, **labels: str) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        name=name, status=alert_pb2.ALERT_STATUS_FIRING, labels={"severity": "warning", **labels}
    )


def _recommendation(
    action: remediation_pb2.ActionParams, target: alert_pb2.ResourceRef
) -> remediation_pb2.Recommendation:
    return R.Recommendation(action=action, target=target, confidence=0.8, reasons=["why"])


@dataclass(frozen=True)
class Case:
    runbook: str
    alert: alert_pb2.Alert
    recommendation: remediation_pb2.Recommendation
    # Each node's target as (kind, namespace, name), in file order.
    targets: list[tuple[str, str, str]]
    actions: dict[str, remediation_pb2.ActionParams] = field(default_factory=dict)
    # What the workflow read of the target when it planned.
    workload: dict[str, int] = field(default_factory=dict)


SHOP = "shop"
CASES = [
    Case(
        "node-not-ready",
        _alert("KubeNodeNotReady", node="worker-3"),
        _recommendation(R.ActionParams(cordon_node=R.CordonNodeParams()), _ref("Node", "worker-3")),
        [("Node", "", "worker-3")] * 3,
        {"drain": R.ActionParams(drain_node=R.DrainNodeParams(timeout_seconds=120))},
    ),
    Case(
        "statefulset-one-at-a-time",
        _alert("KubeStatefulSetReplicasMismatch", namespace=SHOP, statefulset="pg"),
        _recommendation(R.ActionParams(delete_pod=R.DeletePodParams()), _ref("Pod", "pg-1", SHOP)),
        [("Pod", SHOP, f"pg-{i}") for i in (0, 0, 1, 1, 2, 2)],
    ),
    Case(
        "bad-rollout-rollback-and-verify",
        _alert("KubeDeploymentRolloutStuck", namespace=SHOP, deployment="web"),
        _recommendation(
            R.ActionParams(rollback_deployment=R.RollbackDeploymentParams(to_revision=7)),
            _ref("Deployment", "web", SHOP),
        ),
        [("Deployment", SHOP, "web")] * 2,
        {"rollback": R.ActionParams(rollback_deployment=R.RollbackDeploymentParams(to_revision=7))},
    ),
    Case(
        "bad-rollout-with-scale-guard",
        _alert("KubeDeploymentRolloutStuck", namespace=SHOP, deployment="web"),
        _recommendation(
            R.ActionParams(rollback_deployment=R.RollbackDeploymentParams(to_revision=7)),
            _ref("Deployment", "web", SHOP),
        ),
        [("Deployment", SHOP, "web")] * 4,
        {
            "scale_up": R.ActionParams(scale_deployment=R.ScaleDeploymentParams(replicas=4)),
            "rollback": R.ActionParams(
                rollback_deployment=R.RollbackDeploymentParams(to_revision=7)
            ),
            "scale_down": R.ActionParams(scale_deployment=R.ScaleDeploymentParams(replicas=3)),
        },
        workload={"replicas": 3, "ready_replicas": 1},
    ),
    Case(
        "oom-raise-limit-and-verify",
        _alert("KubeContainerOOMKilled", namespace=SHOP, deployment="web", container="app"),
        _recommendation(
            R.ActionParams(
                increase_memory_limit=R.IncreaseMemoryLimitParams(
                    container="app", factor=1.5, max_limit="2Gi"
                )
            ),
            _ref("Deployment", "web", SHOP),
        ),
        [("Deployment", SHOP, "web")] * 2,
        {
            "raise_limit": R.ActionParams(
                increase_memory_limit=R.IncreaseMemoryLimitParams(
                    container="app", factor=1.5, max_limit="2Gi"
                )
            )
        },
    ),
    Case(
        "hpa-maxed",
        _alert(
            "KubeHpaMaxedOut",
            namespace=SHOP,
            horizontalpodautoscaler="web",
            scaletargetref_kind="Deployment",
            scaletargetref_name="web-app",
        ),
        _recommendation(
            R.ActionParams(update_hpa=R.UpdateHpaParams(max_replicas=12)),
            _ref("HorizontalPodAutoscaler", "web", SHOP),
        ),
        [("HorizontalPodAutoscaler", SHOP, "web"), ("Deployment", SHOP, "web-app")],
        {"raise_max": R.ActionParams(update_hpa=R.UpdateHpaParams(max_replicas=12))},
    ),
    Case(
        "job-failed-rerun",
        _alert("KubeJobFailed", namespace="batch", job_name="nightly-1700"),
        _recommendation(
            R.ActionParams(rerun_failed_job=R.RerunFailedJobParams()),
            _ref("Job", "nightly-1700", "batch"),
        ),
        [("Job", "batch", "nightly-1700")] * 2,
    ),
]


@pytest.fixture(scope="module")
def shipped() -> RunbookCatalogue:
    return load_runbooks(default_runbook_dir())


def test_every_shipped_runbook_has_a_case(shipped: RunbookCatalogue) -> None:
    assert sorted({r.name for r in shipped.list()}) == sorted(c.runbook for c in CASES)
    assert len(shipped) >= 6


@pytest.mark.parametrize("case", CASES, ids=[c.runbook for c in CASES])
def test_shipped_runbook_renders(shipped: RunbookCatalogue, case: Case) -> None:
    chosen = shipped.choose(case.alert, case.recommendation, case.workload)
    assert chosen is not None
    runbook = shipped.latest(case.runbook)
    assert runbook is not None
    assert chosen.ref == runbook.ref
    assert chosen.ref.digest == hashlib.sha256(runbook.source.read_bytes()).hexdigest()
    assert [n.name for n in chosen.nodes] == [s["name"] for s in runbook.steps]
    assert chosen.max_parallel >= 1
    targets = [(n.target.kind, n.target.namespace, n.target.name) for n in chosen.nodes]
    assert targets == case.targets
    for node in chosen.nodes:
        assert violations_of(node) == []
        assert node.target.cluster == "prod"
        assert "{{" not in node.description
        if node.HasField("action"):
            name = node.action.WhichOneof("params")
            assert name is not None
            # The executor's catalogue offers the action on the node's kind.
            assert node.target.kind in describe_action(name).target_kinds, node.name
            if node.name in case.actions:
                assert node.action == case.actions[node.name]
        else:
            check = node.check.WhichOneof("check")
            assert check is not None
            assert node.target.kind in CHECK_KINDS[check], node.name
        if node.compensation.HasField("action"):
            undo = node.compensation.action.WhichOneof("params")
            assert undo is not None
            kind = node.compensation.target.kind or node.target.kind
            assert kind in describe_action(undo).target_kinds


def test_statefulset_runbook_from_a_statefulset_target(shipped: RunbookCatalogue) -> None:
    """A model's restart_statefulset for a crash-looping StatefulSet pod: the target is
    the StatefulSet itself, and each step is one of its pods, in order, each after the
    previous one is Ready."""
    chosen = shipped.choose(
        _alert("KubePodCrashLooping", namespace=SHOP, pod="pg-2"),
        _recommendation(
            R.ActionParams(restart_statefulset=R.RestartStatefulSetParams()),
            _ref("StatefulSet", "pg", SHOP),
        ),
    )
    assert chosen is not None
    assert chosen.ref.name == "statefulset-one-at-a-time"
    assert [n.target.name for n in chosen.nodes] == ["pg-0", "pg-0", "pg-1", "pg-1", "pg-2", "pg-2"]
    assert [list(n.depends_on) for n in chosen.nodes] == [
        [],
        ["delete_pod_0"],
        ["pod_0_ready"],
        ["delete_pod_1"],
        ["pod_1_ready"],
        ["delete_pod_2"],
    ]


def test_listing(shipped: RunbookCatalogue) -> None:
    listed = shipped.list()
    assert [(r.name, r.version) for r in listed] == sorted((r.name, r.version) for r in listed)
    node = next(r for r in listed if r.name == "node-not-ready")
    assert list(node.steps) == ["cordon", "drain", "relocated"]
    assert "KubeNodeNotReady" in node.alerts
    assert list(node.actions) == ["cordon_node", "drain_node"]
    assert node.source.endswith("node-not-ready.yaml")
    assert len(node.digest) == 64


def test_schema_names_every_action_and_check() -> None:
    schema = json.loads((default_runbook_dir() / "schema.json").read_text())
    actions = R.ActionParams.DESCRIPTOR.oneofs_by_name["params"].fields
    checks = R.CheckParams.DESCRIPTOR.oneofs_by_name["check"].fields
    assert schema["$defs"]["actionName"]["enum"] == [f.name for f in actions]
    assert schema["$defs"]["checkName"]["enum"] == [f.name for f in checks]


# -- refused at load ---------------------------------------------------------------------

BASE = """\
name: sample
version: "1.0.0"
description: A sample.
match:
  alerts: [KubeDeploymentReplicasMismatch]
  actions: [scale_deployment]
steps:
  - name: scale
    action: {scale_deployment: {replicas: "{{ params.replicas + 1 }}"}}
    compensation: {undo: true}
  - name: ready
    depends_on: [scale]
    check: {workload_ready: {}}
"""


def _write(directory: Path, text: str, file: str = "sample.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file
    path.write_text(text)
    return path


def _refused(directory: Path) -> RunbookError:
    with pytest.raises(RunbookError) as caught:
        load_runbooks(directory)
    return caught.value


def test_the_base_sample_loads(tmp_path: Path) -> None:
    _write(tmp_path, BASE)
    assert [r.name for r in load_runbooks(tmp_path).list()] == ["sample"]


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        pytest.param(BASE + "owner: me\n", "$", "'owner' was unexpected", id="unknown-key"),
        pytest.param(
            BASE.replace("    compensation: {undo: true}", "    retries: 3"),
            "$.steps[0]",
            "'retries' was unexpected",
            id="unknown-step-key",
        ),
        pytest.param(
            BASE.replace("name: sample\n", ""), "$", "'name' is a required property", id="no-name"
        ),
        pytest.param(
            BASE.replace('version: "1.0.0"', 'version: "1.0"'),
            "$.version",
            "'1.0' is not valid: Semantic version",
            id="version-not-semver",
        ),
        pytest.param(
            BASE.replace('version: "1.0.0"', "version: 1.0"),
            "$.version",
            "is not of type 'string'",
            id="version-unquoted",
        ),
        pytest.param(
            BASE.replace("scale_deployment]", "scale_everything]"),
            "$.match.actions[0]",
            "is not one of",
            id="unknown-action-name",
        ),
        pytest.param(
            BASE.replace("    check: {workload_ready: {}}", "    timeout_seconds: 10"),
            "$.steps[1]",
            "needs exactly one of action, check (has none)",
            id="neither-action-nor-check",
        ),
        pytest.param(
            BASE + "    compensation: {undo: true}\n",
            "$.steps[1]",
            "not allowed here",
            id="compensated-check",
        ),
        pytest.param(
            BASE.replace("  - name: ready", "  - name: Ready-Step"),
            "$.steps[1].name",
            "'Ready-Step' is not valid",
            id="step-name-pattern",
        ),
    ],
)
def test_schema_errors(tmp_path: Path, text: str, path: str, words: str) -> None:
    _write(tmp_path, text)
    error = _refused(tmp_path)
    assert error.path == path
    assert words in str(error)
    assert str(error).startswith(str(tmp_path / "sample.yaml") + ": " + path + ": ")


def test_cycle(tmp_path: Path) -> None:
    _write(
        tmp_path, BASE.replace("    action: {scale", "    depends_on: [ready]\n    action: {scale")
    )
    error = _refused(tmp_path)
    assert "cycle" in error.problem
    assert error.path.startswith("$.steps[")
    assert "scale" in error.problem
    assert "ready" in error.problem


def test_unknown_dependency(tmp_path: Path) -> None:
    _write(tmp_path, BASE.replace("depends_on: [scale]", "depends_on: [scale, warm_up]"))
    error = _refused(tmp_path)
    assert error.path == "$.steps[1].depends_on[1]"
    assert "'warm_up' is not a step" in error.problem


def test_duplicate_step_names(tmp_path: Path) -> None:
    _write(tmp_path, BASE.replace("  - name: ready", "  - name: scale"))
    error = _refused(tmp_path)
    assert error.path == "$.steps[1].name"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        pytest.param(
            BASE.replace("steps:\n", "  when: 'alert.labels[\"team\" == '\nsteps:\n", 1),
            "$.match.when",
            id="match",
        ),
        pytest.param(
            BASE.replace("    depends_on: [scale]", "    depends_on: [scale]\n    when: 'steps.('"),
            "$.steps[1].when",
            id="step",
        ),
    ],
)
def test_bad_cel(tmp_path: Path, text: str, path: str) -> None:
    _write(tmp_path, text)
    error = _refused(tmp_path)
    assert error.path == path
    assert "not valid CEL" in error.problem


@pytest.mark.parametrize(
    ("old", "new", "path", "words"),
    [
        pytest.param(
            'replicas: "{{ params.replicas + 1 }}"',
            "replica: 3",
            "$.steps[0].action",
            "replica",
            id="unknown-field",
        ),
        pytest.param(
            'replicas: "{{ params.replicas + 1 }}"',
            "replicas: three",
            "$.steps[0].action",
            "three",
            id="literal-of-the-wrong-type",
        ),
        pytest.param(
            "compensation: {undo: true}",
            "compensation: {action: {scale_deployment: {replicas: [1]}}}",
            "$.steps[0].compensation.action",
            "replicas",
            id="compensation",
        ),
        pytest.param(
            'replicas: "{{ params.replicas + 1 }}"',
            'replicas: "{{ params.replicas + }}"',
            "$.steps[0].action.scale_deployment.replicas",
            "not a valid Jinja2 template",
            id="template-syntax",
        ),
    ],
)
def test_bad_action_body(tmp_path: Path, old: str, new: str, path: str, words: str) -> None:
    assert old in BASE
    _write(tmp_path, BASE.replace(old, new))
    error = _refused(tmp_path)
    assert error.path == path
    assert words in error.problem


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    _write(tmp_path, BASE + 'version: "2.0.0"\n')
    error = _refused(tmp_path)
    assert "twice" in error.problem


def test_duplicate_name_and_version(tmp_path: Path) -> None:
    _write(tmp_path, BASE, "a.yaml")
    _write(tmp_path, BASE.replace("A sample.", "Another."), "b.yaml")
    error = _refused(tmp_path)
    assert error.source.endswith("b.yaml")
    assert "a.yaml" in error.problem
    assert "sample 1.0.0" in error.problem


def test_only_yaml_files_are_read(tmp_path: Path) -> None:
    _write(tmp_path, BASE)
    _write(tmp_path, "not: a runbook\n", "notes.txt")
    assert len(load_runbooks(tmp_path)) == 1
    (tmp_path / "empty").mkdir()
    assert len(load_runbooks(tmp_path / "empty")) == 0


def test_missing_directory(tmp_path: Path) -> None:
    error = _refused(tmp_path / "nowhere")
    assert "not a directory" in error.problem


# -- versions ----------------------------------------------------------------------------


def test_semver_precedence() -> None:
    ordered = [
        "0.9.0",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.2.0",
        "1.10.0",
        "2.0.0",
    ]
    assert sorted(reversed(ordered), key=semver_key) == ordered
    with pytest.raises(ValueError, match="not a semantic version"):
        semver_key("1.0")


def _scale_case(
    alert: str = "KubeDeploymentReplicasMismatch",
) -> tuple[alert_pb2.Alert, remediation_pb2.Recommendation]:
    return (
        _alert(alert, namespace=SHOP, deployment="web"),
        _recommendation(
            R.ActionParams(scale_deployment=R.ScaleDeploymentParams(replicas=3)),
            _ref("Deployment", "web", SHOP),
        ),
    )


def test_highest_version_is_chosen_and_old_ones_replay(tmp_path: Path) -> None:
    _write(tmp_path, BASE, "v1.yaml")
    newer = BASE.replace('version: "1.0.0"', 'version: "1.10.0"').replace(
        "params.replicas + 1", "params.replicas + 2"
    )
    _write(tmp_path, newer, "v10.yaml")
    _write(tmp_path, BASE.replace('version: "1.0.0"', 'version: "1.9.0"'), "v9.yaml")
    catalogue = load_runbooks(tmp_path)
    assert [r.version for r in catalogue.list()] == ["1.0.0", "1.9.0", "1.10.0"]
    alert, recommendation = _scale_case()

    chosen = catalogue.choose(alert, recommendation)
    assert chosen is not None
    assert chosen.ref.version == "1.10.0"
    assert chosen.nodes[0].action.scale_deployment.replicas == 5

    old = catalogue.get("sample", "1.0.0")
    assert old is not None
    replayed = catalogue.render(old, alert, recommendation)
    assert replayed.ref.version == "1.0.0"
    assert replayed.nodes[0].action.scale_deployment.replicas == 4
    # By the reference an incident kept.
    assert catalogue.render(replayed.ref, alert, recommendation) == replayed
    assert catalogue.get("sample", "3.0.0") is None
    stale = workflow_pb2.RunbookRef(name="sample", version="1.0.0", digest="0" * 64)
    with pytest.raises(RunbookError, match="loaded as"):
        catalogue.render(stale, alert, recommendation)


def test_an_older_version_is_not_chosen_when_the_current_does_not_match(tmp_path: Path) -> None:
    _write(tmp_path, BASE, "v1.yaml")
    _write(
        tmp_path,
        BASE.replace('version: "1.0.0"', 'version: "2.0.0"').replace(
            "KubeDeploymentReplicasMismatch", "KubeDeploymentRolloutStuck"
        ),
        "v2.yaml",
    )
    catalogue = load_runbooks(tmp_path)
    assert catalogue.choose(*_scale_case()) is None
    chosen = catalogue.choose(*_scale_case("KubeDeploymentRolloutStuck"))
    assert chosen is not None
    assert chosen.ref.version == "2.0.0"


# -- choosing and rendering --------------------------------------------------------------


def test_choose_none_when_alert_or_action_or_condition_does_not_match(
    shipped: RunbookCatalogue,
) -> None:
    oom = next(c for c in CASES if c.runbook == "oom-raise-limit-and-verify")
    assert shipped.choose(oom.alert, oom.recommendation) is not None
    other_alert = alert_pb2.Alert()
    other_alert.CopyFrom(oom.alert)
    other_alert.name = "KubeCPUOvercommit"
    assert shipped.choose(other_alert, oom.recommendation) is None
    other_action = _recommendation(
        R.ActionParams(restart_deployment=R.RestartDeploymentParams()),
        oom.recommendation.target,
    )
    assert shipped.choose(oom.alert, other_action) is None
    # match.when: a Pod is not a workload whose limit can be raised.
    on_pod = remediation_pb2.Recommendation()
    on_pod.CopyFrom(oom.recommendation)
    on_pod.target.kind = "Pod"
    assert shipped.choose(oom.alert, on_pod) is None
    # hpa-maxed: the mixin's alert names no scale target.
    hpa = next(c for c in CASES if c.runbook == "hpa-maxed")
    bare = _alert("KubeHpaMaxedOut", namespace=SHOP, horizontalpodautoscaler="web")
    assert shipped.choose(bare, hpa.recommendation) is None


def test_match_condition_that_fails_is_not_a_match(tmp_path: Path) -> None:
    _write(
        tmp_path,
        BASE.replace("steps:\n", '  when: \'alert.labels["team"] == "payments"\'\nsteps:\n', 1),
    )
    catalogue = load_runbooks(tmp_path)
    alert, recommendation = _scale_case()
    assert catalogue.choose(alert, recommendation) is None  # no team label: an error, no match
    alert.labels["team"] = "payments"
    assert catalogue.choose(alert, recommendation) is not None


def test_render_error_chooses_nothing_but_render_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(
        tmp_path,
        BASE.replace(
            "    compensation: {undo: true}",
            "    target: {kind: Deployment, name: \"{{ alert.labels['app'] }}\"}",
        ),
    )
    catalogue = load_runbooks(tmp_path)
    alert, recommendation = _scale_case()
    with caplog.at_level(logging.WARNING, logger="kubernaut.services.workflow.runbooks"):
        assert catalogue.choose(alert, recommendation) is None
    record = next(r for r in caplog.records if "does not render" in r.getMessage())
    assert "$.steps[0].target.name" in record.__dict__["error"]
    runbook = catalogue.latest("sample")
    assert runbook is not None
    with pytest.raises(RunbookError) as caught:
        catalogue.render(runbook, alert, recommendation)
    assert caught.value.path == "$.steps[0].target.name"
    assert "'app'" in caught.value.problem
    alert.labels["app"] = "web"
    assert catalogue.choose(alert, recommendation) is not None


def test_rendered_values_are_validated(tmp_path: Path) -> None:
    _write(tmp_path, BASE.replace("params.replicas + 1", "params.replicas * 1000"))
    catalogue = load_runbooks(tmp_path)
    runbook = catalogue.latest("sample")
    assert runbook is not None
    with pytest.raises(RunbookError) as caught:
        catalogue.render(runbook, *_scale_case())
    assert caught.value.path == "$.steps[0]"
    assert "action.scale_deployment.replicas" in caught.value.problem


CORDON = """\
  - name: cordon
    depends_on: [ready]
    action: {cordon_node: {}}
    target: {kind: Node, name: "{{ alert.labels.node }}"}
    when: 'steps.ready.state == "done"'
    retry: {attempts: 3, backoff_seconds: 5, max_backoff_seconds: 60}
    continue_on_failure: true
    compensation:
      action: {uncordon_node: {}}
      target: {kind: Node, name: "{{ alert.labels.node }}", namespace: ""}
"""


def test_defaults_of_a_rendered_node(tmp_path: Path) -> None:
    """No target: the recommendation's; a Node target has no namespace; strings become
    numbers and bools through the proto JSON form."""
    _write(tmp_path, BASE + CORDON)
    catalogue = load_runbooks(tmp_path)
    alert, recommendation = _scale_case()
    alert.labels["node"] = "worker-1"
    chosen = catalogue.choose(alert, recommendation)
    assert chosen is not None
    scale, ready, cordon = chosen.nodes
    assert scale.target == recommendation.target
    assert scale.action.scale_deployment.replicas == 4
    assert scale.compensation.undo
    assert ready.target == recommendation.target
    assert cordon.target == alert_pb2.ResourceRef(cluster="prod", kind="Node", name="worker-1")
    assert cordon.when == 'steps.ready.state == "done"'
    assert cordon.retry == workflow_pb2.RetryPolicy(
        attempts=3, backoff_seconds=5, max_backoff_seconds=60
    )
    assert cordon.continue_on_failure
    assert cordon.compensation.target.name == "worker-1"
    assert chosen.max_parallel == 1


def test_templates_cannot_reach_outside_the_sandbox(tmp_path: Path) -> None:
    _write(
        tmp_path,
        BASE.replace(
            "    compensation: {undo: true}",
            '    description: "{{ params.__class__.__mro__ }}"\n    compensation: {undo: true}',
        ),
    )
    catalogue = load_runbooks(tmp_path)
    runbook = catalogue.latest("sample")
    assert runbook is not None
    with pytest.raises(RunbookError) as caught:
        catalogue.render(runbook, *_scale_case())
    assert caught.value.path == "$.steps[0].description"


def test_literal_values_keep_their_rules_at_load(tmp_path: Path) -> None:
    _write(tmp_path, BASE.replace('"{{ params.replicas + 1 }}"', "5000"))
    error = _refused(tmp_path)
    assert error.path == "$.steps[0].action.scale_deployment.replicas"
    assert "1000" in error.problem
    _write(
        tmp_path,
        BASE.replace("    compensation: {undo: true}", "    target: {kind: node, name: x}"),
    )
    error = _refused(tmp_path)
    assert error.path == "$.steps[0].target.kind"


def test_context_numbers(tmp_path: Path) -> None:
    """64-bit parameters reach templates as numbers (proto JSON would give strings)."""
    _write(
        tmp_path,
        BASE.replace("KubeDeploymentReplicasMismatch", "KubeDeploymentRolloutStuck")
        .replace("scale_deployment]", "rollback_deployment]")
        .replace(
            'scale_deployment: {replicas: "{{ params.replicas + 1 }}"}',
            'rollback_deployment: {to_revision: "{{ params.to_revision - 1 }}"}',
        ),
    )
    catalogue = load_runbooks(tmp_path)
    chosen = catalogue.choose(
        _alert("KubeDeploymentRolloutStuck", namespace=SHOP, deployment="web"),
        _recommendation(
            R.ActionParams(rollback_deployment=R.RollbackDeploymentParams(to_revision=8)),
            _ref("Deployment", "web", SHOP),
        ),
    )
    assert chosen is not None
    assert chosen.nodes[0].action.rollback_deployment.to_revision == 7
