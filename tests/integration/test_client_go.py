"""The Go client module (gen/go) as an integrator uses it: every generated package compiles, and
examples/go (its own module, gen/go by a `replace`) submits an alert to the in-process stack and
reads its incident over mTLS, as the operator (the dev stack's shared certificate). Go's build
and module caches live under the state directory, so a warm run builds nothing."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

from kubernaut.runtime.names import ServiceName
from kubernaut.runtime.settings import default_state_dir
from tests.fixtures.kubernaut import InProcessStack, check_example_incident

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GEN_GO = ROOT / "gen" / "go"
EXAMPLE = ROOT / "examples" / "go"
PROTOVALIDATE = "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go"


def go_env() -> dict[str, str]:
    state = Path(os.environ.get("KUBERNAUT_STATE_DIR", default_state_dir()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNAUT_")}
    env.update(
        GOCACHE=str(state / "cache" / "go-build"),
        GOMODCACHE=str(state / "cache" / "go-mod"),
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=readonly -buildvcs=false",
    )
    return env


async def run(
    *args: str | Path, cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int, str, str]:
    """The services run on this test's event loop: wait for the process without blocking it."""
    process = await asyncio.create_subprocess_exec(
        *map(str, args),
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.fixture(scope="module")
def go() -> str:
    found = shutil.which("go")
    assert found, "go is not installed (Go 1.25 or newer; scripts/setup.sh needs it too)"
    return found


@pytest.fixture(scope="module")
async def example(go: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/go, built (the first build on a machine downloads and compiles gRPC: ~1 min)."""
    binary = tmp_path_factory.mktemp("go-example") / "submit-and-list"
    code, out, err = await run(
        go, "build", "-o", binary, ".", cwd=EXAMPLE, env=go_env(), timeout=240
    )
    assert code == 0, f"go build examples/go:\n{out}{err}"
    return binary


def required_version(go_mod: Path, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (\S+)", go_mod.read_text(), re.M)
    assert match, f"{go_mod} requires no {module}"
    return match.group(1)


def test_buf_validate_comes_from_the_module_its_proto_is_printed_from() -> None:
    """gen/go imports buf/validate from the Go module tools/protodeps prints the .proto from:
    the same version, or the descriptors would disagree."""
    assert required_version(GEN_GO / "go.mod", PROTOVALIDATE) == required_version(
        ROOT / "tools" / "protodeps" / "go.mod", PROTOVALIDATE
    )
    assert not (GEN_GO / "buf").exists()


async def test_every_generated_package_compiles(go: str) -> None:
    code, out, err = await run(go, "vet", "./...", cwd=GEN_GO, env=go_env(), timeout=240)
    assert code == 0, f"go vet gen/go:\n{out}{err}"
    packages = {p.parent.relative_to(GEN_GO).parts[1] for p in GEN_GO.glob("kubernaut/*/v1/*.go")}
    assert packages == {service.value for service in ServiceName} | {"common"}


async def test_the_example_is_gofmt_clean_and_vetted(go: str) -> None:
    code, goroot, err = await run(go, "env", "GOROOT", cwd=EXAMPLE, env=go_env(), timeout=60)
    assert code == 0, err
    gofmt = Path(goroot.strip()) / "bin" / "gofmt"
    code, out, err = await run(gofmt, "-l", ".", cwd=EXAMPLE, env=go_env(), timeout=60)
    assert (code, out) == (0, ""), f"gofmt -l examples/go:\n{out}{err}"
    code, out, err = await run(go, "vet", ".", cwd=EXAMPLE, env=go_env(), timeout=240)
    assert code == 0, f"go vet examples/go:\n{out}{err}"


async def test_the_example_submits_an_alert_and_prints_its_incident(
    stack: InProcessStack, pki: Path, example: Path
) -> None:
    env = go_env() | {"KUBERNAUT_CERTS_DIR": str(pki)}  # the certs from the environment
    code, out, err = await run(
        example,
        "-gateway",
        stack.addresses[ServiceName.GATEWAY],
        "-storage",
        stack.addresses[ServiceName.STORAGE],
        "-name",
        "operator",
        cwd=Path("/"),
        env=env,
        timeout=120,
    )
    assert code == 0, f"{out}\n{err}"
    assert out.startswith("gateway: ALERT_DISPOSITION_ACCEPTED"), out
    await check_example_incident(stack, out)


async def test_the_example_fails_clearly_with_a_certificate_the_services_do_not_trust(
    stack: InProcessStack, rogue_pki: Path, example: Path
) -> None:
    code, out, err = await run(
        example,
        "-gateway",
        stack.addresses[ServiceName.GATEWAY],
        "-storage",
        stack.addresses[ServiceName.STORAGE],
        "-certs",
        rogue_pki,
        cwd=Path("/"),
        env=go_env(),
        timeout=60,
    )
    assert code == 1, f"{out}\n{err}"
    assert err.startswith("submit-and-list: gateway localhost:"), err
    assert "SubmitAlerts" in err and "certificate" in err, err
