"""`kubernaut policy check|test`: validate an approval policy file, and ask it what it would
have decided on the facts an incident's workflow recorded (before rolling a new policy out)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.identity import identity_of
from kubernaut.cli.workflows import workflow_of_incident
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.settings import RuntimeSettings
from kubernaut.services.workflow.policy import ApprovalPolicy, FactsError, PolicyError


def cmd_policy_check(args: argparse.Namespace) -> int:
    """Load args.file with every check a service makes when it loads it."""
    try:
        policy = ApprovalPolicy.load(args.file)
    except PolicyError as error:
        print(error, file=sys.stderr)
        return 1
    count = len(policy.rules)
    print(f"ok: {count} rule{'' if count == 1 else 's'}")
    return 0


def cmd_policy_test(args: argparse.Namespace) -> int:
    """Evaluate args.file on the facts recorded for incident args.incident and print the
    recorded decision beside the file's. A different decision is not a failure: finding it
    is what the command is for."""
    try:
        policy = ApprovalPolicy.load(args.file)
    except PolicyError as error:
        print(error, file=sys.stderr)
        return 1

    async def run() -> int:
        clients = identity_of(args).clients(RuntimeSettings())
        try:
            return await run_policy_test(clients, policy, args.incident)
        finally:
            await clients.close()

    return asyncio.run(run())


async def run_policy_test(clients: Clients, policy: ApprovalPolicy, incident_id: str) -> int:
    try:
        workflow = await workflow_of_incident(clients.stub(WorkflowServiceStub), incident_id)
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut policy test: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    if workflow is None:
        print(f"kubernaut policy test: incident {incident_id} has no workflow", file=sys.stderr)
        return 1
    recorded = workflow.plan.policy
    if not recorded.input_json:
        print(
            f"kubernaut policy test: no policy facts recorded for incident {incident_id}'s "
            f"workflow {workflow.workflow_id} (it was planned without an approval policy)",
            file=sys.stderr,
        )
        return 1
    try:
        tested = policy.decide_json(recorded.input_json)
    except FactsError as error:
        print(f"kubernaut policy test: the recorded facts: {error}", file=sys.stderr)
        return 1
    print(render_comparison(recorded, tested))
    return 0


def outcome_text(outcome: int) -> str:
    name: str = workflow_pb2.PolicyOutcome.Name(outcome)  # type: ignore[arg-type]
    return name.removeprefix("POLICY_OUTCOME_").lower()


def differences(
    recorded: workflow_pb2.PolicyDecision, tested: workflow_pb2.PolicyDecision
) -> list[str]:
    """What decides differently: outcome, rule, approvers (not the reason's wording)."""
    return [
        what
        for what in ("outcome", "rule", "approvers")
        if getattr(recorded, what) != getattr(tested, what)
    ]


def render_comparison(
    recorded: workflow_pb2.PolicyDecision, tested: workflow_pb2.PolicyDecision
) -> str:
    """The recorded decision and the file's, as a table, and whether they differ."""
    rows = [["", "POLICY", "RULE", "OUTCOME", "APPROVERS"]]
    for label, decision in (("recorded", recorded), ("this file", tested)):
        rows.append(
            [
                label,
                decision.policy or "-",
                decision.rule or "-",
                outcome_text(decision.outcome),
                str(decision.approvers) if decision.approvers else "-",
            ]
        )
    changed = differences(recorded, tested)
    verdict = f"differs: {', '.join(changed)}" if changed else "same decision"
    return "\n".join([*_table(rows), verdict])


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned columns, like tables.print_table, as text so that tests can read it."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
