"""Which vector store storage searches incident embeddings in, and how: KUBERNAUT_VECTOR_*."""

from __future__ import annotations

import enum

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubernaut.runtime.settings import HttpBaseUrl


class VectorBackend(enum.StrEnum):
    PGVECTOR = "pgvector"
    WEAVIATE = "weaviate"
    PINECONE = "pinecone"


class VectorStoreSettings(BaseSettings):
    """KUBERNAUT_VECTOR_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="KUBERNAUT_VECTOR_", frozen=True, extra="ignore")

    # pgvector (in storage's own PostgreSQL), weaviate or pinecone. PostgreSQL keeps every
    # embedding whichever it is; `kubernaut storage reindex` fills a new one from it.
    store: VectorBackend = VectorBackend.PGVECTOR
    # HNSW graph degree (pgvector's and Weaviate's `m` / maxConnections): higher finds more
    # true neighbours, costs memory and build time. Applies when the index is (re)built.
    hnsw_m: int = Field(default=16, ge=2, le=100)
    # Candidates kept while building the graph: higher builds a better graph, slower.
    hnsw_ef_construction: int = Field(default=64, ge=4, le=1000)
    # Candidates kept while searching (at least the limit asked for): higher finds more
    # true neighbours, slower. Read at each search.
    hnsw_ef_search: int = Field(default=64, ge=1, le=1000)
    # A search or write that takes longer counts as the store being unavailable.
    timeout_seconds: float = Field(default=2.0, gt=0)
    # Weaviate's REST base URL (http://host:8080); its gRPC port below. Needed for weaviate.
    weaviate_url: HttpBaseUrl = ""
    weaviate_grpc_port: int = Field(default=50051, ge=1, le=65535)
    weaviate_api_key: SecretStr | None = None
    # The Pinecone index's data-plane host (https://<index>-<project>.svc.<env>.pinecone.io,
    # from the console or describe_index) and the API key. Needed for pinecone.
    pinecone_host: HttpBaseUrl = ""
    pinecone_api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _backend_is_configured(self) -> VectorStoreSettings:
        if self.store is VectorBackend.WEAVIATE and not self.weaviate_url:
            raise ValueError("KUBERNAUT_VECTOR_STORE=weaviate needs KUBERNAUT_VECTOR_WEAVIATE_URL")
        if self.store is VectorBackend.PINECONE and not (
            self.pinecone_host and self.pinecone_api_key
        ):
            raise ValueError(
                "KUBERNAUT_VECTOR_STORE=pinecone needs KUBERNAUT_VECTOR_PINECONE_HOST and"
                " KUBERNAUT_VECTOR_PINECONE_API_KEY"
            )
        return self
