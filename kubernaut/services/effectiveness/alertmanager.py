"""AlertManager's API v2, read-only: which alerts are still firing."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from kubernaut.runtime.prometheus import label_matcher
from kubernaut.runtime.redaction import redact_url
from kubernaut.services.effectiveness.assessment import ActiveAlert


class AlertmanagerUnavailable(Exception):
    """AlertManager could not be read: its evidence is missing (never assumed resolved)."""


def _parse_time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class AlertmanagerClient:
    """GET /api/v2/alerts of one AlertManager, through one pooled HTTP client."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.display_url = redact_url(self.url)
        self._client = httpx.AsyncClient(timeout=timeout)

    async def firing(self, alert_name: str) -> list[ActiveAlert]:
        """The alerts named `alert_name` that AlertManager holds and that have not ended:
        active, silenced, inhibited or not yet processed (all still firing). Raises
        AlertmanagerUnavailable when it cannot be read."""
        return await self.firing_where(label_matcher("alertname", alert_name))

    async def firing_where(self, *matchers: str) -> list[ActiveAlert]:
        """The alerts whose labels match every one of `matchers` (`name="value"`,
        `name=~"regex"`), as `firing`."""
        params: list[tuple[str, str | int | float | bool | None]] = [
            *(("filter", matcher) for matcher in matchers),
            ("active", "true"),
            ("silenced", "true"),
            ("inhibited", "true"),
            ("unprocessed", "true"),
        ]
        try:
            response = await self._client.get(f"{self.url}/api/v2/alerts", params=params)
            response.raise_for_status()
            body: Any = response.json()
        except httpx.HTTPStatusError as error:
            raise AlertmanagerUnavailable(
                f"AlertManager at {self.display_url} answered {error.response.status_code}"
            ) from error
        except (httpx.HTTPError, ValueError) as error:
            raise AlertmanagerUnavailable(
                f"AlertManager at {self.display_url} could not be read: "
                f"{error or type(error).__name__}"
            ) from error
        if not isinstance(body, list):
            raise AlertmanagerUnavailable(
                f"AlertManager at {self.display_url} answered something other than a list"
            )
        now = dt.datetime.now(dt.UTC)
        alerts = []
        for raw in body:
            if not isinstance(raw, dict):
                continue
            ends_at = str(raw.get("endsAt") or "")
            ended = _parse_time(ends_at) if ends_at else None
            if ended is not None and ended.tzinfo is not None and ended <= now:
                continue  # resolved: AlertManager keeps it a while but it no longer fires
            labels = raw.get("labels") or {}
            alerts.append(
                ActiveAlert(
                    labels={str(k): str(v) for k, v in labels.items()},
                    state=str((raw.get("status") or {}).get("state", "active")),
                    starts_at=str(raw.get("startsAt") or ""),
                    ends_at=ends_at,
                )
            )
        return alerts

    async def close(self) -> None:
        await self._client.aclose()
