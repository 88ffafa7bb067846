"""The call table: every allowed call between services, in one place.

Runtime authorization, the Istio AuthorizationPolicies and the docs all come from this
table. A call that is not here is refused with PERMISSION_DENIED. Adding an edge is one
line.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.descriptor_pb2 import MethodOptions

from kubernaut.runtime.names import EDGE_ACCOUNT, OPERATOR_ACCOUNT, ServiceName
from kubernaut.runtime.registry import protocol

S = ServiceName


@dataclass(frozen=True)
class Edge:
    caller: ServiceName
    callee: ServiceName
    methods: frozenset[str]
    reason: str


def _edge(caller: ServiceName, callee: ServiceName, methods: str, reason: str) -> Edge:
    return Edge(caller, callee, frozenset(methods.split()), reason)


EDGES: tuple[Edge, ...] = (
    _edge(S.GATEWAY, S.ALERT_PROCESSOR, "ProcessAlert", "route validated alerts"),
    _edge(
        S.GATEWAY,
        S.STORAGE,
        "CountIncidentAlerts",
        "count duplicates on their incident instead of forwarding them",
    ),
    _edge(
        S.ALERT_PROCESSOR,
        S.AI_ANALYSIS,
        "AnalyzeIncident",
        "get recommendations",
    ),
    _edge(
        S.ALERT_PROCESSOR,
        S.CONTEXT_API,
        "GetResourceContext",
        "enrich alerts: owner resolution, pod status, events",
    ),
    _edge(
        S.ALERT_PROCESSOR,
        S.NOTIFICATION,
        "NotifyIncidentEvent",
        "tell people of a storm, which is left to them, and of alerts not acted on",
    ),
    _edge(
        S.ALERT_PROCESSOR,
        S.STORAGE,
        "OpenIncident UpdateIncident ResolveIncident RecordDroppedAlert",
        "open, update or resolve the incident of a fingerprint; record alerts dropped",
    ),
    _edge(
        S.AI_ANALYSIS,
        S.CONTEXT_API,
        "GetAlertKnowledge GetResourceContext GetIncidentHistory GetPodLogs Investigate"
        " GetWorkloadMetrics",
        "context for the analysis: evidence, log tails, similar incidents, how past fixes"
        " worked, HolmesGPT's investigation, the workload's golden signals",
    ),
    _edge(
        S.AI_ANALYSIS,
        S.EXECUTOR,
        "ListActions",
        "the catalogue a model may choose from, and the schema of its parameters",
    ),
    _edge(
        S.AI_ANALYSIS,
        S.STORAGE,
        "RecordAnalysis",
        "put each analysis and the model's reasoning on the record",
    ),
    _edge(
        S.AI_ANALYSIS,
        S.WORKFLOW,
        "CreateWorkflow",
        "turn recommendations into workflows",
    ),
    _edge(
        S.WORKFLOW,
        S.EXECUTOR,
        "DescribeAction DescribeTarget ExecuteAction GetActionProgress RollbackAction RunCheck",
        "check and run actions, follow one while it runs, undo a runbook's finished steps"
        " when a later one fails, run a runbook's read-only checks, and read what the approval"
        " policy and the runbooks weigh of a target (its namespace's labels, its replicas)",
    ),
    _edge(
        S.WORKFLOW,
        S.STORAGE,
        "UpdateIncident ListActionRecords",
        "move incidents through remediation; what failed on a target before (the guard)",
    ),
    _edge(S.WORKFLOW, S.EFFECTIVENESS, "ScheduleAssessment", "assess each action that ran"),
    _edge(
        S.WORKFLOW,
        S.NOTIFICATION,
        "NotifyIncidentEvent",
        "tell people about workflows",
    ),
    _edge(S.EXECUTOR, S.STORAGE, "RecordAction", "store action results"),
    _edge(S.EXECUTOR, S.STORAGE, "AppendAuditEntry", "the audit trail"),
    _edge(S.WORKFLOW, S.STORAGE, "AppendAuditEntry", "the audit trail"),
    _edge(S.NOTIFICATION, S.STORAGE, "AppendAuditEntry", "the audit trail"),
    _edge(
        S.INTELLIGENCE,
        S.STORAGE,
        "ListActionRecords ListIncidents ListIncidentEmbeddings ListAuditEntries",
        "history for pattern discovery: actions, incidents, their embeddings (clusters) and"
        " who approved (time saved)",
    ),
    _edge(
        S.EFFECTIVENESS,
        S.INTELLIGENCE,
        "GetActionStats GetRecurringIncidents",
        "pattern insights for verdicts: success rates, fixes that do not hold",
    ),
    _edge(S.EFFECTIVENESS, S.STORAGE, "RecordAssessment", "record verdicts"),
    _edge(
        S.EFFECTIVENESS,
        S.CONTEXT_API,
        "GetResourceContext",
        "assessment context: pods Ready, restarts",
    ),
    _edge(
        S.CONTEXT_API,
        S.STORAGE,
        "GetIncident SearchSimilarIncidents",
        "history and similar incidents as context",
    ),
    _edge(S.CONTEXT_API, S.EFFECTIVENESS, "GetActionEffectiveness", "how past fixes worked"),
)

# Operators (grpcurl, the kubernaut CLI) may call everything except the audit-trail
# writes: only the service that acted records what it did, and only the alert processor
# what it dropped.
OPERATOR_DENIED: frozenset[tuple[ServiceName, str]] = frozenset(
    {
        (S.STORAGE, "RecordAction"),
        (S.STORAGE, "RecordDroppedAlert"),
        (S.STORAGE, "AppendAuditEntry"),
    }
)


class Role(enum.StrEnum):
    """What a person may do; each role includes the ones before it."""

    VIEWER = "viewer"
    APPROVER = "approver"
    OPERATOR = "operator"
    ADMIN = "admin"


_ROLE_RANK: dict[Role, int] = {role: rank for rank, role in enumerate(Role)}

# What people may call beyond reads (the methods whose proto says NO_SIDE_EFFECTS, open to
# viewers). Every other method needs admin; the audit-trail writes (OPERATOR_DENIED) no
# person may call.
ROLE_GRANTS: dict[tuple[ServiceName, str], Role] = {
    (S.WORKFLOW, "DecideApproval"): Role.APPROVER,
    (S.WORKFLOW, "CreateWorkflow"): Role.OPERATOR,
    (S.EXECUTOR, "ExecuteAction"): Role.OPERATOR,
    (S.EXECUTOR, "RollbackAction"): Role.OPERATOR,
}


def role_needed(callee: ServiceName, method: str) -> Role | None:
    """The least role that may call callee's method; None when no person may."""
    if (callee, method) in OPERATOR_DENIED:
        return None
    if (granted := ROLE_GRANTS.get((callee, method))) is not None:
        return granted
    options = protocol(callee).descriptor.methods_by_name[method].GetOptions()
    if options.idempotency_level == MethodOptions.NO_SIDE_EFFECTS:
        return Role.VIEWER
    return Role.ADMIN


