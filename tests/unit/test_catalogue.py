"""The executor's action catalogue: complete, consistent with ActionParams, least privilege."""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf.descriptor import FieldDescriptor
from kubernaut.common.v1 import remediation_pb2
from kubernaut.executor.v1 import executor_pb2

from kubernaut.services.executor import catalogue

ONEOF_FIELDS = list(remediation_pb2.ActionParams.DESCRIPTOR.oneofs_by_name["params"].fields)
EXPECTED_NAMES = sorted(
    [
        "collect_diagnostics",
        "cordon_node",
        "delete_pod",
        "drain_node",
        "expand_pvc",
        "increase_cpu_limit",
        "increase_memory_limit",
        "notify_only",
        "patch_resource",
        "quarantine_pod",
        "rerun_failed_job",
        "restart_daemonset",
        "restart_deployment",
        "restart_statefulset",
        "resume_cronjob",
        "rollback_deployment",
        "scale_deployment",
        "scale_statefulset",
        "suspend_cronjob",
        "taint_node",
        "uncordon_node",
        "untaint_node",
        "update_configmap_key",
        "update_hpa",
        "update_resource_requests",
    ]
)
# Actions that only read or do nothing: no dry-run, nothing to undo.
READ_ONLY = {"collect_diagnostics", "notify_only"}
IRREVERSIBLE = {"collect_diagnostics", "delete_pod", "expand_pvc", "notify_only"}
HIGH = {"drain_node", "patch_resource", "scale_statefulset"}
LOW = {
    "collect_diagnostics",
    "notify_only",
    "rerun_failed_job",
    "restart_deployment",
    "resume_cronjob",
    "suspend_cronjob",
    "uncordon_node",
    "untaint_node",
}


def _verbs(action: executor_pb2.ActionDefinition) -> dict[tuple[str, str, str], set[str]]:
    verbs: dict[tuple[str, str, str], set[str]] = {}
    for p in action.permissions:
        verbs.setdefault((p.api_group, p.resource, p.subresource), set()).update(p.verbs)
    return verbs


def test_list_actions_sorted_and_complete() -> None:
    names = [a.name for a in catalogue.list_actions()]
    assert names == EXPECTED_NAMES
    assert len(names) >= 25
    assert names == sorted(f.name for f in ONEOF_FIELDS)


def test_every_oneof_field_has_exactly_one_entry_and_vice_versa() -> None:
    names = [a.name for a in catalogue.list_actions()]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in ONEOF_FIELDS}


@pytest.mark.parametrize("field", ONEOF_FIELDS, ids=lambda f: f.name)
def test_parameters_type_is_the_oneof_field_message(field: FieldDescriptor) -> None:
    assert field.message_type is not None
    action = catalogue.describe_action(field.name)
    assert action.parameters_type == field.message_type.full_name


def test_parameters_type_full_names() -> None:
    types = {a.name: a.parameters_type for a in catalogue.list_actions()}
    assert types["increase_memory_limit"] == "kubernaut.common.v1.IncreaseMemoryLimitParams"
    assert types["update_configmap_key"] == "kubernaut.common.v1.UpdateConfigMapKeyParams"
    assert all(
        t.startswith("kubernaut.common.v1.") and t.endswith("Params") for t in types.values()
    )


def test_risk_levels() -> None:
    risks = {a.name: a.risk for a in catalogue.list_actions()}
    assert {n for n, r in risks.items() if r == remediation_pb2.RISK_LEVEL_HIGH} == HIGH
    assert {n for n, r in risks.items() if r == remediation_pb2.RISK_LEVEL_LOW} == LOW
    assert remediation_pb2.RISK_LEVEL_UNSPECIFIED not in risks.values()


def test_reversibility() -> None:
    irreversible = {a.name for a in catalogue.list_actions() if not a.reversible}
    assert irreversible == IRREVERSIBLE
    for name in IRREVERSIBLE:
        rollback = catalogue.describe_action(name).rollback
        assert rollback.startswith(("Not reversible", "Nothing to undo")), rollback


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_every_entry_is_filled_in(name: str) -> None:
    action = catalogue.describe_action(name)
    assert action.name == name
    for text in (
        action.description,
        action.when_to_use,
        action.when_not_to_use,
        action.verification,
        action.rollback,
    ):
        assert text.strip()
    assert action.target_kinds
    assert action.preconditions
    if name not in READ_ONLY:
        assert any("dryRun=All" in p for p in action.preconditions)
        assert any("kubernaut.ai/managed=true" in p for p in action.preconditions)


def test_deployment_actions_cover_patch_snapshot_and_verification() -> None:
    for name in ("restart_deployment", "rollback_deployment", "scale_deployment"):
        verbs = _verbs(catalogue.describe_action(name))
        assert verbs[("apps", "deployments", "")] == {"get", "patch"}
        assert verbs[("", "pods", "")] == {"list"}
        assert verbs[("", "namespaces", "")] == {"get"}


def test_permissions_scoped_to_a_kind_name_one_of_the_action_targets() -> None:
    for action in catalogue.list_actions():
        for rule in action.permissions:
            assert set(rule.target_kinds) <= set(action.target_kinds), (action.name, rule)


