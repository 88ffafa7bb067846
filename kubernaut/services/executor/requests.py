"""Rules on executor requests that buf.validate field rules cannot state (they relate two
fields), checked by the servicer before anything runs: (field path, what is wrong)."""

from __future__ import annotations

from kubernaut.executor.v1 import executor_pb2

__all__ = ["execute_problems", "rollback_problems"]

Problem = tuple[str, str]


def execute_problems(request: executor_pb2.ExecuteActionRequest) -> list[Problem]:
    action = request.action
    problems: list[Problem] = []
    which = action.WhichOneof("params")
    if which == "update_resource_requests":
        params = action.update_resource_requests
        if not params.cpu and not params.memory:
            problems.append(("action.update_resource_requests", "set cpu, memory or both"))
    elif which == "update_hpa":
        hpa = action.update_hpa
        if not hpa.min_replicas and not hpa.max_replicas:
            problems.append(("action.update_hpa", "set min_replicas, max_replicas or both"))
        elif hpa.min_replicas and hpa.max_replicas and hpa.min_replicas > hpa.max_replicas:
            problems.append(
                (
                    "action.update_hpa.min_replicas",
                    f"min_replicas {hpa.min_replicas} exceeds max_replicas {hpa.max_replicas}",
                )
            )
    return problems


def rollback_problems(request: executor_pb2.RollbackActionRequest) -> list[Problem]:
    if request.rollback_id.lower() == request.action_id.lower():
        return [("rollback_id", "must differ from action_id (a rollback is an action of its own)")]
    return []
