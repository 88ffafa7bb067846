"""The public webhook corpus (../shared/corpus/webhooks-public: 40 bodies from public
projects, never copied here) posted to the edge in front of the real gateway, each firing
alert's startsAt set to now (the zero time kept): every body is answered as PROVENANCE.md's
row says, and none with a 5xx. Firing members are taken (accepted, counted as duplicates
or grouped as a storm), resolved members are never work."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub

from kubernaut.edge.app import ALERTMANAGER_PATH, GRAFANA_PATH, create_app
from kubernaut.edge.security import Authenticator
from kubernaut.runtime.names import EDGE_ACCOUNT
from tests.fixtures.kubernaut import InProcessStack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT.parent / "shared" / "corpus" / "webhooks-public"
TOKEN = "corpus-token"
ZERO_TIME = "0001-01-01T00:00:00Z"
TAKEN = {"ALERT_DISPOSITION_ACCEPTED", "ALERT_DISPOSITION_DUPLICATE", "ALERT_DISPOSITION_STORM"}


def expectations() -> dict[str, str]:
    """Per file: "2xx", "4xx" or "2xx or 4xx", read from PROVENANCE.md's table (its last
    column starts with the verdict in bold)."""
    found: dict[str, str] = {}
    for line in (CORPUS / "PROVENANCE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not cells[0].endswith(".json"):
            continue
        should = cells[-1]
        verdict = re.match(r"\*\*([^*]+)\*\*", should)
        assert verdict, line
        lenient = "2xx or 4xx" in should or "or 2xx" in should or "may fall back" in should
        if lenient:
            found[cells[0]] = "2xx or 4xx"
        elif verdict.group(1).startswith("invalid"):
            found[cells[0]] = "4xx"
        else:
            found[cells[0]] = "2xx"
    return found


EXPECTED = expectations()


def now_for_firing(body: Any) -> Any:
    """Each firing alert's startsAt set to now (the zero time kept), as PROVENANCE says."""
    if isinstance(body, dict) and isinstance(body.get("alerts"), list):
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        for alert in body["alerts"]:
            if (
                isinstance(alert, dict)
                and alert.get("status") == "firing"
                and alert.get("startsAt") != ZERO_TIME
                and "startsAt" in alert
            ):
                alert["startsAt"] = now
    return body


@pytest.fixture
async def edge(stack: InProcessStack) -> AsyncIterator[httpx.AsyncClient]:
    clients = stack.clients(EDGE_ACCOUNT)
    app = create_app(clients.stub(GatewayServiceStub).SubmitAlerts, Authenticator.of([TOKEN]))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://edge",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    ) as client:
        yield client
    await clients.close()


def test_the_corpus_is_there_and_every_file_has_a_row() -> None:
    files = sorted(p.name for p in CORPUS.glob("*.json"))
    assert len(files) == 40, files
    assert sorted(EXPECTED) == files


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_a_public_webhook_is_answered_as_its_row_says(
    edge: httpx.AsyncClient, name: str
) -> None:
    raw = (CORPUS / name).read_bytes()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        content = raw  # not JSON: posted as it is
    else:
        content = json.dumps(now_for_firing(body)).encode()
    path = GRAFANA_PATH if name.startswith("grafana-") else ALERTMANAGER_PATH
    response = await edge.post(path, content=content)
    status = response.status_code
    assert status < 500, (name, status, response.text)
    expected = EXPECTED[name]
    kind = f"{status // 100}xx"
    assert kind in expected.split(" or "), (name, expected, status, response.text)
    answer = response.json()
    if status >= 400:
        # A refusal names the problem.
        assert answer.get("error") or answer.get("detail") or answer.get("field_violations"), (
            name,
            answer,
        )
        return
    if expected != "2xx":
        return  # a degenerate body a receiver may take as a test ping
    outcomes = answer.get("outcomes", [])
    alerts = body.get("alerts", []) if isinstance(body, dict) else []
    assert len(outcomes) == len(alerts), (name, answer)
    for alert, outcome in zip(alerts, outcomes, strict=True):
        if alert.get("status") == "resolved":
            # Never work: at most it closes what it names.
            assert outcome["disposition"] not in {
                "ALERT_DISPOSITION_ACCEPTED",
                "ALERT_DISPOSITION_STORM",
            }, (name, outcome)
        else:
            assert outcome["disposition"] in TAKEN, (name, alert.get("labels"), outcome)