def role_allows(held: Iterable[str], needed: Role) -> bool:
    """Whether any of the roles held (names, as Principal.roles has them) includes `needed`."""
    return any(_ROLE_RANK[Role(role)] >= _ROLE_RANK[needed] for role in held)


# The HTTP edge submits alerts.
EDGE_ALLOWED: frozenset[tuple[ServiceName, str]] = frozenset({(S.GATEWAY, "SubmitAlerts")})
# ... and decides approvals, only for a person it authenticated (a Slack click, a signed
# link), whose roles then rule (access.Access.check).
EDGE_FOR_PEOPLE: frozenset[tuple[ServiceName, str]] = frozenset({(S.WORKFLOW, "DecideApproval")})
# ... and carries the console's calls, each with the signed-in person's own token, which the
# callee checks; that person's roles then rule.
CONSOLE_CALLS: frozenset[tuple[ServiceName, str]] = frozenset(
    {
        (S.STORAGE, "ListIncidents"),
        (S.STORAGE, "GetIncident"),
        (S.STORAGE, "ListAuditEntries"),
        (S.STORAGE, "ListActionRecords"),
        (S.EFFECTIVENESS, "GetActionEffectiveness"),
        (S.WORKFLOW, "GetWorkflow"),
        (S.WORKFLOW, "DecideApproval"),
    }
)

# Every peer, even one with no identity (kubelet probes), may ask for health.
HEALTH_SERVICE = "grpc.health.v1.Health"
# Any authenticated peer may list and describe the API.
REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)


@functools.cache
def _allowed() -> frozenset[tuple[str, ServiceName, str]]:
    allowed = {
        (edge.caller.account, edge.callee, method) for edge in EDGES for method in edge.methods
    }
    for callee, method in EDGE_ALLOWED | EDGE_FOR_PEOPLE | CONSOLE_CALLS:
        allowed.add((EDGE_ACCOUNT, callee, method))
    for callee in ServiceName:
        for method in protocol(callee).method_names:
            if (callee, method) not in OPERATOR_DENIED:
                allowed.add((OPERATOR_ACCOUNT, callee, method))
    return frozenset(allowed)


def is_allowed(caller_account: str, callee: ServiceName, method: str) -> bool:
    """Whether the caller (a ServiceAccount name) may call callee's method."""
    return (caller_account, callee, method) in _allowed()


def check_table() -> None:
    """Fail loudly when the table names a method that the protos do not have."""
    for edge in EDGES:
        unknown = edge.methods - set(protocol(edge.callee).method_names)
        if unknown:
            raise ValueError(f"edge {edge.caller}->{edge.callee} names unknown {sorted(unknown)}")
    tables = OPERATOR_DENIED | EDGE_ALLOWED | EDGE_FOR_PEOPLE | CONSOLE_CALLS | ROLE_GRANTS.keys()
    for callee, method in tables:
        if method not in protocol(callee).method_names:
            raise ValueError(f"the table names unknown {callee}.{method}")
