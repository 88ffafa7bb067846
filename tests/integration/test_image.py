"""The container image (Containerfile, `make image`): built here by scripts/build-image.sh
(buildah; on a Debian base that mmdebstrap makes when no registry is reachable, or reused when
its inputs are unchanged), then run by `podman run` exactly as its config says (entrypoint,
non-root user, environment) with a read-only root filesystem and a tmpfs /tmp, as the chart
runs it: it carries no build tools, parses every command the chart gives it, and one of its
services, storage, reaches SERVING on grpc.health.v1 against the session's PostgreSQL.

podman runs the image with runc and cgroupfs: bookworm's crun 1.8 refuses this machine's hybrid
cgroups, and podman's default rlimits (nofile, nproc) exceed the hard limits here, which the
runtime's setrlimit may not raise (EPERM); so they are set within them."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubernaut.devstack.processes import free_port
from kubernaut.runtime.names import EDGE_ACCOUNT, ServiceName
from tests.fixtures.postgres import fresh_database

# A cold build (the Debian base, then the locked dependencies from PyPI) runs inside the image
# fixture's setup: ~2.5 min on 2 busy cores; a warm one only hashes the inputs.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ROOT / "helm" / "kubernaut" / "generated" / "components.yaml"
# The chart's pods: runAsUser/runAsGroup in helm/kubernaut/templates/components.yaml.
CHART_UID = 10001
# Measured 764 MB on the Debian base (~620 MB of it the virtualenv: the locked dependencies
# with their bytecode), 1014 MB since scikit-learn and scipy (intelligence's clusters), the
# Weaviate and Pinecone clients, and the runbooks' CEL, JSON Schema, PyGithub and GitPython
# came in. Well above that means something that should not be there got in.
MAX_IMAGE_BYTES = 1_100_000_000
BUILD_TOOLS = ["gcc", "cc", "c++", "g++", "clang", "ld", "make", "uv", "pip", "pip3", "pip3.11"]
BASE = os.environ.get("KUBERNAUT_IMAGE_BASE", "auto")


def _podman() -> list[str]:
    podman = shutil.which("podman")
    if podman is None or shutil.which("runc") is None:
        pytest.fail("podman and runc are not installed (scripts/install-debian-packages.sh)")
    # The same storage that buildah built the image into (build-image.sh: vfs).
    return [podman, "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def _limits() -> list[str]:
    """--ulimit for nofile and nproc at most the host's hard limits (podman's defaults are
    above them here)."""
    args = []
    for name, limit, cap in (
        ("nofile", resource.RLIMIT_NOFILE, 65536),
        ("nproc", resource.RLIMIT_NPROC, 4096),
    ):
        hard = resource.getrlimit(limit)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        args += ["--ulimit", f"{name}={value}:{value}"]
    return args


def _run_args(name: str, env: dict[str, str]) -> list[str]:
    """`podman run` as the chart runs a pod: read-only root, a tmpfs /tmp (the chart's emptyDir;
    podman's --read-only mounts one), no capabilities, no privilege escalation; the host's
    network, so that loopback reaches the session's PostgreSQL."""
    args = [
        *_podman(),
        "run",
        "--rm",
        "--name",
        name,
        "--pull=never",
        "--read-only",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--network=host",
        *_limits(),
    ]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return args


@pytest.fixture(scope="module")
def image() -> str:
    """The image's in-<hash> reference: built now, or the cached build of the same inputs."""
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed (scripts/install-debian-packages.sh)")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh"), "--base", BASE, "--print-image"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/build-image.sh failed:\n{result.stderr[-6000:]}")
    print(f"image built or reused in {time.monotonic() - started:.0f} s")
    return result.stdout.strip().splitlines()[-1]


