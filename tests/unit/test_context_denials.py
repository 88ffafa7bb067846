"""A denial from an API server that has just started (its RBAC caches still filling) is read
again a few times before context_api answers that its identity may not read."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from kubernaut.services.context_api.server import through_brief_denials


class Reads:
    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        status = self.answers.pop(0)
        if status != 200:
            raise ApiException(status=status, reason="Forbidden")
        return "context"


async def test_a_brief_denial_is_read_through() -> None:
    reads = Reads(403, 401, 200)
    assert await through_brief_denials(reads, delays=(0, 0, 0)) == "context"
    assert reads.calls == 3


async def test_a_denial_that_stands_is_raised_after_the_last_pause() -> None:
    reads = Reads(403, 403, 403, 403, 200)
    with pytest.raises(ApiException) as denied:
        await through_brief_denials(reads, delays=(0, 0, 0))
    assert denied.value.status == 403 and reads.calls == 4


async def test_other_errors_are_not_read_again() -> None:
    reads = Reads(404, 200)
    with pytest.raises(ApiException) as missing:
        await through_brief_denials(reads, delays=(0, 0, 0))
    assert missing.value.status == 404 and reads.calls == 1
