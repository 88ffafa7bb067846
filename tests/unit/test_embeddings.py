"""The incident embedder: the real default model (all-MiniLM-L6-v2, int8 ONNX), offline."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from kubernaut.common.v1 import alert_pb2

from kubernaut.services.storage import embeddings
from kubernaut.services.storage.embeddings import (
    DEFAULT_EMBEDDING_MODEL,
    Embedder,
    EmbeddingModelError,
    MiniLmEmbedder,
    describe_incident,
    embedder_for,
    split_words,
)


def cosine_distance(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def alert(name: str, summary: str, description: str = "", **labels: str) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        name=name,
        status=alert_pb2.ALERT_STATUS_FIRING,
        labels={"alertname": name, **labels},
        annotations={"summary": summary, "description": description},
        starts_at=timestamp_pb2.Timestamp(seconds=1_767_225_600),
    )


CRASH_CHECKOUT = describe_incident(
    alert(
        "KubePodCrashLooping",
        "Pod shop/checkout-7d9f8 is crash looping",
        "Container checkout restarted 5 times in the last 10 minutes (CrashLoopBackOff).",
        severity="warning",
        container="checkout",
        pod="checkout-7d9f8-x2k4q",
    ),
    alert_pb2.ResourceRef(namespace="shop", kind="Deployment", name="checkout"),
)
CRASH_PAYMENTS = describe_incident(
    alert(
        "KubePodCrashLooping",
        "Pod payments/api-5c6 keeps restarting",
        "The api container exits with code 1 right after start and is in CrashLoopBackOff.",
        severity="warning",
        container="api",
        pod="api-5c6d-9zq7w",
    ),
    alert_pb2.ResourceRef(namespace="payments", kind="Deployment", name="api"),
)
DISK_FULL = describe_incident(
    alert(
        "NodeFilesystemAlmostOutOfSpace",
        "Filesystem on node worker-3 has only 3% space left",
        "The filesystem /var/lib/containerd on /dev/sda1 will be full within hours.",
        severity="critical",
        mountpoint="/var/lib/containerd",
    ),
    alert_pb2.ResourceRef(kind="Node", name="worker-3"),
)


@pytest.fixture(scope="module")
def model() -> Embedder:
    return embedder_for()


def test_the_default_model_makes_unit_vectors_of_its_documented_dimension(
    model: Embedder,
) -> None:
    assert model.name == DEFAULT_EMBEDDING_MODEL == "all-minilm-l6-v2-int8"
    assert model.dimensions == 384
    vectors = model.embed([CRASH_CHECKOUT, DISK_FULL, "x"])
    assert [len(v) for v in vectors] == [384, 384, 384]
    for vector in vectors:
        assert all(isinstance(x, float) for x in vector)
        assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0, abs=1e-5)
    assert cosine_distance(vectors[0], vectors[1]) > 0.3  # not a constant vector
    assert model.embed([]) == []


def test_similar_incidents_are_closer_than_unrelated_ones(model: Embedder) -> None:
    checkout, payments, disk = model.embed([CRASH_CHECKOUT, CRASH_PAYMENTS, DISK_FULL])
    similar = cosine_distance(checkout, payments)
    unrelated = min(cosine_distance(checkout, disk), cosine_distance(payments, disk))
    assert similar < 0.4, similar
    assert unrelated > similar + 0.3, (similar, unrelated)


def test_the_model_reads_meaning_not_shared_words(model: Embedder) -> None:
    """A paraphrase with few words in common is closer than a text that shares words."""
    cert, cert_paraphrase, same_words = model.embed(
        [
            "certificate expires in 3 days",
            "TLS cert will expire soon",
            "persistent volume will be full in 3 days",
        ]
    )
    assert cosine_distance(cert, cert_paraphrase) + 0.15 < cosine_distance(cert, same_words)


def test_a_batch_gives_the_vectors_of_its_texts_one_by_one(model: Embedder) -> None:
    # Batches are padded to their longest text; padding must not change any vector.
    batch = model.embed([CRASH_CHECKOUT, "short"])
    alone = [model.embed([CRASH_CHECKOUT])[0], model.embed(["short"])[0]]
    for got, want in zip(batch, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert model.embed([DISK_FULL]) == model.embed([DISK_FULL])  # deterministic


def test_the_model_loads_once_however_many_threads_ask() -> None:
    fresh = MiniLmEmbedder()
    loads: list[int] = []
    real_load = fresh._load

    def counting_load() -> Any:
        loads.append(threading.get_ident())
        return real_load()

    fresh._load = counting_load  # type: ignore[method-assign]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: fresh.embed([CRASH_CHECKOUT])[0], range(16)))
    assert len(loads) == 1
    assert all(r == pytest.approx(results[0], abs=1e-6) for r in results)


def test_embedder_for_makes_one_embedder_per_process(model: Embedder) -> None:
    assert embedder_for() is model
    assert embedder_for(DEFAULT_EMBEDDING_MODEL) is model
    assert isinstance(model, MiniLmEmbedder)


class TinyEmbedder:
    """An embedder of one's own, chosen by `module:factory`."""

    name = "tiny-2"
    dimensions = 2

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float(len(t)), 1.0] for t in texts]


