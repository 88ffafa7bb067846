"""intelligence's pattern finders on seeded synthetic histories: recurring incidents whose
fix does not hold, clusters of similar incidents from their embeddings, and anomalous
incident rates."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2
from numpy.typing import NDArray
from sklearn.metrics import adjusted_rand_score  # type: ignore[import-untyped]

from kubernaut.services.intelligence import clusters as clustering
from kubernaut.services.intelligence.anomalies import AnomalyPolicy, find_anomalies
from kubernaut.services.intelligence.clusters import NOISE, cluster_labels, incident_clusters
from kubernaut.services.intelligence.recurring import recurring_incidents
from tests.fixtures.intelligence_history import NOW, History, ref

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
REMEDIATED = storage_pb2.INCIDENT_STATUS_REMEDIATED
FAILED = storage_pb2.INCIDENT_STATUS_FAILED
SUCCEEDED = storage_pb2.ACTION_OUTCOME_SUCCEEDED
ALERTS = ["KubePodCrashLooping", "KubePodNotReady", "KubeDeploymentReplicasMismatch"]
ACTIONS = ["restart_deployment", "rollback_deployment", "scale_deployment"]

# -- recurring incidents ----------------------------------------------------------------------


def _noisy_history(seed: int) -> History:
    """A week of incidents on 40 workloads: each workload and alert at most twice (whatever
    the outcome), and some again and again that were never fixed (failed each time)."""
    history = History(seed)
    rng = history.random
    for n in range(40):
        subject = ref(f"team-{n % 7}", f"app-{n}")
        for alert in rng.sample(ALERTS, 2):
            for _ in range(rng.randint(1, 2)):
                status = rng.choice(
                    [REMEDIATED, FAILED, storage_pb2.INCIDENT_STATUS_NO_ACTION, REMEDIATED]
                )
                history.incident(
                    subject,
                    alert,
                    NOW - dt.timedelta(minutes=rng.randint(60, 7 * 24 * 60 - 60)),
                    status,
                    action=rng.choice(ACTIONS),
                    outcome=SUCCEEDED
                    if status == REMEDIATED
                    else storage_pb2.ACTION_OUTCOME_FAILED,
                )
    never_fixed = ref("payments", "ledger", kind="StatefulSet")
    for day in range(5):
        history.incident(
            never_fixed,
            "KubePodCrashLooping",
            NOW - dt.timedelta(days=day + 1),
            FAILED,
            action="restart_statefulset",
            outcome=storage_pb2.ACTION_OUTCOME_ROLLED_BACK,
        )
    return history


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_planted_recurring_incident_is_found_among_noise(seed: int) -> None:
    history = _noisy_history(seed)
    web = ref("shop", "web")
    planted = []
    # Fixed (restart worked and was verified), back a day later, four times; then open.
    for day, action in enumerate(
        ["restart_deployment", "restart_deployment", "scale_deployment", "restart_deployment"]
    ):
        planted.append(
            history.incident(web, "KubePodCrashLooping", NOW - (6 - day) * DAY, action=action)
        )
    planted.append(
        history.incident(web, "KubePodCrashLooping", NOW - HOUR, storage_pb2.INCIDENT_STATUS_OPEN)
    )
    # Fixed once and quiet after: not recurring.
    history.incident(ref("shop", "cart"), "KubePodCrashLooping", NOW - 5 * DAY, action="x")
    # A dry-run on the planted one is no action tried.
    history.action(planted[0], "delete_pod", storage_pb2.ACTION_OUTCOME_DRY_RUN, NOW - 6 * DAY)
    history.incidents.reverse()  # storage lists newest first

    found = recurring_incidents(history.incidents, history.actions, min_incidents=3)

    assert len(found) == 1, [(r.subject.name, r.alert_name) for r in found]
    [recurring] = found
    assert recurring.subject == web
    assert recurring.alert_name == "KubePodCrashLooping"
    assert recurring.incidents == 5
    assert recurring.fixes_not_held == 4
    assert list(recurring.actions_tried) == ["restart_deployment", "scale_deployment"]
    assert recurring.first_seen == planted[0].opened_at
    assert recurring.last_seen == planted[-1].opened_at
    assert list(recurring.incident_ids) == [i.incident_id for i in planted]


def test_the_minimum_decides_and_a_fix_must_be_followed_by_a_new_incident() -> None:
    history = History(7)
    web = ref("shop", "web")
    first = history.incident(web, "KubePodCrashLooping", NOW - 3 * DAY)
    history.incident(web, "KubePodCrashLooping", NOW - 2 * DAY)
    assert recurring_incidents(history.incidents, [], min_incidents=3) == []
    assert len(recurring_incidents(history.incidents, [], min_incidents=2)) == 1
    # Two incidents whose lives overlap (another fingerprint, same workload and alert):
    # the second opened before the first's fix, so it says nothing about the fix.
    overlap = History(8)
    long_fix = overlap.incident(
        web, "KubePodCrashLooping", NOW - 3 * DAY, closed_after=dt.timedelta(hours=5)
    )
    overlap.incident(web, "KubePodCrashLooping", NOW - 3 * DAY + HOUR, FAILED)
    assert recurring_incidents(overlap.incidents, [], min_incidents=2) == []
    assert long_fix.status == first.status == REMEDIATED
    with pytest.raises(ValueError):
        recurring_incidents(history.incidents, [], min_incidents=1)


# -- clusters of similar incidents ------------------------------------------------------------

DIMENSIONS = 384


def _planted_clusters(
    seed: int, sizes: tuple[int, ...] = (40, 30, 25, 20), noise: int = 30, spread: float = 0.03
) -> tuple[list[storage_pb2.IncidentEmbedding], NDArray[np.int64]]:
    """Embeddings around 4 random centres (each its own alert and namespace) plus random
    vectors, shuffled; and the planted label of each (-1 for the random ones)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), DIMENSIONS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = [
        centres[k] + rng.normal(scale=spread, size=(n, DIMENSIONS)) for k, n in enumerate(sizes)
    ]
    vectors.append(rng.normal(size=(noise, DIMENSIONS)))
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(sizes)] + [np.full(noise, -1)])
    matrix = np.vstack(vectors)
    order = rng.permutation(len(labels))
    matrix, labels = matrix[order], labels[order]
    embeddings = []
    for index, (vector, label) in enumerate(zip(matrix, labels.tolist(), strict=True)):
        embedding = storage_pb2.IncidentEmbedding(
            incident_id=f"incident-{index}",
            embedding_model="all-minilm-l6-v2-int8",
            vector=vector.tolist(),
            alert_name=ALERTS[label % 3] if label >= 0 else f"Noise{index}",
            subject=ref(f"team-{label}" if label >= 0 else f"ns-{index}", f"app-{index % 3}"),
            status=REMEDIATED if label == 0 or index % 2 else FAILED,
        )
        embedding.opened_at.FromDatetime(NOW - dt.timedelta(minutes=index))
        embeddings.append(embedding)
    return embeddings, labels.astype(np.int64)


