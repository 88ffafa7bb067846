"""kubernaut-api as an integrator gets it: its wheel (clients/python) alone in a fresh
virtualenv, without Kubernaut, runs examples/python/submit_and_list.py against the in-process
stack over mTLS, as the operator (the dev stack's shared certificate)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kubernaut.runtime.names import OPERATOR_ACCOUNT, ServiceName
from tests.fixtures.kubernaut import InProcessStack, check_example_incident

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "python" / "submit_and_list.py"
# Nothing of this checkout or of the project's virtualenv leaks into the integrator's.
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Outside the checkout: `python -c` would import its kubernaut/ from the current directory."""
    return subprocess.run(
        [str(arg) for arg in args], cwd="/", env=ENV, capture_output=True, text=True, check=check
    )


@pytest.fixture(scope="session")
def api_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtualenv holding kubernaut-api's wheel and its dependencies:
    KUBERNAUT_API_WHEEL's, else one built here from clients/python."""
    uv = shutil.which("uv")
    assert uv, "uv is not installed: run `make setup`"
    work = tmp_path_factory.mktemp("kubernaut-api")
    wheel = os.environ.get("KUBERNAUT_API_WHEEL")
    if not wheel:
        run(uv, "build", "--quiet", "--wheel", "--out-dir", work, ROOT / "clients" / "python")
        (built,) = work.glob("kubernaut_api-*.whl")
        wheel = str(built)
    venv = work / "venv"
    run(uv, "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    run(uv, "pip", "install", "--quiet", "--python", python, wheel)
    return python


def test_the_wheel_holds_the_api_and_the_helper_but_no_product(api_python: Path) -> None:
    modules = [f"kubernaut.{s.value}.v1.{s.value}_pb2_grpc" for s in ServiceName]
    modules += ["kubernaut.api.client", "buf.validate.validate_pb2"]
    run(api_python, "-c", f"import {', '.join(modules)}")
    product = run(api_python, "-c", "import kubernaut.runtime", check=False)
    assert "No module named 'kubernaut.runtime'" in product.stderr, product.stderr


async def test_the_example_submits_an_alert_and_reads_its_incident(
    stack: InProcessStack, pki: Path, api_python: Path
) -> None:
    # The services run on this test's event loop: wait for the example without blocking it.
    process = await asyncio.create_subprocess_exec(
        api_python,
        EXAMPLE,
        "--gateway",
        stack.addresses[ServiceName.GATEWAY],
        "--storage",
        stack.addresses[ServiceName.STORAGE],
        "--certs",
        pki,
        "--name",
        OPERATOR_ACCOUNT,
        cwd="/",
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, f"{stdout.decode()}\n{stderr.decode()}"
    await check_example_incident(stack, stdout.decode())
