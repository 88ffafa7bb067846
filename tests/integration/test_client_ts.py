"""The TypeScript client as README.md shows it: examples/ts/submit_and_list.ts, compiled by tsc
and run by node with gen/ts (the @kubernaut/api package) and @connectrpc/connect-node's gRPC
transport, submits an alert to the in-process stack over mTLS as the operator (the dev CA's
certificate) and prints the incident it opened, which storage then holds."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from kubernaut.devstack.processes import free_port
from kubernaut.runtime.names import OPERATOR_ACCOUNT, ServiceName
from tests.fixtures.kubernaut import InProcessStack, check_example_incident

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ts"
# scripts/setup.sh links node_modules to package-lock.json's packages.
TSC = ROOT / "node_modules" / ".bin" / "tsc"


async def run(*args: str | Path, timeout: float) -> tuple[int, str, str]:
    """The services run on this test's event loop: wait for the process without blocking it."""
    process = await asyncio.create_subprocess_exec(
        *map(str, args), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def test_the_package_asks_for_the_runtime_it_was_generated_against() -> None:
    manifest = json.loads((ROOT / "gen" / "ts" / "package.json").read_text())
    lock = json.loads((ROOT / "package-lock.json").read_text())
    generator = lock["packages"]["node_modules/@bufbuild/protoc-gen-es"]["version"]
    assert manifest["name"] == "@kubernaut/api"
    assert manifest["dependencies"] == {"@bufbuild/protobuf": f"^{generator}"}
    assert lock["packages"]["node_modules/@bufbuild/protobuf"]["version"] == generator


@pytest.fixture(scope="module")
async def example() -> list[str]:
    """The command that runs the example, compiled as README.md says (beside its source)."""
    node = shutil.which("node")
    assert node, "node is not installed (Node.js 20 or newer)"
    assert TSC.exists(), "tsc is not installed: run `make setup` (scripts/setup.sh)"
    code, stdout, stderr = await run(TSC, "-p", EXAMPLE, timeout=120)
    assert code == 0, f"tsc:\n{stdout}\n{stderr}"
    return [node, str(EXAMPLE / "submit_and_list.js")]


def operator_tls(pki: Path) -> list[str | Path]:
    key = pki / f"{OPERATOR_ACCOUNT}.key"
    return ["--ca", pki / "ca.crt", "--cert", pki / f"{OPERATOR_ACCOUNT}.crt", "--key", key]


async def test_the_example_submits_an_alert_and_reads_its_incident(
    stack: InProcessStack, pki: Path, example: list[str]
) -> None:
    code, stdout, stderr = await run(
        *example,
        "--gateway",
        stack.addresses[ServiceName.GATEWAY],
        "--storage",
        stack.addresses[ServiceName.STORAGE],
        *operator_tls(pki),
        timeout=120,
    )
    assert code == 0, f"{stdout}\n{stderr}"
    assert stdout.startswith("gateway: ACCEPTED"), stdout
    await check_example_incident(stack, stdout)


async def test_the_example_says_why_it_failed(pki: Path, example: list[str]) -> None:
    code, stdout, stderr = await run(
        *example, "--gateway", f"localhost:{free_port()}", *operator_tls(pki), timeout=60
    )
    assert code == 1, f"{stdout}\n{stderr}"
    assert stderr.startswith("submit_and_list: [unavailable] connect ECONNREFUSED"), stderr
