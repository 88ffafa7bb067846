"""Clusters of similar incidents across workloads, from the embeddings of their
descriptions.

Why HDBSCAN (scikit-learn's) and not AgglomerativeClustering with a distance threshold:
the number of groups is unknown, their density differs (one alert storms, another comes
twice a week), and many incidents are like no other. HDBSCAN finds the number of clusters
itself, leaves the incidents that belong nowhere as noise (label -1) instead of forcing
them into a group, and needs one intuitive knob, the smallest cluster worth reporting; a
distance threshold would depend on the embedding model's geometry and need tuning per
model. Cosine distance is what the embeddings are made for: the vectors are scaled to unit
length, where euclidean distance is a monotonic function of it (|a - b|^2 = 2 - 2 cos),
so euclidean HDBSCAN on them orders neighbours as cosine would.

Cost: the input is bounded (the most recent N incidents, a setting). Up to
BRUTE_FORCE_MAX vectors the pairwise distances are computed at once (a few tenths of a
second for 2000 vectors, 32 MB); above it the vectors are first projected on their
REDUCED_DIMENSIONS principal components (kept unit length), where tree-based neighbour
search is fast (10000 incidents in about 3 s). scikit-learn is imported on first use:
only a process that clusters pays for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.storage.v1 import storage_pb2
from numpy.typing import NDArray

from kubernaut.services.intelligence.recurring import workload_of

DEFAULT_MIN_CLUSTER_SIZE: Final = 5
BRUTE_FORCE_MAX: Final = 2000
REDUCED_DIMENSIONS: Final = 50
# The incident ids an IncidentCluster lists at most (the newest).
MAX_INCIDENT_IDS: Final = 20
NOISE: Final = -1


def unit_rows(vectors: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """The rows scaled to length 1 (a zero row stays zero)."""
    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    scaled: NDArray[np.float64] = matrix / np.where(norms == 0, 1.0, norms)
    return scaled


def cluster_labels(
    vectors: NDArray[np.floating[Any]], min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE
) -> NDArray[np.int64]:
    """A cluster label per row of `vectors` (0, 1, ...; NOISE for rows in no cluster), by
    HDBSCAN over cosine distance (see the module's docstring)."""
    if min_cluster_size < 2:
        raise ValueError(f"min_cluster_size must be at least 2, got {min_cluster_size}")
    count = len(vectors)
    if count < min_cluster_size:
        return np.full(count, NOISE, dtype=np.int64)
    from sklearn.cluster import HDBSCAN  # type: ignore[import-untyped]

    points = unit_rows(vectors)
    algorithm = "brute"
    if count > BRUTE_FORCE_MAX and points.shape[1] > REDUCED_DIMENSIONS:
        from sklearn.decomposition import PCA  # type: ignore[import-untyped]

        reduced = PCA(n_components=REDUCED_DIMENSIONS, random_state=0).fit_transform(points)
        points, algorithm = unit_rows(reduced), "auto"
    labels = HDBSCAN(min_cluster_size=min_cluster_size, algorithm=algorithm, copy=True).fit_predict(
        points
    )
    return np.asarray(labels, dtype=np.int64)


@dataclass(frozen=True)
class Clusters:
    # Largest first.
    clusters: list[intelligence_pb2.IncidentCluster]
    embedding_model: str
    # Embedded incidents looked at, and how many of them are in no cluster.
    incidents: int
    unclustered: int


def _common(values: Sequence[str]) -> tuple[str, float]:
    """The most common value (the smallest of the ties) and its share."""
    counts = Counter(values)
    value = min(counts, key=lambda v: (-counts[v], v))
    return value, counts[value] / len(values)


def summarize(
    embeddings: Sequence[storage_pb2.IncidentEmbedding], labels: NDArray[np.int64]
) -> list[intelligence_pb2.IncidentCluster]:
    """Each cluster of `labels` (one per embedding, newest embedding first) summed up:
    size, common alert and namespace with their shares, workloads, the share closed
    REMEDIATED, its newest incidents; largest first."""
    members: dict[int, list[storage_pb2.IncidentEmbedding]] = {}
    for embedding, label in zip(embeddings, labels.tolist(), strict=True):
        if label != NOISE:
            members.setdefault(label, []).append(embedding)
    summaries = []
    for group in members.values():
        alert, alert_share = _common([e.alert_name for e in group])
        namespace, namespace_share = _common([e.subject.namespace for e in group])
        remediated = sum(e.status == storage_pb2.INCIDENT_STATUS_REMEDIATED for e in group)
        summaries.append(
            intelligence_pb2.IncidentCluster(
                size=len(group),
                common_alert=alert,
                common_alert_share=alert_share,
                common_namespace=namespace,
                common_namespace_share=namespace_share,
                workloads=len({workload_of(e.subject) for e in group}),
                remediated_share=remediated / len(group),
                incident_ids=[e.incident_id for e in group[:MAX_INCIDENT_IDS]],
            )
        )
    summaries.sort(key=lambda c: (-c.size, c.common_alert, c.common_namespace))
    for place, summary in enumerate(summaries):
        summary.cluster = place
    return summaries


def incident_clusters(
    embeddings: Sequence[storage_pb2.IncidentEmbedding],
    min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE,
) -> Clusters:
    """The clusters of `embeddings` (newest first, as storage lists them). Only vectors of
    the newest embedding's model (and its dimensions) are compared: another model's vectors
    live in another space."""
    if not embeddings:
        return Clusters([], "", 0, 0)
    model = embeddings[0].embedding_model
    dimensions = len(embeddings[0].vector)
    same = [e for e in embeddings if e.embedding_model == model and len(e.vector) == dimensions]
    vectors = np.array([list(e.vector) for e in same], dtype=np.float64).reshape(
        len(same), dimensions
    )
    labels = cluster_labels(vectors, min_cluster_size)
    clusters = summarize(same, labels)
    return Clusters(clusters, model, len(same), int(np.count_nonzero(labels == NOISE)))
