"""Weaviate on loopback: a real vector database for the tests (and, later, the dev stack).

The binary is Weaviate's own `cmd/weaviate-server`, built from its Go module by
scripts/build-weaviate.sh (`make setup`) and linked into `<state_dir>/bin/weaviate-server`.
It runs as a single-node cluster with its data under `<state_dir>/weaviate-data`,
anonymous access, no modules (no vectorizer: callers bring their own vectors) and no
telemetry. Weaviate is configured by environment variables only, and the child gets a
clean environment (a stray CLUSTER_* or module key of ours never reaches it).

Every port it listens on is a free loopback port picked at each launch (so that parallel
test workers never meet on Weaviate's fixed defaults): the REST API (`--port`), the public
gRPC API (GRPC_PORT), memberlist gossip (CLUSTER_GOSSIP_BIND_PORT, TCP and UDP), the
cluster data API (CLUSTER_DATA_BIND_PORT), Raft (RAFT_PORT) and Raft's internal RPC
(RAFT_INTERNAL_RPC_PORT). The Go profiler (:6060 by default) is turned off, Prometheus
metrics (:2112) stay off. The REST API, gossip and Raft bind 127.0.0.1; Weaviate binds
the gRPC and cluster data ports on every interface (it has no setting for their host).
"""

from __future__ import annotations

import http.client
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernaut.devstack.daemon import Daemon
from kubernaut.devstack.kube import default_bin_dir
from kubernaut.devstack.processes import LOOPBACK, free_ports, port_open

__all__ = [
    "WEAVIATE_PROGRAM",
    "Weaviate",
    "WeaviateError",
    "default_weaviate_bin",
]

# What a pid's cmdline contains while it is ours (as stack.json records programs).
WEAVIATE_PROGRAM = "weaviate-server"
# The single node's name (memberlist and Raft); any name works for one node.
NODE_NAME = "node1"
# Passed through from our environment: what a Go program needs to run, nothing of Weaviate's.
_PASSED_ENV = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ")


class WeaviateError(RuntimeError):
    """Weaviate is missing, exited or did not become ready; the message names its log."""


def default_weaviate_bin() -> Path:
    """`weaviate-server` in the dev stack's bin directory, where build-weaviate.sh links it
    beside the Kubernetes binaries: `$KUBERNAUT_K8S_BIN_DIR`, else `<state_dir>/bin` (read
    now: tests that point KUBERNAUT_STATE_DIR elsewhere later keep the real build)."""
    return default_bin_dir() / WEAVIATE_PROGRAM


