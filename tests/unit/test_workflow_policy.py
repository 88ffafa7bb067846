"""The approval policy: which rule decides for which facts, what a broken file says, the facts
recorded with a decision evaluating again to it, and `kubernaut policy check|test`."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from kubernaut.workflow.v1 import workflow_pb2

from kubernaut.cli.policy import cmd_policy_check, render_comparison, run_policy_test
from kubernaut.runtime.clients import Clients
from kubernaut.services.workflow.policy import (
    ApprovalPolicy,
    FactsError,
    PolicyError,
    PolicyFacts,
    build_facts,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "approval-policy.yaml"

ALLOW = workflow_pb2.POLICY_OUTCOME_ALLOW
APPROVE = workflow_pb2.POLICY_OUTCOME_REQUIRE_APPROVAL
DENY = workflow_pb2.POLICY_OUTCOME_DENY

POLICY = """\
version: 1
timezone: UTC
default: {outcome: require_approval, approvers: 1, reason: "nothing matched"}
rules:
  - name: no-changes-in-kube-system
    description: "kube-system is never changed automatically"
    when: 'target.namespace == "kube-system"'
    outcome: deny
  - name: pci-is-hands-off
    when: 'namespace.labels["compliance"] == "pci"'
    outcome: deny
  - name: prod-high-risk-four-eyes
    description: "high-risk changes in prod need two people"
    when: 'namespace.labels["env"] == "prod" && plan.risk == "high"'
    outcome: require_approval
    approvers: 2
  - name: no-weekend-drains
    when: 'plan.actions.exists(a, a == "drain_node") && time.weekday in ["saturday", "sunday"]'
    outcome: deny
  - name: night-shift
    description: "at night a person looks first"
    when: 'time.hour >= 22 || time.hour < 6'
    outcome: require_approval
  - name: confident-rules-low-risk
    when: 'analysis.source == "rules" && analysis.confidence >= 0.8 && plan.risk == "low"'
    outcome: allow
  - name: model-medium-risk
    when: 'analysis.source == "model" && risk == "medium"'
    outcome: require_approval
    approvers: 3
