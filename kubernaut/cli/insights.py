"""`kubernaut insights`: what Kubernaut learned from a window of its history (a week by
default): recurring incidents whose fix does not hold, the least effective actions, the
noisiest alerts and the time saved; read over gRPC from intelligence, printed as text
tables or Markdown."""

from __future__ import annotations

import re
import sys

import grpc
from kubernaut.intelligence.v1 import intelligence_pb2
from kubernaut.intelligence.v1.intelligence_pb2_grpc import IntelligenceServiceStub

from kubernaut.runtime.clients import Clients
from kubernaut.services.intelligence.render import render_markdown, render_text

_WINDOW = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# GetInsights' limit (90 days).
MAX_WINDOW_SECONDS = 90 * 86400


class BadWindow(ValueError):
    pass


def parse_window(text: str) -> int:
    """Whole seconds of a duration: 7d, 36h, 90m, 3600s or 3600."""
    match = _WINDOW.match(text.strip())
    if match is None:
        raise BadWindow(f"{text!r} is not a duration (7d, 36h, 90m or seconds)")
    seconds = int(float(match[1]) * _UNIT_SECONDS[match[2]])
    if not 0 < seconds <= MAX_WINDOW_SECONDS:
        raise BadWindow(f"the window must be more than 0 and at most 90 days, not {text!r}")
    return seconds


async def show_insights(clients: Clients, window_seconds: int, top: int, markdown: bool) -> int:
    try:
        reply = await clients.stub(IntelligenceServiceStub).GetInsights(
            intelligence_pb2.GetInsightsRequest(window_seconds=window_seconds, top=top)
        )
    except grpc.aio.AioRpcError as error:
        print(f"kubernaut insights: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    render = render_markdown if markdown else render_text
    sys.stdout.write(render(reply.report))
    return 0
