"""The real grpcurl binary against every service over mTLS, running exactly the command
lines that README.md shows operators."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.registry import protocol
from kubernaut.runtime.settings import default_state_dir
from tests.fixtures.kubernaut import InProcessStack

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- grpcurl-begin -->\s*```sh\n(.*?)```\s*<!-- grpcurl-end -->", re.S)
ADDRESS = re.compile(r"^localhost:(\d+)$")


def readme_grpcurl_lines() -> list[str]:
    match = BLOCK.search(README.read_text())
    assert match, "README.md lost its grpcurl block"
    return [line for line in match.group(1).splitlines() if line.startswith("grpcurl ")]


@pytest.fixture(scope="session")
def grpcurl() -> str:
    state_bin = Path(os.environ.get("KUBERNAUT_STATE_DIR", default_state_dir())) / "bin"
    found = shutil.which("grpcurl", path=f"{state_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, "grpcurl is not installed: run `make setup` (scripts/setup.sh builds it)"
    return found


def test_the_readme_covers_every_service() -> None:
    lines = readme_grpcurl_lines()
    for service in ServiceName:
        port = f"localhost:{service.default_grpc_port}"
        mine = [line for line in lines if f" {port} " in f"{line} "]
        assert any(line.endswith(" list") for line in mine), service
        assert any(" describe " in line for line in mine), service
        assert any(f"{protocol(service).full_name}/" in line for line in mine), service


@pytest.mark.parametrize("line", readme_grpcurl_lines())
async def test_readme_grpcurl_line(
    stack: InProcessStack, pki: Path, grpcurl: str, line: str
) -> None:
    by_default_port = {service.default_grpc_port: service for service in ServiceName}
    # What the README's `NOW=$(date -u ...)` line gives the shell.
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    args: list[str] = []
    service = None
    for token in shlex.split(line)[1:]:
        token = token.replace("$NOW", now)
        if token == "$TLS":
            args += [
                "-cacert",
                str(pki / "ca.crt"),
                "-cert",
                str(pki / "operator.crt"),
                "-key",
                str(pki / "operator.key"),
            ]
        elif match := ADDRESS.match(token):
            service = by_default_port[int(match.group(1))]
            args.append(stack.addresses[service])
        else:
            args.append(token)
    assert service is not None, line
    # The services run on this test's event loop: wait for grpcurl without blocking it.
    process = await asyncio.create_subprocess_exec(
        grpcurl, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"{line}\n{stderr.decode()}"
    output = stdout.decode()
    full_name = protocol(service).full_name
    if line.endswith(" list"):
        assert full_name in output.split()
    elif " describe " in line:
        assert "service" in output or "message" in output
    else:
        reply = json.loads(output or "{}")
        assert isinstance(reply, dict)
        # Each README call shows a real result, not an empty reply.
        assert reply, f"{line} answered nothing"
        # An example alert the gateway refuses (stale, say) shows operators nothing useful.
        assert "REFUSED" not in output, output
