"""Real Prometheus and Alertmanager on loopback, for the local stack and tests.

The binaries come from Debian's packages (`scripts/install-debian-packages.sh`):
`prometheus` 2.42 (`/usr/bin/prometheus`, `/usr/bin/promtool`) and `prometheus-alertmanager`
0.25 (`/usr/bin/prometheus-alertmanager`, `/usr/bin/amtool`). The packages' own services are
left stopped and disabled; each `Prometheus` / `Alertmanager` here is our own child process with
its config, data and log under its `state_dir`, listening on 127.0.0.1 only.

- `Prometheus` scrapes `scrape_targets` (host:port) as job "kube-state-metrics" by default, the
  job the kubernetes-mixin selectors expect, evaluates `rule_files` and sends alerts to
  `alertmanager_url`. Rule files and the config are checked with `promtool` before start.
  With an Alertmanager, `start()` also waits (about 5 s) until Prometheus has discovered it:
  Prometheus drops alerts it evaluates before then and re-sends them only after
  `resend_delay` (ours: 5s; Prometheus' default: 1m).
  `--web.enable-lifecycle` is on, so `reload()` (POST /-/reload) picks up edited rule files
  (and, like start(), waits the ~5 s Prometheus takes to rediscover the Alertmanager).
- `Alertmanager` routes every alert to one webhook receiver (`webhook_url`, version 4 JSON
  payload, resolved notifications on). Clustering is off (`--cluster.listen-address=`), so
  nothing listens beyond the web port.
- `render_rule_file()` writes a copy of a rule file with every alert's `for:` replaced (tests
  cannot wait 15 minutes) and says so in the copy's header. `KUBERNETES_MIXIN_RULES` is the
  upstream kubernetes-mixin subset that Kubernaut handles, `KUBERNAUT_ALERTS` its alert names.
- `fetch_alerts()` / `fetch_rules()` read Prometheus' /api/v1/alerts and /api/v1/rules;
  `fetch_alertmanager_alerts()` reads Alertmanager's /api/v2/alerts.

`start()` and `stop()` block (for seconds at most); from async code call them through
`asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from kubernaut.devstack.daemon import Daemon
from kubernaut.devstack.processes import LOOPBACK

__all__ = [
    "ALERTMANAGER_BIN",
    "AMTOOL_BIN",
    "KUBERNAUT_ALERTS",
    "KUBERNETES_MIXIN_RULES",
    "KUBE_STATE_METRICS_JOB",
    "PROMETHEUS_BIN",
    "PROMTOOL_BIN",
    "RULES_DIR",
    "Alertmanager",
    "AlertmanagerAlert",
    "BlockDumper",
    "MonitoringError",
    "Prometheus",
    "PrometheusAlert",
    "PrometheusRule",
    "check_rules",
    "fetch_alertmanager_alerts",
    "fetch_alerts",
    "fetch_rules",
    "render_rule_file",
]

PROMETHEUS_BIN = Path("/usr/bin/prometheus")
PROMTOOL_BIN = Path("/usr/bin/promtool")
ALERTMANAGER_BIN = Path("/usr/bin/prometheus-alertmanager")
AMTOOL_BIN = Path("/usr/bin/amtool")

RULES_DIR = Path(__file__).resolve().parent / "rules"
KUBERNETES_MIXIN_RULES = RULES_DIR / "kubernetes-mixin.yaml"
KUBERNAUT_ALERTS: tuple[str, ...] = (
    "KubePodCrashLooping",
    "KubePodNotReady",
    "KubeDeploymentReplicasMismatch",
    "KubeDeploymentRolloutStuck",
    "KubeDeploymentGenerationMismatch",
    "KubeStatefulSetReplicasMismatch",
    "KubeStatefulSetGenerationMismatch",
    "KubeStatefulSetUpdateNotRolledOut",
    "KubeDaemonSetRolloutStuck",
    "KubeHpaMaxedOut",
    "KubeContainerWaiting",
    "KubeNodeNotReady",
    "KubePersistentVolumeFillingUp",
    "KubeJobFailed",
)
"""The alerts in `KUBERNETES_MIXIN_RULES` (KubePersistentVolumeFillingUp has two rules)."""

KUBE_STATE_METRICS_JOB = "kube-state-metrics"
"""The scrape job name the mixin's `job="kube-state-metrics"` selectors match."""