# Recovering the planted groups: adjusted Rand index over the planted members at least this,
# and at least this share of the random vectors left out of every cluster.
MIN_ADJUSTED_RAND = 0.9
MIN_NOISE_LEFT_OUT = 0.8


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_planted_clusters_of_embeddings_are_recovered(seed: int) -> None:
    embeddings, planted = _planted_clusters(seed)
    found = incident_clusters(embeddings, min_cluster_size=5)
    labels = cluster_labels(np.array([list(e.vector) for e in embeddings]), 5)
    members = planted >= 0
    assert adjusted_rand_score(planted[members], labels[members]) >= MIN_ADJUSTED_RAND
    assert np.mean(labels[~members] == NOISE) >= MIN_NOISE_LEFT_OUT
    assert len(found.clusters) == 4
    assert found.incidents == len(embeddings)
    assert found.unclustered == int(np.count_nonzero(labels == NOISE))
    assert found.embedding_model == "all-minilm-l6-v2-int8"
    largest = found.clusters[0]
    assert (largest.cluster, largest.size) == (0, 40)
    # The largest planted group: centre 0, alert ALERTS[0], namespace team-0, all remediated.
    assert (largest.common_alert, largest.common_alert_share) == (ALERTS[0], 1.0)
    assert (largest.common_namespace, largest.common_namespace_share) == ("team-0", 1.0)
    assert largest.remediated_share == 1.0
    assert largest.workloads == 3
    assert len(largest.incident_ids) == clustering.MAX_INCIDENT_IDS
    assert [c.size for c in found.clusters] == sorted(
        (c.size for c in found.clusters), reverse=True
    )