def test_only_rollback_lists_replicasets() -> None:
    for action in catalogue.list_actions():
        has_rs = ("apps", "replicasets", "") in _verbs(action)
        assert has_rs == (action.name == "rollback_deployment"), action.name
    rollback = _verbs(catalogue.describe_action("rollback_deployment"))
    assert rollback[("apps", "replicasets", "")] == {"list"}


# The only verbs beyond get/list/patch, and who needs them.
_EXTRA_VERBS = {
    ("delete_pod", ("", "pods", ""), "delete"),
    # A StatefulSet's rollback deletes the pods of the failed template that never became
    # ready (it does not replace them by itself).
    *(
        (name, ("", "pods", ""), "delete")
        for name in (
            "increase_cpu_limit",
            "increase_memory_limit",
            "patch_resource",
            "restart_statefulset",
            "update_resource_requests",
        )
    ),
    ("drain_node", ("", "pods", "eviction"), "create"),
    ("rerun_failed_job", ("batch", "jobs", ""), "create"),
    ("rerun_failed_job", ("batch", "jobs", ""), "delete"),
}
_SUBRESOURCES = {("drain_node", "eviction"), ("collect_diagnostics", "log")}


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_least_privilege(name: str) -> None:
    # No action may escalate, touch secrets, or use a verb beyond what it needs.
    for rule in catalogue.describe_action(name).permissions:
        key = (rule.api_group, rule.resource, rule.subresource)
        for verb in set(rule.verbs) - {"get", "list", "patch"}:
            assert (name, key, verb) in _EXTRA_VERBS, (name, rule)
        assert "*" not in rule.resource and "*" not in rule.api_group
        assert rule.resource not in {"secrets", "roles", "clusterroles", "rolebindings"}
        if rule.subresource:
            assert (name, rule.subresource) in _SUBRESOURCES, (name, rule)
    if name == "notify_only":
        assert not catalogue.describe_action(name).permissions


def test_describe_unknown_action() -> None:
    with pytest.raises(catalogue.UnknownAction) as info:
        catalogue.describe_action("delete_namespace")
    assert info.value.name == "delete_namespace"
    assert isinstance(info.value, LookupError)


def test_results_are_fresh_copies() -> None:
    first = catalogue.describe_action("restart_deployment")
    first.risk = remediation_pb2.RISK_LEVEL_HIGH
    first.permissions.add(api_group="", resource="secrets", verbs=["get"])
    again = catalogue.describe_action("restart_deployment")
    assert again.risk == remediation_pb2.RISK_LEVEL_LOW
    assert all(p.resource != "secrets" for p in again.permissions)
    listed = catalogue.list_actions()
    listed[0].name = "tampered"
    assert catalogue.list_actions()[0].name == EXPECTED_NAMES[0]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            remediation_pb2.ActionParams(
                rollback_deployment=remediation_pb2.RollbackDeploymentParams(to_revision=3)
            ),
            "rollback_deployment",
        ),
        (
            remediation_pb2.ActionParams(
                restart_deployment=remediation_pb2.RestartDeploymentParams()
            ),
            "restart_deployment",
        ),
        (
            remediation_pb2.ActionParams(
                scale_deployment=remediation_pb2.ScaleDeploymentParams(replicas=0)
            ),
            "scale_deployment",
        ),
        (
            remediation_pb2.ActionParams(
                increase_memory_limit=remediation_pb2.IncreaseMemoryLimitParams(
                    factor=1.5, max_limit="4Gi"
                )
            ),
            "increase_memory_limit",
        ),
    ],
)
def test_action_name(params: remediation_pb2.ActionParams, expected: str) -> None:
    assert catalogue.action_name(params) == expected
    # The name always resolves to a catalogue entry.
    assert catalogue.describe_action(catalogue.action_name(params)).name == expected


def test_action_name_with_nothing_set() -> None:
    with pytest.raises(ValueError, match="no action"):
        catalogue.action_name(remediation_pb2.ActionParams())


def test_consistency_check_rejects_missing_extra_and_mistyped_entries() -> None:
    actions = catalogue._ACTIONS
    with pytest.raises(RuntimeError, match="missing entries"):
        catalogue._check_catalogue(actions[1:])
    extra = dataclasses.replace(actions[0], name="delete_namespace")
    with pytest.raises(RuntimeError, match="extra entries"):
        catalogue._check_catalogue((*actions, extra))
    with pytest.raises(RuntimeError, match="duplicate"):
        catalogue._check_catalogue((*actions, actions[0]))
    rest = tuple(a for a in actions if a.name != "restart_deployment")
    restart = next(a for a in actions if a.name == "restart_deployment")
    mistyped = dataclasses.replace(restart, params=remediation_pb2.ScaleDeploymentParams.DESCRIPTOR)
    with pytest.raises(RuntimeError, match="disagrees"):
        catalogue._check_catalogue((*rest, mistyped))
    catalogue._check_catalogue(actions)  # the real catalogue passes
