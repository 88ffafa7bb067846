"""storage's settings: the shared database and what follows, from KUBERNAUT_* variables."""

from __future__ import annotations

from kubernaut.runtime.settings import DatabaseSettings
from kubernaut.services.storage.embeddings import DEFAULT_EMBEDDING_MODEL


class StorageSettings(DatabaseSettings):
    """KUBERNAUT_<FIELD>: the database (KUBERNAUT_DATABASE_URL) and what follows."""

    # Embeds incidents for SearchSimilarIncidents: a name from
    # kubernaut.services.storage.embeddings.EMBEDDERS, or package.module:factory.
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    # KUBERNAUT_INCIDENT_QUIET_SECONDS: alerts this long after their incident was closed
    # (other than by resolving) count on it instead of opening a new one, so a fix is
    # never repeated while the alert's lookback window drains; unless the workload changed
    # since the fix (template, images, more restarts), which is a new failure.
    incident_quiet_seconds: float = 1800.0
