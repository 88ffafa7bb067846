"""`kubernaut login`: an OIDC ID token by the device authorization grant (RFC 8628), for a
person at a terminal. The CLI shows a code and a link; the person signs in at the issuer
in any browser; the token is saved (owner-only) where the CLI finds it next time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from kubernaut.runtime.certs import write_private

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class LoginFailed(Exception):
    """The issuer refused, the person declined, or the code expired."""


async def _discover(http: httpx.AsyncClient, issuer: str) -> dict[str, Any]:
    answer = await http.get(issuer.rstrip("/") + "/.well-known/openid-configuration")
    answer.raise_for_status()
    found: dict[str, Any] = answer.json()
    if "device_authorization_endpoint" not in found:
        raise LoginFailed(f"{issuer} offers no device login (device_authorization_endpoint)")
    return found


async def device_login(
    issuer: str,
    client_id: str,
    out: Path,
    *,
    scope: str = "openid email groups",
    tell: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
) -> Path:
    """Run the device grant against `issuer` for `client_id` and write the ID token to
    `out` (mode 0600). Raises LoginFailed."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        endpoints = await _discover(http, issuer)
        started = await http.post(
            endpoints["device_authorization_endpoint"],
            data={"client_id": client_id, "scope": scope},
        )
        if started.status_code != 200:
            raise LoginFailed(f"the issuer refused the device login: {started.text[:200]}")
        device = started.json()
        link = device.get("verification_uri_complete") or device["verification_uri"]
        tell(f"Open {link} and confirm the code {device['user_code']}")
        interval = float(device.get("interval", 5))
        deadline = clock() + float(device.get("expires_in", 600))
        while clock() < deadline:
            await asyncio.sleep(interval)
            polled = await http.post(
                endpoints["token_endpoint"],
                data={
                    "grant_type": DEVICE_GRANT,
                    "device_code": device["device_code"],
                    "client_id": client_id,
                },
            )
            body = polled.json()
            if polled.status_code == 200:
                token = body.get("id_token")
                if not token:
                    raise LoginFailed("the issuer answered without an id_token")
                await asyncio.to_thread(write_private, out, f"{token}\n".encode())
                return out
            error = body.get("error", "")
            if error == "slow_down":
                interval += 5
            elif error != "authorization_pending":
                raise LoginFailed(f"device login failed: {error or polled.status_code}")
    raise LoginFailed("the code expired before it was confirmed")