def test_many_incidents_are_projected_first_and_still_recovered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The projection that large inputs take, on a small one.
    monkeypatch.setattr(clustering, "BRUTE_FORCE_MAX", 50)
    embeddings, planted = _planted_clusters(21)
    labels = cluster_labels(np.array([list(e.vector) for e in embeddings]), 5)
    members = planted >= 0
    assert adjusted_rand_score(planted[members], labels[members]) >= MIN_ADJUSTED_RAND


def test_only_vectors_of_the_newest_model_are_compared_and_few_make_no_cluster() -> None:
    embeddings, _ = _planted_clusters(31, sizes=(10, 10), noise=0)
    other = storage_pb2.IncidentEmbedding(
        incident_id="old", embedding_model="another-model", vector=[1.0] * 8
    )
    found = incident_clusters([*embeddings, other], min_cluster_size=5)
    assert found.incidents == 20 and len(found.clusters) == 2
    assert "old" not in {i for c in found.clusters for i in c.incident_ids}
    few = incident_clusters(embeddings[:3], min_cluster_size=5)
    assert (few.clusters, few.incidents, few.unclustered) == ([], 3, 3)
    assert incident_clusters([]).clusters == []


# -- anomalies --------------------------------------------------------------------------------


def _steady_week(history: History, seed: int) -> None:
    """A week and an hour of incidents: 'steady' gets 3 (Poisson-ish, seeded) an hour in
    namespace steady, 'quiet' one now and then."""
    rng = np.random.default_rng(seed)
    for hour in range(169):
        bucket_end = NOW - hour * HOUR
        for _ in range(int(rng.poisson(3))):
            opened = bucket_end - dt.timedelta(minutes=float(rng.uniform(0.1, 59.9)))
            history.incident(ref("steady", "api"), "KubePodNotReady", opened, FAILED)
        if hour % 24 == 5:
            history.incident(
                ref("quiet", "db"), "KubeDeploymentReplicasMismatch", bucket_end - HOUR / 2
            )


@pytest.mark.parametrize("seed", [41, 42, 43])
def test_a_planted_spike_is_an_anomaly_and_a_steady_rate_is_not(seed: int) -> None:
    history = History(seed)
    _steady_week(history, seed)
    for minute in range(12):  # the spike: 12 crash loops in shop in the last hour
        history.incident(
            ref("shop", f"web-{minute % 3}"),
            "KubePodCrashLooping",
            NOW - dt.timedelta(minutes=5 + minute * 4),
            FAILED,
        )
    found = find_anomalies(history.incidents, NOW, AnomalyPolicy())
    keys = {(a.scope, a.key) for a in found.anomalies}
    assert keys == {
        (intelligence_pb2.ANOMALY_SCOPE_NAMESPACE, "shop"),
        (intelligence_pb2.ANOMALY_SCOPE_ALERT, "KubePodCrashLooping"),
    }
    shop = found.anomalies[0]
    assert shop.count == 12
    assert shop.baseline_mean == 0.0 and shop.baseline_stddev == 0.0
    assert shop.threshold == 3.0  # mean + 3 * max(stddev, 1)
    assert (found.bucket_start, found.bucket_end) == (NOW - HOUR, NOW)


def test_a_rise_within_the_usual_spread_or_below_the_minimum_is_no_anomaly() -> None:
    history = History(5)
    _steady_week(history, 5)
    # Two incidents where there were none: a rise, but fewer than the minimum count.
    history.incident(ref("new", "x"), "SomethingNew", NOW - 10 * dt.timedelta(minutes=1))
    history.incident(ref("new", "x"), "SomethingNew", NOW - 20 * dt.timedelta(minutes=1))
    # Incidents outside the history (too old, or in the future) are not counted.
    history.incident(ref("old", "x"), "Old", NOW - 30 * DAY)
    history.incident(ref("late", "x"), "Late", NOW + HOUR)
    assert find_anomalies(history.incidents, NOW).anomalies == []
    # The same two with a minimum of 2: a new key with a burst is unusual.
    loose = AnomalyPolicy(min_count=1, stddevs=1.5)
    assert {a.key for a in find_anomalies(history.incidents, NOW, loose).anomalies} == {
        "new",
        "SomethingNew",
    }


def test_namespaces_in_other_clusters_are_their_own_keys() -> None:
    history = History(9)
    for minute in range(4):
        history.incident(
            ref("shop", "web", cluster="eu"),
            "KubePodCrashLooping",
            NOW - dt.timedelta(minutes=minute + 1),
        )
    keys = {a.key for a in find_anomalies(history.incidents, NOW).anomalies}
    assert keys == {"eu/shop", "KubePodCrashLooping"}
