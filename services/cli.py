"""The `kubernaut` command: run services, bring the whole system up, check health, make
certificates, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.runtime.certs import init_dev_pki
from services.runtime.clients import Clients
from services.runtime.launcher import Fleet, wait_serving
from services.runtime.names import ServiceName, all_accounts
from services.runtime.settings import RuntimeSettings, Transport

if TYPE_CHECKING:
    from services.devstack.stack import DevStack

EDGE = "gateway-http"


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def ensure_certs(settings: RuntimeSettings, *, force: bool = False) -> Path:
    certs_dir = settings.resolved_certs_dir
    if force or not (certs_dir / "ca.crt").exists():
        init_dev_pki(
            certs_dir,
            all_accounts(),
            trust_domain=settings.trust_domain,
            namespace=settings.namespace,
            force=force,
        )
    return certs_dir


def cmd_certs_init(args: argparse.Namespace) -> int:
    settings = RuntimeSettings()
    certs_dir = ensure_certs(settings, force=True) if args.force else settings.resolved_certs_dir
    if not args.force:
        if (certs_dir / "ca.crt").exists():
            # Keep the CA so that running processes keep trusting each other.
            init_dev_pki(
                certs_dir,
                all_accounts(),
                trust_domain=settings.trust_domain,
                namespace=settings.namespace,
            )
        else:
            ensure_certs(settings)
    print(f"certificates for {', '.join(all_accounts())} in {certs_dir}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.service == EDGE:
        from gateway_http.main import serve_edge

        return asyncio.run(serve_edge())
    from services.runtime.server import serve

    return asyncio.run(serve(ServiceName.parse(args.service)))


async def _status(settings: RuntimeSettings) -> dict[ServiceName, str]:
    clients = Clients(settings)
    try:
        return await wait_serving(clients, list(ServiceName), timeout=0)
    finally:
        await clients.close()


def cmd_status(args: argparse.Namespace) -> int:
    settings = RuntimeSettings()
    statuses = asyncio.run(_status(settings))
    rows = [["SERVICE", "ADDRESS", "HEALTH"]]
    rows += [[s.value, settings.address_of(s), statuses[s]] for s in ServiceName]
    _print_table(rows)
    return 0 if all(v == "SERVING" for v in statuses.values()) else 1


@dataclass
class Stack:
    settings: RuntimeSettings
    fleet: Fleet
    statuses: dict[ServiceName, str]
    edge_url: str


@contextlib.asynccontextmanager
async def running_stack(
    settings: RuntimeSettings, *, timeout: float = 90.0
) -> AsyncIterator[Stack]:
    """Certificates, a database, the ten services and the HTTP edge, each process on
    its own, all stopped again on exit."""
    from services.devstack.postgres import EmbeddedPostgres

    if settings.transport is Transport.MTLS:
        ensure_certs(settings)
    postgres = None
    env: dict[str, str] = {}
    if not os.environ.get("KUBERNAUT_DATABASE_URL"):
        print("starting PostgreSQL (embedded) ...", flush=True)
        postgres = EmbeddedPostgres(settings.state_dir / "postgres")
        env["KUBERNAUT_DATABASE_URL"] = postgres.start()
    fleet = Fleet(settings.state_dir / "logs", env=env)
    edge_port = os.environ.get("KUBERNAUT_HTTP_PORT", "8080")
    try:
        print("starting the ten services and the HTTP edge ...", flush=True)
        for service in ServiceName:
            fleet.start_service(service)
        fleet.start(EDGE, "serve", EDGE)
        clients = Clients(settings)
        try:
            statuses = await wait_serving(clients, list(ServiceName), timeout, fleet)
        finally:
            await clients.close()
        yield Stack(settings, fleet, statuses, f"http://127.0.0.1:{edge_port}")
    finally:
        codes = fleet.stop()
        if postgres is not None:
            postgres.stop()
        failed = {name: code for name, code in codes.items() if code != 0}
        if failed:
            print(f"processes that did not exit cleanly: {failed}", file=sys.stderr)


def print_readiness(stack: Stack) -> bool:
    rows = [["SERVICE", "ADDRESS", "HEALTH", "LOG"]]
    for service in ServiceName:
        rows.append(
            [
                service.value,
                stack.settings.address_of(service),
                stack.statuses.get(service, "?"),
                str(stack.fleet.log_dir / f"{service.value}.log"),
            ]
        )
    rows.append([EDGE, stack.edge_url, "-", str(stack.fleet.log_dir / f"{EDGE}.log")])
    _print_table(rows)
    exited = stack.fleet.exited()
    if exited:
        print(f"exited early: {exited}; see the logs above", file=sys.stderr)
    return all(v == "SERVING" for v in stack.statuses.values()) and not exited


async def _up() -> int:
    settings = RuntimeSettings()
    async with running_stack(settings) as stack:
        ready = print_readiness(stack)
        if not ready:
            return 1
        print("all services SERVING; Ctrl-C stops them", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_up())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_demo(keep_running=args.keep_running))
    return 0


def _dev_stack(args: argparse.Namespace) -> DevStack:
    from services.devstack.stack import DevStack

    settings = RuntimeSettings()
    return DevStack(
        settings.state_dir,
        nodes=args.nodes,
        webhook_url=args.webhook_url,
        alert_for=args.alert_for,
        database_url=os.environ.get("KUBERNAUT_DATABASE_URL"),
    )


def cmd_dev_stack(args: argparse.Namespace) -> int:
    from services.devstack.stack import DevStackError

    stack = _dev_stack(args)
    if args.action == "up":
        print(f"dev stack in {stack.root}")
        try:
            info = stack.up()
        except DevStackError as error:
            print(f"dev-stack up: {error}", file=sys.stderr)
            return 1
        print("\npoint Kubernaut and the tests at it:")
        print(f"  export KUBERNAUT_DATABASE_URL='{info.detail('postgres', 'dsn')}'")
        print(f"  export KUBECONFIG={info.detail('kubernetes', 'kubeconfig')}")
        print(f"  export KUBERNAUT_NOTIFICATION_SMTP_PORT={info.detail('smtp', 'port')}")
        return 0
    if args.action == "down":
        stack.down()
        return 0
    rows = [["COMPONENT", "STATE", "URL", "LOG"], *map(list, stack.status())]
    _print_table(rows)
    return 0 if all(row[1].startswith(("running", "external")) for row in rows[1:]) else 1


def cmd_render_istio(args: argparse.Namespace) -> int:
    from services.runtime.istio import render

    print(render(namespace=args.namespace, trust_domain=args.trust_domain), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kubernaut", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument(
        "service",
        choices=[s.value for s in ServiceName] + [s.account for s in ServiceName] + [EDGE],
    )
    serve.set_defaults(func=cmd_serve)

    up = commands.add_parser(
        "up", help="run all ten services and the HTTP edge, each in its own process"
    )
    up.set_defaults(func=cmd_up)

    status = commands.add_parser("status", help="show every service's health")
    status.set_defaults(func=cmd_status)

    certs = commands.add_parser("certs", help="development certificates")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_commands.add_parser("init", help="make a dev CA and a certificate per service")
    init.add_argument("--force", action="store_true", help="replace the CA too")
    init.set_defaults(func=cmd_certs_init)

    demo = commands.add_parser("demo", help="bring everything up and send an alert through it")
    demo.add_argument(
        "--keep-running", action="store_true", help="leave everything running afterwards"
    )
    demo.set_defaults(func=cmd_demo)
    dev_stack = commands.add_parser(
        "dev-stack", help="the local Kubernetes, PostgreSQL, Prometheus, AlertManager and SMTP"
    )
    dev_stack.add_argument("action", choices=["up", "down", "status"])
    dev_stack.add_argument("--nodes", type=int, default=3, help="KWOK nodes (default 3)")
    dev_stack.add_argument(
        "--webhook-url",
        default="http://127.0.0.1:8080/api/v1/alerts/alertmanager",
        help="where AlertManager sends alerts (default: Kubernaut's HTTP edge)",
    )
    dev_stack.add_argument(
        "--alert-for",
        default=None,
        metavar="DURATION",
        help="replace the alerts' upstream `for:` durations (e.g. 30s) for demos and tests",
    )
    dev_stack.set_defaults(func=cmd_dev_stack)

    render = commands.add_parser("render", help="render deployment objects from the call table")
    render_commands = render.add_subparsers(dest="render_command", required=True)
    istio = render_commands.add_parser("istio", help="PeerAuthentication and AuthorizationPolicies")
    istio.add_argument("--namespace", default="kubernaut")
    istio.add_argument("--trust-domain", default="cluster.local")
    istio.set_defaults(func=cmd_render_istio)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except OSError as error:
        # Missing certificates, a port in use, an unreachable database: say it plainly.
        print(f"kubernaut {args.command}: {error}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
