"""Fuzzing the HTTP edge in front of the real gateway: 1,300 malformed or hostile
bodies on both webhook routes. Whatever comes in, the answer is a 2xx, or a 4xx whose JSON
body names the error; never a 5xx, never an exception out of the app; and nothing is
half-accepted: a refused body left none of its alerts in the gateway's tables, an accepted
one left every alert the gateway said it recorded. A body within every documented limit is
accepted.

Every alert whose body has a labels object gets a `fuzz_id` label of its own just before
it is sent, so the gateway's tables (`gateway.fingerprints`, `gateway.queue`, alerts kept as
proto JSON) say which request a stored alert came from. Alerts carry `severity: info`: the
alert processor filters them, so the fuzzing opens no incidents for the session's other
tests (and its alert names are its own, so it starts no storm of theirs).
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import os
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernaut.gateway.v1.gateway_pb2_grpc import GatewayServiceStub

from kubernaut.edge.app import ALERTMANAGER_PATH, DEFAULT_MAX_BODY_BYTES, GRAFANA_PATH, create_app
from kubernaut.edge.security import Authenticator
from kubernaut.runtime.names import EDGE_ACCOUNT
from tests.fixtures.kubernaut import InProcessStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TOKEN = "edge-fuzz-token"
AUTH = f"Bearer {TOKEN}"
FUZZ_LABEL = "fuzz_id"
ROUTES = (ALERTMANAGER_PATH, GRAFANA_PATH)
VERSION_OF = {ALERTMANAGER_PATH: "4", GRAFANA_PATH: "1"}
# Dispositions whose alert the gateway keeps under its fingerprint.
RECORDED = {"ALERT_DISPOSITION_ACCEPTED", "ALERT_DISPOSITION_DUPLICATE", "ALERT_DISPOSITION_STORM"}
# alert.proto's limits (code points), and the edge's.
MAX_NAME = 256
MAX_KEY = 256
MAX_LABEL_VALUE = 4096
MAX_ANNOTATION_VALUE = 16384
MAX_PAIRS = 128
MAX_URL = 2048
MAX_SOURCE_FINGERPRINT = 128
MAX_ALERTS = 1000
MAX_CLUSTER = 253


# CI draws the same examples every run (its profile derandomizes), so more of them there
# find nothing new; a longer hunt scales them up: KUBERNAUT_FUZZ_SCALE=10 draws ten times as
# many (with --hypothesis-seed=<n> for fresh ones).
FUZZ_SCALE = float(os.environ.get("KUBERNAUT_FUZZ_SCALE", "1"))


def fuzzing(examples: int) -> settings:
    """Hypothesis settings for a test that sends `examples` requests (times FUZZ_SCALE)
    through the stack."""
    return settings(
        max_examples=max(1, round(examples * FUZZ_SCALE)),
        deadline=None,
        # No example database: each run draws afresh (CI's profile derandomizes). A failure
        # prints the shrunk body, and the seed to replay it with (--hypothesis-seed).
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# -- the edge, and what it left in the gateway's tables --------------------------------------


@dataclass
class Edge:
    client: httpx.AsyncClient
    db: asyncpg.Connection
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)


@pytest.fixture(scope="module")
async def edge(stack: InProcessStack, postgres_dsn: str) -> AsyncIterator[Edge]:
    """The edge on the session's stack, shared by every example of the module, and a
    connection to the stack's database (the gateway's schema is there)."""
    clients = stack.clients(EDGE_ACCOUNT)
    app = create_app(clients.stub(GatewayServiceStub).SubmitAlerts, Authenticator.of([TOKEN]))
    db = await asyncpg.connect(postgres_dsn)
    # An exception out of the app fails the example (a server would answer 500).
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            found = Edge(client, db)
            yield found
    finally:
        await db.close()
        await clients.close()
    by_status = Counter[int]()
    for (_, status), count in found.statuses.items():
        by_status[status] += count
    print(f"\nedge fuzz: {by_status.total()} requests, by status {dict(sorted(by_status.items()))}")
    for (test, status), count in sorted(found.statuses.items()):
        print(f"  {test}: {status} x{count}")


def mark(body: Any) -> list[str]:
    """Give every alert of `body` that has a labels object a fuzz_id label; their ids."""
    ids: list[str] = []
    alerts = body.get("alerts") if isinstance(body, dict) else None
    for alert in alerts if isinstance(alerts, list) else ():
        labels = alert.get("labels") if isinstance(alert, dict) else None
        if isinstance(labels, dict):
            labels[FUZZ_LABEL] = uuid.uuid4().hex
            ids.append(labels[FUZZ_LABEL])
    return ids


def alert_count(body: Any) -> int | None:
    alerts = body.get("alerts") if isinstance(body, dict) else None
    return len(alerts) if isinstance(alerts, list) else None


async def exchange(
    edge: Edge,
    test: str,
    path: str,
    content: bytes,
    headers: dict[str, str],
    *,
    fuzz_ids: list[str],
    alerts: int | None,
    acceptable: bool = False,
) -> None:
    """POST one body; check the answer and what the gateway kept of it. `acceptable`: the
    body keeps every documented limit, so it must be accepted (or be too large)."""
    response = await edge.client.post(path, content=content, headers=headers)
    status = response.status_code
    edge.statuses[test, status] += 1
    shown = f"{path} {status}: {response.text[:1000]!r} for {content[:3000]!r}"
    if status != 200 and fuzz_ids:
        # A refusal (a 503 too: "nothing was accepted, retry") took none of the alerts.
        leaked = await edge.db.fetch(
            f"""
            SELECT 'fingerprints' AS kept_in, fingerprint FROM gateway.fingerprints
            WHERE alert->'labels'->>'{FUZZ_LABEL}' = ANY($1::text[])
            UNION ALL
            SELECT 'queue', fingerprint FROM gateway.queue
            WHERE alert->'labels'->>'{FUZZ_LABEL}' = ANY($1::text[])
            """,
            fuzz_ids,
        )
        assert not leaked, f"refused, yet kept {[tuple(r) for r in leaked]}: {shown}"
    assert status == 200 or 400 <= status < 500, shown
    if acceptable:
        assert status == (413 if len(content) > DEFAULT_MAX_BODY_BYTES else 200), shown
    answer = response.json()
    assert isinstance(answer, dict), shown
    if status != 200:
        assert isinstance(answer.get("error"), str), shown
        return
    # Accepted: one outcome per alert, and every alert the gateway says it keeps is kept.
    outcomes = answer["outcomes"]
    assert answer["accepted"] == len(outcomes), shown
    if alerts is not None:
        assert len(outcomes) == alerts, shown
    recorded = sorted({o["fingerprint"] for o in outcomes if o["disposition"] in RECORDED})
    kept = await edge.db.fetchval(
        "SELECT count(*) FROM gateway.fingerprints WHERE fingerprint = ANY($1::text[])", recorded
    )
    assert kept == len(recorded), f"accepted, yet not all of it kept: {shown}"


# -- strategies ------------------------------------------------------------------------------

# Any JSON value, NaN and the infinities included (Python's json writes and reads them).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

# What PostgreSQL cannot keep in text or jsonb.
NUL = "\x00"
ODD_STRINGS = [
    "",
    " ",
    NUL,
    f"a{NUL}b",
    "\\u0000",
    "\ufeff",
    "\u202e",
    "\uffff",
    "\U0010ffff",
    "\U0001f525" * 3,
    "e\u0301",
    "'; DROP TABLE gateway.fingerprints; --",
    '{"alertname": "x"}',
    "{{ .Labels.alertname }}",
    "\r\n\t",
    "null",
]
ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz0123456789-_.",
    "".join(chr(c) for c in range(0x4E00, 0x4E00 + 512)),  # 3 bytes each in UTF-8
    "".join(chr(c) for c in range(0x1F300, 0x1F300 + 256)),  # 4 bytes each
    "\x01\x1f\x7f\u0085\u2028\u2029",
]


@functools.cache
def _noise(seed: int, length: int, alphabet: str) -> str:
    """`length` code points of `alphabet`: long and incompressible, yet cheap to draw."""
    return "".join(random.Random(seed).choices(alphabet, k=length))


def long_strings(limit: int, *, over: bool = True) -> st.SearchStrategy[str]:
    """Strings just under and at `limit` code points, and (`over`) just over it."""
    sizes = [limit - 1, limit] + ([limit + 1] if over else [])
    return st.builds(_noise, st.integers(0, 15), st.sampled_from(sizes), st.sampled_from(ALPHABETS))


surrogates = st.characters(categories=["Cs"])
# Any code point but NUL and surrogates: controls, combining marks, astral planes...
safe_text = st.text(st.characters(codec="utf-8", exclude_characters=NUL), max_size=24)
hostile_text = (
    st.text(max_size=24)  # NUL too
    | st.sampled_from(ODD_STRINGS)
    | st.builds(lambda a, s, b: a + s + b, safe_text, surrogates, safe_text)
)
SUBJECT_KEYS = [
    "namespace",
    "cluster",
    "pod",
    "deployment",
    "node",
    "instance",
    "job",
]
SMALL_VALUES = ["shop", "p1", "p2", "n1", ""]


@dataclass(frozen=True)
class Texts:
    """Where the strings of one alert come from: within the limits, or hostile."""

    key: st.SearchStrategy[str]
    label: st.SearchStrategy[str]
    annotation: st.SearchStrategy[str]
    name: st.SearchStrategy[str]
    url: st.SearchStrategy[str]
    source_fingerprint: st.SearchStrategy[str]
    any: st.SearchStrategy[str]
    # Labels and annotations beside the drawn ones, to reach the count limits.
    label_bulk: st.SearchStrategy[int]
    annotation_bulk: st.SearchStrategy[int]


ALERT_NAMES = ["FuzzAlertA", "FuzzAlertB", "FuzzAlertC"]
CLEAN = Texts(
    key=st.sampled_from(SUBJECT_KEYS) | safe_text.filter(bool) | long_strings(MAX_KEY, over=False),
    label=st.sampled_from(SMALL_VALUES) | safe_text | long_strings(MAX_LABEL_VALUE, over=False),
    annotation=safe_text | long_strings(MAX_ANNOTATION_VALUE, over=False),
    name=st.sampled_from(ALERT_NAMES)
    | st.builds(lambda s: "Fuzz" + s, safe_text)
    | long_strings(MAX_NAME, over=False).map(lambda s: "Fuzz" + s[4:]),
    url=safe_text | long_strings(MAX_URL, over=False),
    source_fingerprint=safe_text | long_strings(MAX_SOURCE_FINGERPRINT, over=False),
    any=safe_text,
    # With alertname, severity and fuzz_id: up to 128 labels.
    label_bulk=st.sampled_from([0, 0, 0, MAX_PAIRS - 3 - 4]),
    annotation_bulk=st.sampled_from([0, 0, 0, MAX_PAIRS - 3]),
)
HOSTILE = Texts(
    key=st.sampled_from(SUBJECT_KEYS) | hostile_text | long_strings(MAX_KEY),
    label=st.sampled_from(SMALL_VALUES) | hostile_text | long_strings(MAX_LABEL_VALUE),
    annotation=hostile_text | long_strings(MAX_ANNOTATION_VALUE),
    name=st.sampled_from(ALERT_NAMES)
    | st.builds(lambda s: "Fuzz" + s, hostile_text)
    | st.sampled_from(["", NUL, f"Fuzz{NUL}"])
    | long_strings(MAX_NAME).map(lambda s: "Fuzz" + s[4:]),
    url=hostile_text | long_strings(MAX_URL),
    source_fingerprint=hostile_text | long_strings(MAX_SOURCE_FINGERPRINT),
    any=hostile_text,
    label_bulk=st.sampled_from([0, 0, 0, 124, 125, 126]),
    annotation_bulk=st.sampled_from([0, 0, 0, 127, 128, 129]),
)


@dataclass(frozen=True)
class Recent:
    """A timestamp `seconds` from the moment the body is sent, written in `style`."""

    seconds: float
    style: str

    def render(self) -> Any:
        """Written at a fixed length whatever the clock says: hypothesis replays a failing
        example later, and a body of another length would draw other cut points from it
        (it then reports flaky data instead of the failure)."""
        moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.seconds)
        zone = datetime.timezone(
            datetime.timedelta(hours={"east": 14, "west": -12}.get(self.style, 0))
        )
        match self.style:
            case "z":
                return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
            case "naive":
                return moment.replace(tzinfo=None).isoformat(timespec="microseconds")
            case "epoch":
                return int(moment.timestamp()) + 0.5  # always one decimal
            case "epoch_ms":
                return int(moment.timestamp() * 1000)
            case _:
                return moment.astimezone(zone).isoformat(timespec="microseconds")


def render(value: Any) -> Any:
    """A copy of a generated body with its Recent timestamps written out."""
    if isinstance(value, Recent):
        return value.render()
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v) for v in value]
    return value


fresh_times = st.builds(
    Recent,
    st.floats(-3600, 60),
    st.sampled_from(["z", "utc", "naive", "east", "west", "epoch", "epoch_ms"]),
)
# Stale (over a day old) or from the future (beyond 5 minutes of skew): refused, still a 200.
unfresh_times = st.builds(
    Recent,
    st.sampled_from([-86400 * 400.0, -86401.0, 301.0, 86400.0]),
    st.sampled_from(["z", "east", "west"]),
)
_zones = st.sampled_from(
    [datetime.UTC]
    + [
        datetime.timezone(datetime.timedelta(minutes=m))
        for m in (-(23 * 60 + 59), -12 * 60, -5 * 60, 1, 5 * 60 + 30, 14 * 60, 23 * 60 + 59)
    ]
)
odd_times: st.SearchStrategy[Any] = (
    st.sampled_from(
        [
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+14:00",
            "0001-01-01T23:59:59-23:59",
            "0002-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59-05:00",
            "9999-12-31T23:59:59-00:01",
            "2026-06-30T23:59:60Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-02-30T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00.123456789Z",
            "+10000-01-01T00:00:00Z",
            "-0001-01-01T00:00:00Z",
            "yesterday",
            "",
            0,
            -1,
            253402300800,
            -62135596801,
            2**63,
            1e300,
            True,
        ]
    )
    | st.builds(lambda moment: moment.isoformat(), st.datetimes(timezones=_zones | st.none()))
    | json_values
)
# endsAt: "no end" as AlertManager and Grafana write it, or a real end.
ends = st.sampled_from(["0001-01-01T00:00:00Z", None]) | fresh_times | unfresh_times


def some_of(draw: st.DrawFn, odds: int) -> bool:
    """True about once in `odds` draws (never in the simplest example, nor when shrunk)."""
    return draw(st.integers(1, odds)) == odds


@st.composite
def alert_labels(draw: st.DrawFn, texts: Texts, clean: bool) -> Any:
    if not clean and some_of(draw, 20):
        return draw(json_values)
    found: dict[str, Any] = {f"fuzz_k{i}": "v" for i in range(draw(texts.label_bulk))}
    found.update(draw(st.dictionaries(texts.key, texts.label, max_size=4)))
    if not clean and some_of(draw, 10):
        found[draw(texts.key)] = draw(json_values)  # not a string
    if clean or not some_of(draw, 15):
        found["alertname"] = draw(texts.name)
    found["severity"] = "info"  # the alert processor filters it: never an incident
    if clean and isinstance(found.get("cluster"), str):
        # A cluster is named within ResourceRef's 253 characters; what a longer cluster
        # label should get is the gateway's to decide (see FOUND below).
        found["cluster"] = found["cluster"][:MAX_CLUSTER]
    found.pop(FUZZ_LABEL, None)
    return found


@st.composite
def alert_annotations(draw: st.DrawFn, texts: Texts, clean: bool) -> Any:
    if not clean and some_of(draw, 20):
        return draw(json_values)
    found: dict[str, Any] = {f"fuzz_a{i}": "v" for i in range(draw(texts.annotation_bulk))}
    found.update(draw(st.dictionaries(texts.key, texts.annotation, max_size=3)))
    return found


ALERT_FIELDS = ["status", "labels", "annotations", "startsAt", "endsAt", "generatorURL"]
GRAFANA_FIELDS = ["values", "valueString", "dashboardURL", "panelURL", "silenceURL", "imageURL"]
STATUSES = ["firing", "firing", "resolved"]
statuses = st.sampled_from(STATUSES) | st.sampled_from(["FIRING", "Resolved", "", "ok"])


@st.composite
def alerts(draw: st.DrawFn, grafana: bool, clean: bool) -> Any:
    """One alert of a webhook. `clean`: within every limit, so it must be accepted.
    Otherwise hostile: strings with NUL, surrogates or over the limits, odd timestamps,
    fields of a wrong type or missing; sometimes not an object at all."""
    texts = CLEAN if clean else HOSTILE
    if not clean and some_of(draw, 30):
        return draw(json_values)
    alert: dict[str, Any] = {
        "status": draw(st.sampled_from(STATUSES) if clean else statuses),
        "labels": draw(alert_labels(texts, clean)),
        "annotations": draw(alert_annotations(texts, clean)),
        "startsAt": draw(
            fresh_times | unfresh_times if clean or draw(st.booleans()) else odd_times
        ),
    }
    if draw(st.booleans()):
        alert["endsAt"] = draw(ends if clean else ends | odd_times)
    if draw(st.booleans()):
        alert["generatorURL"] = draw(texts.url)
    if draw(st.booleans()):
        alert["fingerprint"] = draw(texts.source_fingerprint)
    if grafana:
        number = st.floats() | st.integers(-(2**53), 2**53)
        grafana_fields: dict[str, st.SearchStrategy[Any]] = {
            "values": st.none()
            | st.dictionaries(texts.any, number, max_size=3)
            | st.builds(
                lambda n: {f"B{i}": float(i) for i in range(n)},
                st.sampled_from([MAX_PAIRS] if clean else [MAX_PAIRS, MAX_PAIRS + 1]),
            ),
            "valueString": texts.any,
            "dashboardURL": texts.url,
            "panelURL": texts.url,
            "silenceURL": texts.any | long_strings(16384, over=not clean),
            "imageURL": texts.url,
        }
        for name in draw(st.lists(st.sampled_from(GRAFANA_FIELDS), unique=True, max_size=3)):
            alert[name] = draw(grafana_fields[name])
    if draw(st.booleans()):
        # Fields nobody knows are ignored.
        alert.update(draw(st.dictionaries(texts.any, json_values, max_size=2)))
    if not clean:
        fields = ALERT_FIELDS + (GRAFANA_FIELDS if grafana else [])
        if some_of(draw, 10):
            alert[draw(st.sampled_from(fields))] = draw(json_values)
        elif some_of(draw, 9):
            alert.pop(draw(st.sampled_from(fields)), None)
    return alert


Mode = Literal["clean", "mixed", "hostile"]


@st.composite
def webhooks(draw: st.DrawFn, path: str, mode: Mode) -> Any:
    """A body for `path`. clean: every alert and field within the limits; mixed: a well
    formed body whose alerts are each clean or hostile; hostile: anything goes, the
    version of the other route or a wrong one, no alerts or over the 1000 allowed, the
    webhook's own fields odd or of a wrong type, some missing."""
    grafana = path == GRAFANA_PATH
    hostile = mode == "hostile"
    body: dict[str, Any] = {
        "version": draw(
            st.sampled_from([VERSION_OF[path]] * 4 + ["4", "1", "3", "", " 4", None, 4, 1])
            if hostile
            else st.just(VERSION_OF[path])
        ),
        "status": draw(statuses if hostile else st.sampled_from(STATUSES)),
    }
    many = draw(st.integers(1, 150))
    if many == 150:
        # One problem repeated, as many times as allowed (and once more when hostile): the
        # first is accepted, the others are its duplicates. Rare: it takes seconds.
        one = draw(alerts(grafana, clean=not hostile))
        if isinstance(one, dict) and isinstance(one.get("labels"), dict):
            kept = {k: v for k, v in one["labels"].items() if not k.startswith("fuzz_k")}
            one["labels"] = kept | {"namespace": "fuzz", "pod": "fuzz-bulk"}
        body["alerts"] = [copy.deepcopy(one) for _ in range(MAX_ALERTS + hostile)]
    elif hostile and many >= 140:
        body["alerts"] = draw(st.sampled_from([[], None]) | json_values)
    else:
        element = (
            st.booleans().flatmap(lambda clean: alerts(grafana, clean))
            if mode == "mixed"
            else alerts(grafana, clean=mode == "clean")
        )
        body["alerts"] = draw(st.lists(element, min_size=1, max_size=4))
    texts = HOSTILE if hostile else CLEAN
    optional: dict[str, st.SearchStrategy[Any]] = {
        "receiver": texts.any,
        "groupKey": texts.any,
        "externalURL": texts.url,
        "truncatedAlerts": st.integers(0, 2**63)
        if not hostile
        else st.integers() | st.just(10**30),
        "groupLabels": st.dictionaries(texts.key, texts.label, max_size=3),
        "commonLabels": st.dictionaries(texts.key, texts.label, max_size=3),
        "commonAnnotations": st.dictionaries(texts.key, texts.annotation, max_size=3),
    }
    if grafana:
        optional |= {
            "orgId": st.integers(),
            "title": texts.any,
            "state": texts.any,
            "message": texts.any,
        }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=4)):
        body[name] = draw(json_values if hostile and some_of(draw, 6) else optional[name])
    if draw(st.booleans()):
        body.update(
            draw(
                st.dictionaries(texts.any.filter(lambda k: k not in body), json_values, max_size=2)
            )
        )
    if hostile and some_of(draw, 15):
        body.pop(draw(st.sampled_from(["version", "status", "alerts"])), None)
    return body


