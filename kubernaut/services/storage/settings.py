"""storage's settings: the shared database and what follows, from KUBERNAUT_* variables."""

from __future__ import annotations

from pydantic import Field

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
    # KUBERNAUT_INCIDENT_RETENTION_DAYS: incidents closed longer ago than this move, with
    # their resources and analyses, to the archive tables, so that the live tables and
    # their indexes stay the size of the recent past (GetIncident still finds them;
    # listings, similar-incident search and intelligence do not). 0 keeps all live.
    incident_retention_days: float = Field(default=365.0, ge=0)
    # KUBERNAUT_INCIDENT_ARCHIVE_POLL_SECONDS: how often each replica looks for incidents
    # past retention.
    incident_archive_poll_seconds: float = Field(default=3600.0, gt=0)