"""

MONDAY_NOON = dt.datetime(2025, 3, 3, 12, 0, tzinfo=dt.UTC)


def facts(**overrides: Any) -> PolicyFacts:
    """A low-risk, confident, rules-based restart in `shop` (env=prod) on a Monday noon."""
    values: dict[str, Any] = {
        "action": "restart_deployment",
        "risk": "low",
        "steps": 3,
        "target_kind": "Deployment",
        "target_namespace": "shop",
        "target_name": "web",
        "incident_id": "inc-1",
        "alert": "KubePodCrashLooping",
        "severity": "critical",
        "incident_labels": {"team": "shop"},
        "fingerprint": "abc123",
        "namespace_labels": {"env": "prod"},
        "confidence": 0.9,
        "source": "rules",
        "now": MONDAY_NOON,
    }
    values.update(overrides)
    return build_facts(**values)


def at(hour: int, minute: int = 0, day: int = 3) -> dt.datetime:
    return dt.datetime(2025, 3, day, hour, minute, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def policy() -> ApprovalPolicy:
    return ApprovalPolicy.parse(POLICY, "approval.yaml")


TABLE = [
    pytest.param(
        facts(target_namespace="kube-system", risk="high"),
        (DENY, "no-changes-in-kube-system", 0),
        id="kube-system-denied",
    ),
    pytest.param(
        facts(namespace_labels={"env": "prod", "compliance": "pci"}),
        (DENY, "pci-is-hands-off", 0),
        id="pci-label-denied",
    ),
    pytest.param(
        facts(risk="high"), (APPROVE, "prod-high-risk-four-eyes", 2), id="prod-high-four-eyes"
    ),
    pytest.param(
        facts(risk="high", namespace_labels={"env": "staging"}, source="model", confidence=0.5),
        (APPROVE, "default", 1),
        id="staging-high-falls-to-default",
    ),
    pytest.param(
        facts(risk="high", namespace_labels={}, source="model"),
        (APPROVE, "default", 1),
        id="no-env-label-rule-does-not-fire",
    ),
    pytest.param(
        facts(action="drain_node", target_kind="Node", now=at(12, day=8)),
        (DENY, "no-weekend-drains", 0),
        id="saturday-drain-denied",
    ),
    pytest.param(
        facts(action="drain_node", target_kind="Node", risk="medium", source="rules"),
        (APPROVE, "default", 1),
        id="monday-drain-default",
    ),
    pytest.param(facts(now=at(23, 30)), (APPROVE, "night-shift", 1), id="night-23h30"),
    pytest.param(facts(now=at(5, 59)), (APPROVE, "night-shift", 1), id="night-05h59"),
    pytest.param(facts(now=at(6, 0)), (ALLOW, "confident-rules-low-risk", 0), id="day-06h00"),
    pytest.param(facts(), (ALLOW, "confident-rules-low-risk", 0), id="confident-rules-allowed"),
    pytest.param(facts(confidence=0.79), (APPROVE, "default", 1), id="rules-not-confident"),
    pytest.param(facts(source="model", confidence=0.99), (APPROVE, "default", 1), id="model-low"),
    pytest.param(
        facts(source="model", risk="medium"),
        (APPROVE, "model-medium-risk", 3),
        id="model-medium-three",
    ),
    pytest.param(facts(risk="something-else"), (APPROVE, "default", 1), id="unknown-risk-default"),
]


@pytest.mark.parametrize(("given", "expected"), TABLE)
def test_policy_table(
    policy: ApprovalPolicy, given: PolicyFacts, expected: tuple[int, str, int]
) -> None:
    decision = policy.decide(given)
    assert (decision.outcome, decision.rule, decision.approvers) == expected
    assert decision.policy == policy.policy_id
    assert json.loads(decision.input_json) == given.to_document()


def test_reason_is_the_description_and_names_rules_that_failed(policy: ApprovalPolicy) -> None:
    decision = policy.decide(facts(risk="high"))
    assert decision.reason == (
        "high-risk changes in prod need two people"
        " (did not fire on an error: pci-is-hands-off: no such key 'compliance')"
    )
    # CEL's && is false when either side is, error or not: risk is high so that env counts.
    failed = policy.decide(facts(namespace_labels={}, source="model", risk="high"))
    assert failed.rule == "default"
    assert failed.reason.startswith("nothing matched")
    assert "prod-high-risk-four-eyes: no such key 'env'" in failed.reason
    assert (
        policy.decide(facts(namespace_labels={"compliance": "none", "env": "prod"})).reason
        == "rule confident-rules-low-risk"
    )


def test_a_rule_that_fails_at_evaluation_does_not_fire() -> None:
    text = POLICY.replace(
        "rules:\n",
        "rules:\n  - name: divides\n    when: '10 / plan.steps > 1'\n    outcome: deny\n",
    )
    policy = ApprovalPolicy.parse(text, "approval.yaml")
    assert policy.decide(facts(steps=2)).rule == "divides"
    decision = policy.decide(facts(steps=0))
    assert decision.rule == "confident-rules-low-risk"
    assert "divides: modulus or divide by zero" in decision.reason


def test_time_facts_are_read_in_the_policys_timezone() -> None:
    tokyo = ApprovalPolicy.parse(POLICY.replace("timezone: UTC", "timezone: Asia/Tokyo"), "t")
    # 14:00 UTC is 23:00 in Tokyo: night there, whatever zone the facts were built in.
    decision = tokyo.decide(facts(now=at(14)))
    assert decision.rule == "night-shift"
    recorded = json.loads(decision.input_json)["time"]
    assert recorded == {"hour": 23, "weekday": "monday", "iso": "2025-03-03T23:00:00+09:00"}
    assert build_facts(
        action="a", risk="low", target_kind="Pod", target_namespace="n", target_name="p",
        now=at(14), timezone="Asia/Tokyo",
    ).time.hour == 23  # fmt: skip


def test_facts_document_shape() -> None:
    document = facts(actions=("scale_deployment", "restart_deployment"), runbook="rb").to_document()
    assert set(document) == {"plan", "target", "incident", "namespace", "analysis", "time", "risk"}
    assert document["plan"]["action"] == "restart_deployment"
    assert document["plan"]["actions"] == ["scale_deployment", "restart_deployment"]
    assert document["plan"]["runbook"] == "rb"
    assert (
        document["target"]
        == document["plan"]["target"]
        == {
            "kind": "Deployment",
            "namespace": "shop",
            "name": "web",
        }
    )
    assert document["risk"] == document["plan"]["risk"] == "low"
    assert document["namespace"] == {"name": "shop", "labels": {"env": "prod"}}
    assert document["incident"]["labels"] == {"team": "shop"}
    assert document["analysis"] == {
        "confidence": 0.9,
        "source": "rules",
        "approval_required": False,
    }
    assert document["time"]["weekday"] == "monday"
    assert facts().plan.actions == ("restart_deployment",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts().plan = facts().plan  # type: ignore[misc]


def test_decide_json_round_trip(policy: ApprovalPolicy) -> None:
    for given in (facts(risk="high"), facts(now=at(23)), facts(source="model", risk="medium")):
        decision = policy.decide(given)
        assert PolicyFacts.from_json(decision.input_json) == given
        assert policy.decide_json(decision.input_json) == decision
        assert decision.input_json == json.dumps(
            json.loads(decision.input_json), sort_keys=True, separators=(",", ":")
        )


def test_recorded_facts_tolerate_missing_and_unknown_keys(policy: ApprovalPolicy) -> None:
    recorded = json.dumps(
        {"plan": {"risk": "high"}, "target": {"namespace": "kube-system"}, "x": 1}
    )
    assert PolicyFacts.from_json(recorded).plan.target.namespace == "kube-system"
    assert policy.decide_json(recorded).rule == "no-changes-in-kube-system"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "a JSON object"),
        ('{"plan": {"steps": "3"}}', "plan.steps must be int"),
        ('{"analysis": {"approval_required": 1}}', "analysis.approval_required must be bool"),
        ('{"namespace": {"labels": {"env": 1}}}', "namespace.labels must map strings"),
    ],
)
def test_bad_recorded_facts(text: str, message: str) -> None:
    with pytest.raises(FactsError, match=message):
        PolicyFacts.from_json(text)


def test_policy_id_is_file_name_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "approval.yaml"
    path.write_text(POLICY)
    loaded = ApprovalPolicy.load(path)
    digest = hashlib.sha256(POLICY.encode()).hexdigest()
    assert loaded.policy_id == f"approval.yaml sha256:{digest[:12]}"
    assert len(loaded.rules) == 7


def _bad(old: str, new: str) -> str:
    assert old in POLICY
    return POLICY.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        pytest.param("rules: [", ["approval.yaml: not valid YAML at line 1"], id="bad-yaml"),
        pytest.param("- a\n", ["a YAML mapping"], id="not-a-mapping"),
        pytest.param(
            _bad("outcome: deny\n", "outcome: deny\n    owner: sre\n"),
            ["rule no-changes-in-kube-system:", "'owner' was unexpected"],
            id="unknown-rule-key",
        ),
        pytest.param(
            _bad("timezone: UTC", "timezone: UTC\nstrict: true"),
            ["approval.yaml: ", "'strict' was unexpected"],
            id="unknown-top-key",
        ),
        pytest.param(
            _bad('plan.risk == "high"', 'plan.risk == "high" &&& true'),
            ["approval.yaml: rule prod-high-risk-four-eyes: when: ", "syntax error at column"],
            id="cel-syntax",
        ),
        pytest.param(
            _bad('plan.risk == "high"', "plan.risk +"),
            ["rule prod-high-risk-four-eyes:", "unexpected end of expression"],
            id="cel-incomplete",
        ),
        pytest.param(
            _bad('plan.risk == "high"', "plan.risk == 3"),
            ["rule prod-high-risk-four-eyes:", "type error: no == for string and int"],
            id="cel-type-error",
        ),
        pytest.param(
            _bad("time.hour >= 22 || time.hour < 6", "time.hour"),
            ["rule night-shift:", "gives int, not bool"],
            id="cel-not-bool",
        ),
        pytest.param(
            _bad('plan.risk == "high"', 'plan.rsik == "high"'),
            ["rule prod-high-risk-four-eyes:", "plan has no field 'rsik'"],
            id="unknown-field",
        ),
        pytest.param(
            _bad('target.namespace == "kube-system"', 'tagret.namespace == "kube-system"'),
            ["rule no-changes-in-kube-system:", "unknown name 'tagret'"],
            id="unknown-variable",
        ),
        pytest.param(
            _bad("name: night-shift", "name: no-weekend-drains"),
            ["approval.yaml: rule no-weekend-drains: the name is used twice"],
            id="duplicate-names",
        ),
        pytest.param(
            _bad("outcome: deny\n", "outcome: deny\n    approvers: 2\n"),
            ["rule no-changes-in-kube-system: approvers: only with outcome require_approval"],
            id="approvers-with-deny",
        ),
        pytest.param(
            _bad(
                "outcome: allow\n",
                "outcome: allow\n    approvers: 1\n",
            ),
            ["rule confident-rules-low-risk: approvers: only with outcome require_approval"],
            id="approvers-with-allow",
        ),
        pytest.param(
            _bad("approvers: 2", "approvers: 6"),
            ["rule prod-high-risk-four-eyes: approvers: 6 is greater than the maximum of 5"],
            id="too-many-approvers",
        ),
        pytest.param(
            _bad("outcome: deny", "outcome: block"),
            ["rule no-changes-in-kube-system: outcome: 'block' is not one of"],
            id="bad-outcome",
        ),
        pytest.param(
            _bad("outcome: deny\n", "outcome: deny\n    outcome: allow\n"),
            ["key 'outcome' is given twice"],
            id="duplicate-key",
        ),
        pytest.param(
            _bad("timezone: UTC", "timezone: Mars/Olympus"),
            ["timezone: unknown IANA time zone 'Mars/Olympus'"],
            id="bad-timezone",
        ),
        pytest.param(
            _bad("version: 1", "version: 2"), ["approval.yaml: version: 1 was expected"], id="v2"
        ),
        pytest.param(
            _bad("approvers: 1, reason", "approvers: 0, reason"),
            ["approval.yaml: default.approvers: 0 is less than the minimum of 1"],
            id="default-approvers",
        ),
    ],
)
def test_load_errors(text: str, messages: list[str]) -> None:
    with pytest.raises(PolicyError) as raised:
        ApprovalPolicy.parse(text, "approval.yaml")
    for message in messages:
        assert message in str(raised.value)


def test_labels_and_macros_are_not_unknown_fields() -> None:
    text = _bad(
        "time.hour >= 22 || time.hour < 6",
        'has(namespace.labels.team) && incident.labels["team"] == "db" '
        '&& plan.actions.all(a, a.startsWith("restart"))',
    )
    policy = ApprovalPolicy.parse(text, "approval.yaml")
    assert policy.decide(facts(namespace_labels={"team": "db"})).rule == "confident-rules-low-risk"
    decision = policy.decide(
        facts(namespace_labels={"team": "x"}, incident_labels={"team": "db"}, confidence=0)
    )
    assert decision.rule == "night-shift"


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        ApprovalPolicy.load(tmp_path / "nope.yaml")


def test_example_policy_is_valid() -> None:
    example = ApprovalPolicy.load(EXAMPLE)
    assert example.policy_id.startswith("approval-policy.yaml sha256:")
    assert len(example.rules) >= 5
    assert example.decide(facts(target_namespace="kube-system")).outcome == DENY
    prod_high = example.decide(facts(risk="high"))
    assert (prod_high.outcome, prod_high.approvers) == (APPROVE, 2)
    assert example.decide(facts(namespace_labels={})).outcome == ALLOW
    assert example.decide(facts(namespace_labels={}, source="model")).outcome == APPROVE


# --- the CLI -------------------------------------------------------------------------------


def test_policy_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cmd_policy_check(argparse.Namespace(file=str(EXAMPLE))) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text(_bad("name: night-shift", "name: no-weekend-drains"))
    assert cmd_policy_check(argparse.Namespace(file=str(bad))) == 1
    assert "bad.yaml: rule no-weekend-drains: the name is used twice" in capsys.readouterr().err


def test_render_comparison(policy: ApprovalPolicy) -> None:
    recorded = policy.decide(facts(risk="high"))
    same = render_comparison(recorded, recorded).splitlines()
    assert same[0].split() == ["POLICY", "RULE", "OUTCOME", "APPROVERS"]
    assert same[1].split() == [
        "recorded",
        *recorded.policy.split(),
        "prod-high-risk-four-eyes",
        "require_approval",
        "2",
    ]
    assert same[-1] == "same decision"
    stricter = ApprovalPolicy.parse(_bad("approvers: 2", "approvers: 3"), "new.yaml")
    tested = stricter.decide_json(recorded.input_json)
    lines = render_comparison(recorded, tested).splitlines()
    assert lines[2].split()[:2] == ["this", "file"]
    assert lines[2].split()[-1] == "3"
    assert lines[-1] == "differs: approvers"
    denied = render_comparison(recorded, policy.decide(facts(target_namespace="kube-system")))
    assert denied.splitlines()[2].split()[-2:] == ["deny", "-"]
    assert denied.splitlines()[-1] == "differs: outcome, rule, approvers"


class _FakeWorkflows:
    def __init__(self, workflow: workflow_pb2.Workflow) -> None:
        self.workflow = workflow
        self.asked: list[str] = []

    async def GetWorkflow(
        self, request: workflow_pb2.GetWorkflowRequest
    ) -> workflow_pb2.GetWorkflowResponse:
        self.asked.append(request.incident_id)
        return workflow_pb2.GetWorkflowResponse(workflow=self.workflow)


class _FakeClients:
    def __init__(self, workflow: workflow_pb2.Workflow) -> None:
        self.workflows = _FakeWorkflows(workflow)

    def stub(self, stub_class: object) -> _FakeWorkflows:
        return self.workflows


async def test_policy_test_command(
    policy: ApprovalPolicy, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = policy.decide(facts(risk="high"))
    workflow = workflow_pb2.Workflow(workflow_id="wf-1", incident_id="inc-1")
    workflow.plan.policy.CopyFrom(recorded)
    clients = _FakeClients(workflow)
    stricter = ApprovalPolicy.parse(_bad("approvers: 2", "approvers: 3"), "new.yaml")
    assert await run_policy_test(_as_clients(clients), stricter, "inc-1") == 0
    assert clients.workflows.asked == ["inc-1"]
    assert capsys.readouterr().out.splitlines()[-1] == "differs: approvers"

    workflow.plan.policy.Clear()
    assert await run_policy_test(_as_clients(_FakeClients(workflow)), policy, "inc-1") == 1
    assert "no policy facts recorded for incident inc-1's workflow wf-1" in capsys.readouterr().err


def _as_clients(fake: _FakeClients) -> Clients:
    return fake  # type: ignore[return-value]