_INSTALL_HINT = (
    "run scripts/install-debian-packages.sh (Debian packages prometheus, prometheus-alertmanager)"
)
# Prometheus' duration syntax (model.ParseDuration), e.g. 5s, 1m30s, 1h.
_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
_LOG_TAIL_LINES = 30
_log = logging.getLogger(__name__)


class MonitoringError(RuntimeError):
    """A monitoring binary is missing, rejected its config, or did not start."""


# -- rule files ----------------------------------------------------------------------------


class BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL, KWOK templates) as `|` blocks, the way rule and
    Stage files are written by hand."""


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


BlockDumper.add_representer(str, _str_presenter)


def _check_duration(name: str, value: str) -> None:
    if not value or not _DURATION.match(value):
        raise ValueError(f"{name} {value!r} is not a Prometheus duration (e.g. 5s, 1m, 1h30m)")


def render_rule_file(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    for_override: str | None = None,
) -> Path:
    """Write the rules of `source` to `dest` and return `dest`.

    With `for_override` (a Prometheus duration such as "5s" or "0s"), every alerting rule's
    `for:` becomes that duration (rules without one get it too); the file's header names the
    source and lists the upstream durations it replaced. Without it, the rules are copied as
    they are. Expressions, labels and annotations are never changed.
    """
    source_path = Path(source)
    if for_override is not None:
        _check_duration("for_override", for_override)
    document = yaml.safe_load(source_path.read_text())
    if not isinstance(document, dict) or not isinstance(document.get("groups"), list):
        raise MonitoringError(f"{source_path} is not a Prometheus rule file (no 'groups' list)")
    replaced: list[str] = []
    for group in document["groups"]:
        for rule in group.get("rules") or []:
            if "alert" not in rule or for_override is None:
                continue
            replaced.append(f"{rule['alert']}={rule.get('for', '0s')}")
            rule["for"] = for_override
    header = [f"# Rendered by kubernaut.devstack.monitoring from {source_path}."]
    if for_override is not None:
        header += [
            f"# TEST VARIANT: every alert's `for:` is {for_override} here instead of the",
            "# upstream durations, so alerts fire within seconds. Upstream values were:",
            *(f"#   {item}" for item in replaced),
        ]
    else:
        header.append("# Durations are the source's own.")
    body = yaml.dump(document, Dumper=BlockDumper, sort_keys=False, width=100_000)
    dest_path = Path(dest)
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    dest_path.write_text("\n".join(header) + "\n" + body)
    return dest_path


def check_rules(*rule_files: str | os.PathLike[str], timeout: float = 30.0) -> str:
    """Run `promtool check rules` on the files; return its output, raise MonitoringError if bad."""
    _require(PROMTOOL_BIN)
    return _run_check(
        [str(PROMTOOL_BIN), "check", "rules", *map(str, rule_files)], "rule files", timeout
    )


# -- processes ------------------------------------------------------------------------------


class _Daemon(Daemon):
    """One binary run as our child on 127.0.0.1, with its config, data and log under
    `state_dir`; ready when GET /-/ready answers 200."""

    error = MonitoringError
    port_taken = "address already in use"
    log_tail_lines = _LOG_TAIL_LINES

    def __init__(self, state_dir: str | os.PathLike[str], port: int, start_timeout: float) -> None:
        state = Path(state_dir).expanduser().resolve()
        super().__init__(state / f"{self.name}.log", port, start_timeout, cwd=state)
        self.state_dir = state
        self.config_file = state / f"{self.name}.yml"
        self.data_dir = state / "data"

    # Subclasses: the config start() writes, and the checks around writing it.
    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_inputs(self) -> None:
        """Before the config is written: the binaries are there, the inputs are valid."""

    def _check_config(self) -> None:
        """After it is written: the binary's own check accepts it."""

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`; only after `start()`."""
        return f"http://127.0.0.1:{self.port}"

    def _prepare(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._check_inputs()
        self.config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self._check_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        return _http_ok(port, "/-/ready")

    def _not_ready_message(self, port: int) -> str:
        return (
            f"{self.name} did not become ready on http://127.0.0.1:{port}/-/ready within "
            f"{self._start_timeout:.0f}s; see {self.log_file}:\n{self._log_tail()}"
        )


class Prometheus(_Daemon):
    """A Prometheus server on 127.0.0.1 with its config, TSDB and log under `state_dir`.

    `scrape_targets` are `host:port` strings scraped at `/metrics` as job `scrape_job`
    (default "kube-state-metrics", with honor_labels like kube-prometheus does for it).
    `rule_files` are used in place (not copied), so editing one and calling `reload()` works.
    """

    name = "prometheus"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        scrape_targets: Sequence[str] = (),
        rule_files: Sequence[str | os.PathLike[str]] = (),
        *,
        evaluation_interval: str = "5s",
        scrape_interval: str = "5s",
        port: int = 0,
        alertmanager_url: str | None = None,
        scrape_job: str = KUBE_STATE_METRICS_JOB,
        external_labels: Mapping[str, str] | None = None,
        resend_delay: str = "5s",
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(state_dir, port, start_timeout)
        _check_duration("evaluation_interval", evaluation_interval)
        _check_duration("scrape_interval", scrape_interval)
        _check_duration("resend_delay", resend_delay)
        for target in scrape_targets:
            if "://" in target or ":" not in target:
                raise ValueError(f"scrape target {target!r} must be host:port")
        if alertmanager_url is not None:
            am = httpx.URL(alertmanager_url)
            if am.scheme not in ("http", "https") or not am.host:
                raise ValueError(
                    f"alertmanager_url {alertmanager_url!r} must be http(s)://host:port"
                )
        self.scrape_targets = list(scrape_targets)
        self.rule_files = [Path(path).expanduser().resolve() for path in rule_files]
        self.evaluation_interval = evaluation_interval
        self.scrape_interval = scrape_interval
        self.alertmanager_url = alertmanager_url
        self.scrape_job = scrape_job
        self.external_labels = dict(external_labels or {})
        self.resend_delay = resend_delay

    def config(self) -> dict[str, Any]:
        """The prometheus.yml that `start()` writes."""
        global_config: dict[str, Any] = {
            "scrape_interval": self.scrape_interval,
            "scrape_timeout": self.scrape_interval,
            "evaluation_interval": self.evaluation_interval,
        }
        if self.external_labels:
            global_config["external_labels"] = self.external_labels
        config: dict[str, Any] = {
            "global": global_config,
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [],
        }
        if self.scrape_targets:
            config["scrape_configs"].append(
                {
                    "job_name": self.scrape_job,
                    "honor_labels": True,
                    "static_configs": [{"targets": self.scrape_targets}],
                }
            )
        if self.alertmanager_url is not None:
            url = httpx.URL(self.alertmanager_url)
            target = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
            alertmanager: dict[str, Any] = {
                "scheme": url.scheme,
                "api_version": "v2",
                "static_configs": [{"targets": [target]}],
            }
            if url.path not in ("", "/"):
                alertmanager["path_prefix"] = url.path
            config["alerting"] = {"alertmanagers": [alertmanager]}
        return config

    def _check_inputs(self) -> None:
        _require(PROMETHEUS_BIN)
        _require(PROMTOOL_BIN)
        if self.rule_files:
            check_rules(*self.rule_files, timeout=self._start_timeout)

    def _check_config(self) -> None:
        _run_check(
            [str(PROMTOOL_BIN), "check", "config", str(self.config_file)],
            f"Prometheus config {self.config_file}",
            self._start_timeout,
        )

    def _command(self, port: int) -> list[str]:
        return [
            str(PROMETHEUS_BIN),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.data_dir}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.external-url=http://127.0.0.1:{port}/",
            # POST /-/reload re-reads the config and rule files (reload()).
            "--web.enable-lifecycle",
            # A firing alert is re-sent this often (default 1m). Alerts sent before the
            # Alertmanager is discovered are dropped until then. Also sets how long
            # Alertmanager keeps an alert that stops coming: 4 x max(this, evaluation_interval).
            f"--rules.alert.resend-delay={self.resend_delay}",
        ]

    def _started(self) -> None:
        if self.alertmanager_url is not None:
            self._wait_for_alertmanager()

    def _wait_for_alertmanager(self) -> None:
        """Block until Prometheus' notifier has discovered the Alertmanager.

        Prometheus applies discovered Alertmanagers at most every 5 seconds (its discovery
        manager's fixed update interval), so this takes about 5 s after start. Until then
        alerts are not delivered.
        """
        url = f"{self.url}/api/v1/alertmanagers"
        deadline = time.monotonic() + self._start_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                    active = client.get(url).json()["data"]["activeAlertmanagers"]
                    if active:
                        return
                if time.monotonic() > deadline:
                    raise MonitoringError(
                        f"Prometheus did not discover the Alertmanager {self.alertmanager_url} "
                        f"within {self._start_timeout:.0f}s; see {self.log_file}"
                    )
                time.sleep(0.1)

    def reload(self, timeout: float = 10.0) -> None:
        """Re-read the config and rule files (POST /-/reload); raise MonitoringError if rejected.

        A reload makes Prometheus forget its Alertmanagers and rediscover them about 5 s later
        (alerts evaluated meanwhile reach Alertmanager when re-sent, after `resend_delay`);
        with an Alertmanager configured, this waits for the rediscovery.
        Active alerts survive a reload when their rule keeps its group, name and labels.
        """
        response = httpx.post(f"{self.url}/-/reload", timeout=timeout)
        if response.status_code != 200:
            raise MonitoringError(
                f"Prometheus rejected the reload ({response.status_code}): "
                f"{response.text.strip()}; see {self.log_file}"
            )
        if self.alertmanager_url is not None:
            self._wait_for_alertmanager()


class Alertmanager(_Daemon):
    """An Alertmanager on 127.0.0.1 sending every alert to one webhook (payload version 4).

    Alerts are grouped by `group_by` (default: alertname and namespace); `("...",)` gives one
    notification per alert. Resolved notifications are sent (`send_resolved: true`).
    """

    name = "alertmanager"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        webhook_url: str,
        *,
        group_wait: str = "1s",
        group_interval: str = "5s",
        repeat_interval: str = "1m",
        port: int = 0,
        group_by: Sequence[str] = ("alertname", "namespace"),
        receiver_name: str = "kubernaut",
        start_timeout: float = 30.0,
        bearer_token_file: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(state_dir, port, start_timeout)
        for name, value in (
            ("group_wait", group_wait),
            ("group_interval", group_interval),
            ("repeat_interval", repeat_interval),
        ):
            _check_duration(name, value)
        url = httpx.URL(webhook_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"webhook_url {webhook_url!r} must be an http(s) URL")
        self.webhook_url = webhook_url
        # The webhook's bearer token, read by AlertManager from this file (never inlined in
        # the config it writes).
        self.bearer_token_file = Path(bearer_token_file) if bearer_token_file else None
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval
        self.group_by = list(group_by)
        self.receiver_name = receiver_name

    def config(self) -> dict[str, Any]:
        """The alertmanager.yml that `start()` writes."""
        webhook: dict[str, Any] = {"url": self.webhook_url, "send_resolved": True, "max_alerts": 0}
        if self.bearer_token_file is not None:
            webhook["http_config"] = {
                "authorization": {
                    "type": "Bearer",
                    "credentials_file": str(self.bearer_token_file.resolve()),
                }
            }
        return {
            "route": {
                "receiver": self.receiver_name,
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [
                {
                    "name": self.receiver_name,
                    "webhook_configs": [webhook],
                }
            ],
        }

    def _check_inputs(self) -> None:
        _require(ALERTMANAGER_BIN)

    def _check_config(self) -> None:
        if AMTOOL_BIN.exists():
            _run_check(
                [str(AMTOOL_BIN), "check-config", str(self.config_file)],
                f"Alertmanager config {self.config_file}",
                self._start_timeout,
            )

    def _command(self, port: int) -> list[str]:
        return [
            str(ALERTMANAGER_BIN),
            f"--config.file={self.config_file}",
            f"--storage.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.external-url=http://127.0.0.1:{port}/",
            # Empty: no gossip listener (the default binds 0.0.0.0:9094) and no peers.
            "--cluster.listen-address=",
        ]


# -- HTTP API ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrometheusAlert:
    """One entry of Prometheus' /api/v1/alerts."""

    name: str
    state: str  # "pending" | "firing"
    labels: dict[str, str]
    annotations: dict[str, str]
    active_at: str
    value: str


@dataclass(frozen=True, slots=True)
class PrometheusRule:
    """One rule of Prometheus' /api/v1/rules."""

    group: str
    file: str
    name: str
    type: str  # "alerting" | "recording"
    query: str
    duration: float  # the rule's `for:`, in seconds (0 for recording rules)
    labels: dict[str, str]
    annotations: dict[str, str]
    health: str
    state: str  # alerting rules: "inactive" | "pending" | "firing"
    alerts: list[PrometheusAlert] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AlertmanagerAlert:
    """One entry of Alertmanager's /api/v2/alerts."""

    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: str  # "active" | "suppressed" | "unprocessed"
    starts_at: str
    ends_at: str


def _alert(raw: Mapping[str, Any]) -> PrometheusAlert:
    labels = dict(raw.get("labels") or {})
    return PrometheusAlert(
        name=labels.get("alertname", ""),
        state=str(raw.get("state", "")),
        labels=labels,
        annotations=dict(raw.get("annotations") or {}),
        active_at=str(raw.get("activeAt", "")),
        value=str(raw.get("value", "")),
    )


async def _get_data(url: str, client: httpx.AsyncClient | None, timeout: float) -> Any:
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=timeout))
        response = await client.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()


async def fetch_alerts(
    prometheus_url: str, *, client: httpx.AsyncClient | None = None, timeout: float = 5.0
) -> list[PrometheusAlert]:
    """Prometheus' active (pending and firing) alerts: GET /api/v1/alerts."""
    body = await _get_data(f"{prometheus_url.rstrip('/')}/api/v1/alerts", client, timeout)
    return [_alert(raw) for raw in body["data"]["alerts"]]


async def fetch_rules(
    prometheus_url: str, *, client: httpx.AsyncClient | None = None, timeout: float = 5.0
) -> list[PrometheusRule]:
    """Every loaded rule, with its state and alerts: GET /api/v1/rules."""
    body = await _get_data(f"{prometheus_url.rstrip('/')}/api/v1/rules", client, timeout)
    return [
        PrometheusRule(
            group=str(group["name"]),
            file=str(group.get("file", "")),
            name=str(rule["name"]),
            type=str(rule["type"]),
            query=str(rule["query"]),
            duration=float(rule.get("duration", 0)),
            labels=dict(rule.get("labels") or {}),
            annotations=dict(rule.get("annotations") or {}),
            health=str(rule.get("health", "")),
            state=str(rule.get("state", "")),
            alerts=[_alert(raw) for raw in rule.get("alerts") or []],
        )
        for group in body["data"]["groups"]
        for rule in group["rules"]
    ]


async def fetch_alertmanager_alerts(
    alertmanager_url: str, *, client: httpx.AsyncClient | None = None, timeout: float = 5.0
) -> list[AlertmanagerAlert]:
    """The alerts Alertmanager holds: GET /api/v2/alerts."""
    body = await _get_data(f"{alertmanager_url.rstrip('/')}/api/v2/alerts", client, timeout)
    return [
        AlertmanagerAlert(
            fingerprint=str(raw.get("fingerprint", "")),
            labels=dict(raw.get("labels") or {}),
            annotations=dict(raw.get("annotations") or {}),
            state=str((raw.get("status") or {}).get("state", "")),
            starts_at=str(raw.get("startsAt", "")),
            ends_at=str(raw.get("endsAt", "")),
        )
        for raw in body
    ]


# -- helpers -------------------------------------------------------------------------------


def _http_ok(port: int, path: str) -> bool:
    """GET http://127.0.0.1:PORT/PATH answers 200 (within a second)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=1.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _require(binary: Path) -> None:
    if not os.access(binary, os.X_OK):
        raise MonitoringError(f"{binary} not found or not executable; {_INSTALL_HINT}")


def _run_check(command: list[str], what: str, timeout: float) -> str:
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise MonitoringError(f"{' '.join(command)} did not finish within {timeout:.0f}s") from exc
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise MonitoringError(
            f"{what} failed `{' '.join(command)}` (exit {result.returncode}):\n{output}"
        )
    return output