def json_headers() -> dict[str, str]:
    return {"Authorization": AUTH, "Content-Type": "application/json"}


def encode(body: Any, ensure_ascii: bool) -> bytes:
    # A lone surrogate is valid JSON as an escape (ensure_ascii); raw, it is not UTF-8.
    return json.dumps(body, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


# -- the tests -------------------------------------------------------------------------------


@fuzzing(250)
@given(path=st.sampled_from(ROUTES), body=json_values, ensure_ascii=st.booleans())
async def test_any_json_value_is_refused_or_accepted_whole(
    edge: Edge, path: str, body: Any, ensure_ascii: bool
) -> None:
    await exchange(
        edge,
        "any_json",
        path,
        encode(body, ensure_ascii),
        json_headers(),
        fuzz_ids=[],
        alerts=alert_count(body),
    )


@st.composite
def addressed_webhooks(draw: st.DrawFn) -> tuple[str, Mode, Any]:
    path = draw(st.sampled_from(ROUTES))
    mode: Mode = draw(st.sampled_from(["clean", "mixed", "hostile"]))
    return path, mode, draw(webhooks(path, mode))


@fuzzing(700)
@given(request=addressed_webhooks(), ensure_ascii=st.booleans())
async def test_webhook_shaped_bodies_are_refused_or_accepted_whole(
    edge: Edge, request: tuple[str, Mode, Any], ensure_ascii: bool
) -> None:
    path, mode, generated = request
    body = render(generated)
    fuzz_ids = mark(body)
    await exchange(
        edge,
        f"webhooks/{mode}",
        path,
        encode(body, ensure_ascii),
        json_headers(),
        fuzz_ids=fuzz_ids,
        alerts=alert_count(body),
        acceptable=mode == "clean",
    )


CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/json; charset=latin-1",
    "application/json;;;",
    "application/jsonx",
    "application/json-patch+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/plain",
    "text/json",
    "*/*",
    "",
]
AUTHORIZATIONS = [AUTH] * 8 + [
    "",
    "Bearer",
    "Bearer ",
    f"bearer {TOKEN}",
    f"Basic {TOKEN}",
    "Bearer x",
]


