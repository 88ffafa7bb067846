"""`kubernaut runbooks`: the runbook templates the workflow service loaded, over gRPC."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from kubernaut.workflow.v1 import workflow_pb2
from kubernaut.workflow.v1.workflow_pb2_grpc import WorkflowServiceStub

from kubernaut.cli.identity import CliIdentity
from kubernaut.cli.tables import print_table
from kubernaut.runtime.settings import RuntimeSettings


def runbook_rows(runbooks: Sequence[workflow_pb2.Runbook]) -> list[list[str]]:
    """One row per template: name, version, the alerts and actions it answers, its steps."""
    rows = [["NAME", "VERSION", "ALERTS", "ACTIONS", "STEPS", "DIGEST"]]
    for runbook in runbooks:
        rows.append(
            [
                runbook.name,
                runbook.version,
                ", ".join(runbook.alerts),
                ", ".join(runbook.actions),
                " → ".join(runbook.steps),
                runbook.digest[:12],
            ]
        )
    return rows


async def list_runbooks(settings: RuntimeSettings, identity: CliIdentity) -> int:
    clients = identity.clients(settings)
    try:
        listed = await clients.stub(WorkflowServiceStub).ListRunbooks(
            workflow_pb2.ListRunbooksRequest()
        )
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut runbooks: {error.code().name}: {error.details()}")
        return 1
    finally:
        await clients.close()
    if not listed.runbooks:
        print("no runbook templates loaded")
        return 0
    print_table(runbook_rows(listed.runbooks))
    return 0