class Weaviate(Daemon):
    """`weaviate-server --host 127.0.0.1 --port <http> --scheme http`, one node.

    `port` is the REST API's (0: a free one at each launch); every other port Weaviate
    opens gets its own free port at each launch. `max_procs` bounds its CPU (GOMAXPROCS)
    and `memory_limit` (bytes, None: none) is Go's soft memory limit (GOMEMLIMIT).
    `env` adds to (and overrides) the Weaviate settings."""

    name = "weaviate"
    error = WeaviateError
    # Go's "listen tcp 127.0.0.1:N: bind: address already in use" (any of its ports).
    port_taken = "address already in use"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        binary: Path | None = None,
        *,
        port: int = 0,
        start_timeout: float = 60.0,
        max_procs: int = 2,
        memory_limit: int | None = None,
        query_defaults_limit: int = 25,
        env: dict[str, str] | None = None,
    ) -> None:
        state = Path(state_dir).expanduser().resolve()
        super().__init__(state / "weaviate.log", port, start_timeout, cwd=state)
        self.state_dir = state
        self.data_dir = state / "weaviate-data"
        self.binary = binary or default_weaviate_bin()
        self.max_procs = max_procs
        self.memory_limit = memory_limit
        self.query_defaults_limit = query_defaults_limit
        self.extra_env = dict(env or {})
        self._ports: dict[str, int] = {}

    @property
    def http_port(self) -> int:
        """The REST API's port (only after `start()`)."""
        return self.port

    @property
    def grpc_port(self) -> int:
        """The public gRPC API's port, which the v4 Python client also needs."""
        return self._port_of("GRPC_PORT")

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        """The REST API: `<url>/v1/...`; only after `start()`."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ports(self) -> dict[str, int]:
        """Every port of this launch by the variable that sets it (HTTP_PORT: --port)."""
        return {"HTTP_PORT": self.port, **self._ports}

    def _port_of(self, variable: str) -> int:
        if self._port is None or variable not in self._ports:
            raise RuntimeError("weaviate is not started")
        return self._ports[variable]

    def environment(self, ports: dict[str, int]) -> dict[str, str]:
        """The child's whole environment for one launch with these ports."""
        env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}
        env.update(
            {
                "PERSISTENCE_DATA_PATH": str(self.data_dir),
                "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
                "AUTHORIZATION_ADMINLIST_ENABLED": "false",
                "DEFAULT_VECTORIZER_MODULE": "none",
                "ENABLE_MODULES": "",
                "QUERY_DEFAULTS_LIMIT": str(self.query_defaults_limit),
                "DISABLE_TELEMETRY": "true",
                # Its pprof server would take :6060 on every interface (a second Weaviate
                # logs the clash and goes on).
                "GO_PROFILING_DISABLE": "true",
                "PROMETHEUS_MONITORING_ENABLED": "false",
                # LIMIT_RESOURCES would set GOMAXPROCS to all cores but one and a memory
                # limit of 80% of the machine's: GOMAXPROCS (and GOMEMLIMIT) say it here.
                "LIMIT_RESOURCES": "false",
                "GOMAXPROCS": str(self.max_procs),
                "CLUSTER_HOSTNAME": NODE_NAME,
                # Memberlist, Raft and its RPC server bind here; not CLUSTER_IN_LOCALHOST,
                # which makes Raft's RPC port its Raft port + 1 instead of ours.
                "CLUSTER_BIND_ADDR": LOOPBACK,
                "RAFT_JOIN": f"{NODE_NAME}:{ports['RAFT_INTERNAL_RPC_PORT']}",
                "RAFT_BOOTSTRAP_EXPECT": "1",
                # Raft's own timeouts (heartbeat 1 s) rather than Weaviate's 5x default,
                # meant for networks between nodes: the lone node elects itself in about a
                # second, and the server is ready in ~2 s instead of ~10 s.
                "RAFT_TIMEOUTS_MULTIPLIER": "1",
                "LOG_LEVEL": "info",
                "LOG_FORMAT": "text",
                **{variable: str(port) for variable, port in ports.items()},
            }
        )
        if self.memory_limit is not None:
            env["GOMEMLIMIT"] = str(self.memory_limit)
        env.update(self.extra_env)
        return env

    def _prepare(self) -> None:
        if not self.binary.exists():
            raise WeaviateError(
                f"{self.binary} is missing: run scripts/build-weaviate.sh (or `make setup`), "
                "which builds Weaviate from its Go module"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self, port: int) -> list[str]:
        # Picked per launch, so that a retry after "address already in use" moves them too.
        names = (
            "GRPC_PORT",
            "CLUSTER_GOSSIP_BIND_PORT",
            "CLUSTER_DATA_BIND_PORT",
            "RAFT_PORT",
            "RAFT_INTERNAL_RPC_PORT",
        )
        while True:
            picked = free_ports(len(names))
            if port not in picked:
                break
        self._ports = dict(zip(names, picked, strict=True))
        return [
            str(self.binary),
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--scheme",
            "http",
        ]

    def _log_header(self, command: Sequence[str], port: int) -> str | None:
        ports = " ".join(f"{name}={number}" for name, number in self._ports.items())
        return f"--- {' '.join(command)} ({ports})\n"

    def _popen_options(self) -> dict[str, Any]:
        return {"env": self.environment(self._ports)}

    def _ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        # Ready once the schema (Raft) is up and the node serves; the gRPC API listens then.
        return _http_ok(port, "/v1/.well-known/ready") and port_open(self._ports["GRPC_PORT"])


def _http_ok(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=1.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()
