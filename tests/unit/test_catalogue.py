"""The executor's action catalogue: complete, consistent with ActionParams, least privilege."""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf.descriptor import FieldDescriptor
from kubernaut.common.v1 import remediation_pb2
from kubernaut.executor.v1 import executor_pb2

from services.executor import catalogue

ONEOF_FIELDS = list(remediation_pb2.ActionParams.DESCRIPTOR.oneofs_by_name["params"].fields)
EXPECTED_NAMES = [
    "increase_memory_limit",
    "restart_deployment",
    "rollback_deployment",
    "scale_deployment",
]


def _verbs(action: executor_pb2.ActionDefinition) -> dict[tuple[str, str, str], set[str]]:
    return {(p.api_group, p.resource, p.subresource): set(p.verbs) for p in action.permissions}


def test_list_actions_sorted_and_complete() -> None:
    names = [a.name for a in catalogue.list_actions()]
    assert names == EXPECTED_NAMES
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
    assert types == {
        "increase_memory_limit": "kubernaut.common.v1.IncreaseMemoryLimitParams",
        "restart_deployment": "kubernaut.common.v1.RestartDeploymentParams",
        "rollback_deployment": "kubernaut.common.v1.RollbackDeploymentParams",
        "scale_deployment": "kubernaut.common.v1.ScaleDeploymentParams",
    }


def test_risk_levels() -> None:
    risks = {a.name: a.risk for a in catalogue.list_actions()}
    assert risks == {
        "restart_deployment": remediation_pb2.RISK_LEVEL_LOW,
        "rollback_deployment": remediation_pb2.RISK_LEVEL_MEDIUM,
        "scale_deployment": remediation_pb2.RISK_LEVEL_MEDIUM,
        "increase_memory_limit": remediation_pb2.RISK_LEVEL_MEDIUM,
    }


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
    assert list(action.target_kinds) == ["Deployment"]
    assert action.preconditions
    assert any("dryRun=All" in p for p in action.preconditions)
    assert any("kubernaut.ai/managed=true" in p for p in action.preconditions)


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_permissions_cover_patch_snapshot_and_verification(name: str) -> None:
    verbs = _verbs(catalogue.describe_action(name))
    assert verbs[("apps", "deployments", "")] == {"get", "patch"}
    assert verbs[("", "pods", "")] == {"list"}
    assert verbs[("", "namespaces", "")] == {"get"}


def test_only_rollback_lists_replicasets() -> None:
    for action in catalogue.list_actions():
        has_rs = ("apps", "replicasets", "") in _verbs(action)
        assert has_rs == (action.name == "rollback_deployment"), action.name
    rollback = _verbs(catalogue.describe_action("rollback_deployment"))
    assert rollback[("apps", "replicasets", "")] == {"list"}


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_least_privilege(name: str) -> None:
    # No action may delete, escalate, or touch anything beyond what it names.
    for rule in catalogue.describe_action(name).permissions:
        assert set(rule.verbs) <= {"get", "list", "patch"}, rule
        assert "*" not in rule.resource and "*" not in rule.api_group
        assert rule.subresource == ""


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
    assert catalogue.list_actions()[0].name == "increase_memory_limit"


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
