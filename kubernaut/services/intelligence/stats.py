"""Per-action outcome statistics from the action history."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2

# Dry-runs and refusals changed nothing, so they say nothing about whether a fix works.
_ATTEMPT_OUTCOMES = {
    storage_pb2.ACTION_OUTCOME_SUCCEEDED,
    storage_pb2.ACTION_OUTCOME_FAILED,
    storage_pb2.ACTION_OUTCOME_ROLLED_BACK,
}


def action_stats(records: Iterable[storage_pb2.ActionRecord]) -> list[intelligence_pb2.ActionStats]:
    counts: defaultdict[str, Counter[int]] = defaultdict(Counter)
    for record in records:
        if record.outcome in _ATTEMPT_OUTCOMES:
            counts[record.action][record.outcome] += 1
    stats = []
    for action in sorted(counts):
        outcome = counts[action]
        attempts = sum(outcome.values())
        succeeded = outcome[storage_pb2.ACTION_OUTCOME_SUCCEEDED]
        stats.append(
            intelligence_pb2.ActionStats(
                action=action,
                attempts=attempts,
                succeeded=succeeded,
                failed=outcome[storage_pb2.ACTION_OUTCOME_FAILED],
                rolled_back=outcome[storage_pb2.ACTION_OUTCOME_ROLLED_BACK],
                success_rate=succeeded / attempts if attempts else 0.0,
            )
        )
    return stats