def _inspect(image: str) -> dict[str, Any]:
    out = subprocess.run(
        [*_podman(), "image", "inspect", image],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    inspected: list[dict[str, Any]] = json.loads(out)
    return inspected[0]


def test_image_config_runs_kubernaut_as_the_charts_non_root_user(image: str) -> None:
    inspected = _inspect(image)
    config = inspected["Config"]
    size = int(inspected["Size"])
    print(f"{image}: {size / 1e6:.0f} MB")
    assert config.get("Entrypoint") == ["kubernaut"]
    user, _, group = config["User"].partition(":")
    assert user == str(CHART_UID) and group == str(CHART_UID), config["User"]
    env = dict(item.split("=", 1) for item in config["Env"])
    # Nothing writes outside /tmp (the chart's emptyDir) with a read-only root filesystem.
    assert env["HOME"] == "/tmp"
    assert env["KUBERNAUT_STATE_DIR"].startswith("/tmp/")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert 0 < size < MAX_IMAGE_BYTES, f"{size / 1e6:.0f} MB"


def test_image_has_no_build_tools_and_parses_every_chart_command(image: str) -> None:
    """One container (each run copies the image on vfs storage): the user, the read-only
    root, no build tools on PATH, and `kubernaut ARGS --help` for every component's args in
    the chart's generated components.yaml (an unknown service name exits 2)."""
    components = yaml.safe_load(COMPONENTS.read_text())["components"]
    accounts = {c["account"] for c in components}
    assert accounts == {s.account for s in ServiceName} | {EDGE_ACCOUNT}
    checks = [
        "set -u",
        "id -u",
        'touch /probe 2>/dev/null && echo "root filesystem: writable"',
        'touch /tmp/probe && echo "tmp: writable"',
        # Each tool on PATH, and pip as a module of any python3 on it.
        f"for t in {' '.join(BUILD_TOOLS)}; do command -v $t && echo found $t; done",
        'python3 -m pip --version >/dev/null 2>&1 && echo "found python3 -m pip"',
        'test -x "$(command -v kubernaut)" && echo "entrypoint: $(command -v kubernaut)"',
    ]
    for c in components:
        args = shlex.join(c["args"])
        checks.append(f'kubernaut {args} --help >/dev/null 2>&1; echo "args {args}: exit $?"')
    result = subprocess.run(
        [
            *_run_args(f"kubernaut-image-check-{uuid.uuid4().hex[:8]}", {}),
            "--entrypoint",
            "/bin/sh",
            image,
            "-c",
            "\n".join(checks),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(CHART_UID)
    assert "root filesystem: writable" not in lines
    assert "tmp: writable" in lines
    assert [line for line in lines if line.startswith("found ")] == []
    assert "entrypoint: /opt/kubernaut/venv/bin/kubernaut" in lines
    for c in components:
        assert f"args {shlex.join(c['args'])}: exit 0" in lines, c["args"]


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"kubernaut-image-smoke-{uuid.uuid4().hex[:8]}"
    yield name
    # Whatever the test did: our own container, by its name.
    subprocess.run(
        [*_podman(), "rm", "--force", "--time", "0", name],
        capture_output=True,
        timeout=120,
        check=False,
    )


async def _health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        return int(reply.status)


async def test_storage_from_the_image_reaches_serving(
    image: str, postgres_dsn: str, container_name: str, tmp_path: Path
) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{grpc_port}"
    log = tmp_path / "storage.log"
    async with fresh_database(postgres_dsn) as dsn:
        env = {
            "KUBERNAUT_TRANSPORT": "insecure",
            "KUBERNAUT_DATABASE_URL": dsn,
            "KUBERNAUT_GRPC_PORT": str(grpc_port),
            "KUBERNAUT_METRICS_PORT": str(metrics_port),
            "KUBERNAUT_HEALTH_INTERVAL_SECONDS": "0.5",
        }
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *_run_args(container_name, env),
                image,
                "serve",
                "storage",
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            status = await _wait_serving(address, process, log, timeout=240)
            assert status == health_pb2.HealthCheckResponse.SERVING
        finally:
            # SIGTERM to the service (podman stop), then its drain and grace.
            stop = await asyncio.create_subprocess_exec(
                *_podman(),
                "stop",
                "--time",
                "20",
                container_name,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.wait_for(stop.wait(), 120)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                process.kill()
                await process.wait()
        print(log.read_text(errors="replace")[-3000:])
        # A clean stop: SIGTERM reached the service (the entrypoint is its process).
        assert process.returncode == 0, log.read_text(errors="replace")[-3000:]


async def _wait_serving(
    address: str, process: asyncio.subprocess.Process, log: Path, timeout: float
) -> int:
    deadline = time.monotonic() + timeout
    last: BaseException | int | None = None
    while time.monotonic() < deadline:
        if process.returncode is not None:
            pytest.fail(
                f"the container exited ({process.returncode}) before SERVING:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        try:
            last = await _health(address)
            if last == health_pb2.HealthCheckResponse.SERVING:
                return last
        except grpc.aio.AioRpcError as error:
            last = error
        await asyncio.sleep(0.5)
    pytest.fail(
        f"storage was not SERVING within {timeout:.0f} s (last: {last!r}):\n"
        + log.read_text(errors="replace")[-4000:]
    )