def _nested(depth: int, opening: str, closing: str, closed: bool) -> bytes:
    """A webhook whose labels are `depth` levels deep (and, unless `closed`, never end)."""
    inner = opening * depth + ("null" + closing * depth if closed else "")
    return (
        '{"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": '
        + inner
        + ', "startsAt": "2026-01-01T00:00:00Z"}]}'
    ).encode()


@dataclass(frozen=True)
class Raw:
    path: str
    content: bytes
    headers: dict[str, str]
    fuzz_ids: list[str]
    alerts: int | None


@st.composite
def raw_requests(draw: st.DrawFn) -> Raw:
    """Bytes that are not JSON, not UTF-8, or JSON in another encoding, cut, flipped or
    nested too deep; with odd content types and credentials."""
    path = draw(st.sampled_from(ROUTES))
    fuzz_ids: list[str] = []
    count: int | None = None
    kind = draw(st.sampled_from(["bytes", "encoded", "damaged", "nested", "numbers"]))
    if kind == "bytes":
        content = draw(st.binary(max_size=256))
    elif kind == "nested":
        content = _nested(
            draw(st.sampled_from([1, 32, 500, 1000, 5000, 100_000])),
            *draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"alertname": [', "]}")])),
            draw(st.booleans()),
        )
    elif kind == "numbers":
        number = draw(
            st.sampled_from(
                ["1e999999", "-1e999999", "9" * 5000, "NaN", "-Infinity", "0x10", "01", "1.", "--1"]
            )
        )
        content = (
            f'{{"version": "{VERSION_OF[path]}", "status": "firing", "truncatedAlerts": {number},'
            f' "orgId": {number}, "alerts": []}}'
        ).encode()
    else:
        body = render(draw(webhooks(path, draw(st.sampled_from(["clean", "mixed"])))))
        fuzz_ids = mark(body)
        count = alert_count(body)
        text = json.dumps(body, ensure_ascii=draw(st.booleans()))
        codec = draw(
            st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32", "latin-1"])
        )
        content = text.encode(codec, "surrogatepass" if codec.startswith("utf") else "replace")
        if kind == "damaged" and content:
            how = draw(st.sampled_from(["cut", "flip", "prefix", "suffix"]))
            at = draw(st.integers(0, len(content) - 1))
            if how == "cut":
                content = content[:at]
            elif how == "flip":
                flipped = content[at] ^ draw(st.integers(1, 255))
                content = content[:at] + bytes([flipped]) + content[at + 1 :]
            elif how == "prefix":
                content = (
                    draw(st.sampled_from([b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b" ", b")]}'\n"]))
                    + content
                )
            else:
                content += draw(st.sampled_from([b"\x00", b",", b"}", b" ", b"\xc3", b"{}"]))
    headers = {"Content-Type": draw(st.sampled_from(CONTENT_TYPES))}
    authorization = draw(st.sampled_from(AUTHORIZATIONS))
    if authorization:
        headers["Authorization"] = authorization
    if some_of(draw, 10):
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "br", "identity"]))
    return Raw(path, content, headers, fuzz_ids, count)