def not_an_embedder() -> object:
    return object()


def test_embedder_for_takes_names_and_factories() -> None:
    tiny = embedder_for(f"{__name__}:TinyEmbedder")
    assert isinstance(tiny, TinyEmbedder)
    assert tiny.embed(["abc"]) == [[3.0, 1.0]]
    with pytest.raises(EmbeddingModelError, match="unknown embedding model"):
        embedder_for("gpt-embeddings")
    with pytest.raises(EmbeddingModelError, match="cannot load"):
        embedder_for("no_such_module_here:Thing")
    with pytest.raises(EmbeddingModelError, match="cannot load"):
        embedder_for(f"{__name__}:NoSuchFactory")
    with pytest.raises(EmbeddingModelError, match="did not make an Embedder"):
        embedder_for(f"{__name__}:not_an_embedder")


def test_a_model_file_that_is_not_the_pinned_one_is_refused() -> None:
    changed = embeddings._PackagedFile(
        package=embeddings._MINILM_MODEL.package,
        distribution=embeddings._MINILM_MODEL.distribution,
        path=embeddings._MINILM_MODEL.path,
        sha256="0" * 64,
    )
    with pytest.raises(EmbeddingModelError, match="expected 0000"):
        changed.resolve()
    missing = embeddings._PackagedFile("no_such_package_here", "no-such", "model.onnx", "0")
    with pytest.raises(EmbeddingModelError, match="not installed"):
        missing.resolve()


def test_description_holds_what_characterises_the_problem() -> None:
    text = describe_incident(
        alert(
            "KubePodCrashLooping",
            "Pod shop/checkout is  crash\nlooping",
            "x" * 5000,
            severity="warning",
            container="checkout",
            pod="checkout-7d9f8-x2k4q",
            instance="10.0.0.7:8080",
        ),
        alert_pb2.ResourceRef(cluster="prod", namespace="shop", kind="Deployment", name="checkout"),
    )
    lines = text.splitlines()
    assert lines[0] == "Kube Pod Crash Looping on Deployment shop/checkout"
    assert lines[1] == "Pod shop/checkout is crash looping"
    assert lines[2] == "x" * 1000
    assert lines[3] == "severity=warning container=checkout"
    assert "x2k4q" not in text and "10.0.0.7" not in text  # occurrence-specific labels

    node = describe_incident(
        alert_pb2.Alert(name="NodeNotReady", annotations={"message": "nul\x00here"}),
        alert_pb2.ResourceRef(kind="Node", name="worker-1"),
    )
    assert node == "Node Not Ready on Node worker-1\nnulhere"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("KubePodCrashLooping", "Kube Pod Crash Looping"),
        ("NodeFilesystemAlmostOutOfSpace", "Node Filesystem Almost Out Of Space"),
        ("KubeAPIErrorBudgetBurn", "Kube API Error Budget Burn"),
        ("etcd_high_fsync_durations", "etcd high fsync durations"),
        ("HTTP5xxRate", "HTTP5xx Rate"),
    ],
)
def test_split_words(name: str, words: str) -> None:
    assert split_words(name) == words
