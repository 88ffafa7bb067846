"""The Istio policies say exactly what the call table says."""

from __future__ import annotations

from pathlib import Path

import yaml

from kubernaut.runtime import edges
from kubernaut.runtime.istio import render
from kubernaut.runtime.names import EDGE_ACCOUNT, OPERATOR_ACCOUNT, ServiceName
from kubernaut.runtime.registry import protocol

COMMITTED = Path(__file__).resolve().parents[2] / "istio" / "kubernaut-authz.yaml"


def test_the_committed_policies_are_the_rendered_ones() -> None:
    assert COMMITTED.read_text() == render(), "run `make generate`"


def test_policies_allow_exactly_the_call_table() -> None:
    documents = list(yaml.safe_load_all(render()))
    assert documents[0]["spec"] == {"mtls": {"mode": "STRICT"}}
    assert documents[1]["kind"] == "AuthorizationPolicy" and documents[1]["spec"] == {}
    policies = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]: d
        for d in documents[2:]
    }
    assert set(policies) == {s.account for s in ServiceName}
    accounts = [s.account for s in ServiceName] + [OPERATOR_ACCOUNT, EDGE_ACCOUNT]
    for callee in ServiceName:
        granted: set[tuple[str, str]] = set()
        for rule in policies[callee.account]["spec"]["rules"]:
            for source in rule.get("from", []):
                for principal in source["source"]["principals"]:
                    account = principal.rsplit("/", 1)[1]
                    for to in rule["to"]:
                        granted |= {(account, path) for path in to["operation"]["paths"]}
        for account in accounts:
            for method in protocol(callee).method_names:
                path = protocol(callee).path(method)
                assert ((account, path) in granted) == edges.is_allowed(account, callee, method), (
                    account,
                    path,
                )