@fuzzing(350)
@given(request=raw_requests())
async def test_raw_bytes_and_odd_headers_are_refused_or_accepted_whole(
    edge: Edge, request: Raw
) -> None:
    await exchange(
        edge,
        "raw",
        request.path,
        request.content,
        request.headers,
        fuzz_ids=request.fuzz_ids,
        alerts=request.alerts,
    )


# What the fuzzing found, kept as plain cases so that every run tries them. Each is a
# well formed webhook but for the one value named.
def _one_alert(path: str, **changes: Any) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "status": "firing",
        "labels": {"alertname": "FuzzFound", "severity": "info"},
        "annotations": {},
        "startsAt": Recent(0, "z"),
    }
    for name, value in changes.items():
        if name in ("labels", "annotations"):
            alert[name] |= value
        else:
            alert[name] = value
    return {"version": VERSION_OF[path], "status": "firing", "alerts": [alert]}


FOUND = {
    # PostgreSQL keeps no NUL in text, nor "\u0000" in jsonb.
    "nul-in-label-value": (ALERTMANAGER_PATH, {"labels": {"x": f"a{NUL}b"}}),
    "nul-in-label-key": (ALERTMANAGER_PATH, {"labels": {f"x{NUL}": "a"}}),
    "nul-in-alertname": (ALERTMANAGER_PATH, {"labels": {"alertname": f"Fuzz{NUL}"}}),
    "nul-in-annotation": (ALERTMANAGER_PATH, {"annotations": {"summary": NUL}}),
    "nul-in-generator-url": (ALERTMANAGER_PATH, {"generatorURL": NUL}),
    "nul-in-grafana-value-string": (GRAFANA_PATH, {"valueString": NUL}),
    # A lone surrogate is valid JSON ("\ud800") but no UTF-8, so no protobuf string.
    "surrogate-in-label-value": (ALERTMANAGER_PATH, {"labels": {"x": "\ud800"}}),
    "surrogate-in-label-key": (ALERTMANAGER_PATH, {"labels": {"\udfff": "x"}}),
    "surrogate-in-annotation": (GRAFANA_PATH, {"annotations": {"summary": "a\ud800"}}),
    # In year 9999 west of UTC, the instant in UTC is in year 10000.
    "ends-after-year-9999-in-utc": (ALERTMANAGER_PATH, {"endsAt": "9999-12-31T23:59:59-05:00"}),
    "starts-after-year-9999-in-utc": (
        ALERTMANAGER_PATH,
        {"startsAt": "9999-12-31T23:59:59-00:01"},
    ),
    # Within the 4096 characters of a label value, beyond the 2704 bytes of a btree entry
    # (the cluster is in gateway.fingerprints' and gateway.storms' indexes).
    "long-cluster-label": (
        ALERTMANAGER_PATH,
        {"labels": {"cluster": _noise(0, 2800, ALPHABETS[0])}},
    ),
}


@pytest.mark.parametrize(("path", "changes"), list(FOUND.values()), ids=list(FOUND))
async def test_what_the_fuzzing_found_is_refused_or_accepted_whole(
    edge: Edge, path: str, changes: dict[str, Any]
) -> None:
    body = render(_one_alert(path, **changes))
    await exchange(
        edge,
        "found",
        path,
        encode(body, ensure_ascii=True),
        json_headers(),
        fuzz_ids=mark(body),
        alerts=1,
    )
