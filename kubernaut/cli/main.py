"""The `kubernaut` command: run one service or the whole system, check health, make
certificates, inspect incidents, run the local dev stack and the demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kubernaut.cli.identity import add_identity_options, identity_of
from kubernaut.cli.tables import EDGE, print_readiness, print_table
from kubernaut.runtime.certs import init_dev_pki, issue_person_certificate
from kubernaut.runtime.clients import Clients
from kubernaut.runtime.launcher import wait_serving
from kubernaut.runtime.names import ServiceName, all_accounts
from kubernaut.runtime.settings import RuntimeSettings

if TYPE_CHECKING:
    from kubernaut.devstack.stack import DevStack


def cmd_certs_init(args: argparse.Namespace) -> int:
    settings = RuntimeSettings()
    certs_dir = settings.resolved_certs_dir
    # Without --force the CA stays, so that running processes keep trusting each other.
    init_dev_pki(
        certs_dir,
        all_accounts(),
        trust_domain=settings.trust_domain,
        namespace=settings.namespace,
        force=args.force,
    )
    print(f"certificates for {', '.join(all_accounts())} in {certs_dir}")
    return 0


def cmd_certs_person(args: argparse.Namespace) -> int:
    settings = RuntimeSettings()
    paths = issue_person_certificate(
        settings.resolved_certs_dir, args.name, trust_domain=settings.trust_domain, days=args.days
    )
    print(f"{paths.cert} and {paths.key}: present them with `kubernaut --cert {args.name} ...`")
    print(f"roles: bind `cert:{args.name}` in KUBERNAUT_ACCESS_ROLE_BINDINGS")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from kubernaut.cli.identity import login_token_path
    from kubernaut.cli.login import LoginFailed, device_login
    from kubernaut.runtime.access import AccessSettings

    access = AccessSettings()
    issuer = args.issuer or access.oidc_issuer
    client_id = args.client_id or access.oidc_audience
    if not issuer or not client_id:
        print(
            "kubernaut login: --issuer and --client-id (or KUBERNAUT_ACCESS_OIDC_ISSUER and"
            " KUBERNAUT_ACCESS_OIDC_AUDIENCE) say where to sign in",
            file=sys.stderr,
        )
        return 2
    out = args.token_file or login_token_path(RuntimeSettings())
    try:
        saved = asyncio.run(device_login(issuer, client_id, out))
    except LoginFailed as error:
        print(f"kubernaut login: {error}", file=sys.stderr)
        return 1
    print(f"signed in; the token is in {saved} (used by the CLI from now on)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from kubernaut.cli.settings_reference import UnknownSettings, check_environment

    try:
        check_environment(os.environ)
    except UnknownSettings as error:
        print(f"kubernaut serve {args.service}: {error}", file=sys.stderr)
        return 2
    if args.service == EDGE:
        from kubernaut.edge.main import serve_edge
        from kubernaut.edge.settings import EdgeSettings

        return asyncio.run(serve_edge(RuntimeSettings(), EdgeSettings()))
    from kubernaut.runtime.server import CannotStart, serve

    try:
        return asyncio.run(serve(ServiceName.parse(args.service), RuntimeSettings()))
    except CannotStart as error:
        print(f"kubernaut serve {args.service}: {error}", file=sys.stderr)
        return 2


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
    print_table(rows)
    return 0 if all(v == "SERVING" for v in statuses.values()) else 1


def dev_stack_of(args: argparse.Namespace, settings: RuntimeSettings) -> DevStack:
    from kubernaut.devstack.stack import DevStack
    from kubernaut.devstack.system import edge_webhook_url

    return DevStack(
        settings.state_dir,
        nodes=getattr(args, "nodes", 3),
        webhook_url=getattr(args, "webhook_url", None) or edge_webhook_url(),
        alert_for=getattr(args, "alert_for", None),
        database_url=os.environ.get("KUBERNAUT_DATABASE_URL"),
        model=not getattr(args, "no_model", False),
        tracing=True,
        vector_store=getattr(args, "vector_store", "pgvector"),
    )


async def _up(args: argparse.Namespace) -> int:
    from kubernaut.devstack.oidc import sign_in_hint
    from kubernaut.devstack.system import running_system

    settings = RuntimeSettings()
    stack = dev_stack_of(args, settings)
    print(f"dev stack in {stack.root}")
    info = await asyncio.to_thread(stack.up)
    print("starting the ten services and the HTTP edge ...", flush=True)
    async with running_system(settings, info) as system:
        if not print_readiness(system):
            return 1
        print("all services SERVING; Ctrl-C stops them (the dev stack keeps running)", flush=True)
        if system.console_url:
            print(f"web console: {system.console_url}  ({sign_in_hint()})", flush=True)
        # Stopped by Ctrl-C or SIGTERM alike, and the services with it: without a handler,
        # SIGTERM would kill only this process, and a shell that starts it in the
        # background hands it SIGINT ignored.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, stop.set)
        # `kubernaut down` (from another shell) finds this process here.
        pid_file = up_pid_file(settings)
        pid_file.write_text(f"{os.getpid()}\n")
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await stop.wait()
        finally:
            with contextlib.suppress(FileNotFoundError):
                if pid_file.read_text().strip() == str(os.getpid()):
                    pid_file.unlink()
        print("stopping the services ...", flush=True)
    return 0


def up_pid_file(settings: RuntimeSettings) -> Path:
    return settings.state_dir / "up.pid"


def _is_up(pid: int) -> bool:
    """Whether `pid` is a running `kubernaut up` (not a process that reused its pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"up" in cmdline and any(b"kubernaut" in part for part in cmdline)


def cmd_down(args: argparse.Namespace) -> int:
    """Stop a running `kubernaut up` (and so its services) from another shell."""
    pid_file = up_pid_file(RuntimeSettings())
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        print(f"no kubernaut up is running (no {pid_file})")
        return 0
    if not _is_up(pid):
        pid_file.unlink(missing_ok=True)
        print(f"no kubernaut up is running (pid {pid} in {pid_file} is gone)")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while _is_up(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _is_up(pid):
        print(f"kubernaut up (pid {pid}) still runs after {args.timeout:.0f} s", file=sys.stderr)
        return 1
    print(
        f"stopped kubernaut up (pid {pid}) and its services; the dev stack keeps running "
        "(kubernaut dev-stack down stops it)"
    )
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_up(args))
    return 0


def cmd_dev_stack(args: argparse.Namespace) -> int:
    from kubernaut.devstack.stack import DevStackError

    stack = dev_stack_of(args, RuntimeSettings())
    if args.action == "up":
        print(f"dev stack in {stack.root}")
        try:
            info = stack.up()
        except DevStackError as error:
            print(f"dev-stack up: {error}", file=sys.stderr)
            return 1
        kube = info.components["kubernetes"].details
        print("\npoint Kubernaut and the tests at it:")
        print(f"  export KUBERNAUT_DATABASE_URL='{info.detail('postgres', 'dsn')}'")
        print(f"  export KUBECONFIG={kube['kubeconfig']}  # admin")
        print(f"  # the executor's least-privilege kubeconfig: {kube['executor_kubeconfig']}")
        print(f"  export KUBERNAUT_NOTIFICATION_SMTP_PORT={info.detail('smtp', 'port')}")
        if info.components["jaeger"].url:
            jaeger = info.components["jaeger"].details
            print(f"  export KUBERNAUT_OTLP_ENDPOINT={jaeger['otlp_endpoint']}")
            print(f"  export KUBERNAUT_TRACE_UI_URL={jaeger['ui_url']}")
        oidc = info.components["oidc"].details
        print(f"  export KUBERNAUT_ACCESS_OIDC_ISSUER={oidc['issuer']}")
        print(f"  export KUBERNAUT_ACCESS_OIDC_AUDIENCE={oidc['audience']}")
        print(f"  export KUBERNAUT_ACCESS_ROLE_BINDINGS='{oidc['role_bindings']}'")
        return 0
    if args.action == "down":
        stack.down()
        return 0
    rows = [["COMPONENT", "STATE", "URL", "LOG"], *map(list, stack.status())]
    print_table(rows)
    fine = ("running", "external", "left out")
    return 0 if all(row[1].startswith(fine) for row in rows[1:]) else 1


def cmd_incidents(args: argparse.Namespace) -> int:
    from kubernaut.cli.incidents import list_incidents, show_incident

    settings = RuntimeSettings()
    identity = identity_of(args)
    if args.action == "show":
        if not args.incident_id:
            print("kubernaut incidents show: an incident id is needed", file=sys.stderr)
            return 2
        return asyncio.run(
            show_incident(settings, args.incident_id, prompt=args.prompt, identity=identity)
        )
    return asyncio.run(list_incidents(settings, args.limit, identity=identity))


def cmd_alerts(args: argparse.Namespace) -> int:
    from kubernaut.cli.dropped_alerts import list_dropped_alerts

    async def run() -> int:
        clients = identity_of(args).clients(RuntimeSettings())
        try:
            return await list_dropped_alerts(clients, args.limit)
        finally:
            await clients.close()

    return asyncio.run(run())


def cmd_insights(args: argparse.Namespace) -> int:
    from kubernaut.cli.insights import BadWindow, parse_window, show_insights

    try:
        window_seconds = parse_window(args.window)
    except BadWindow as error:
        print(f"kubernaut insights: {error}", file=sys.stderr)
        return 2

    async def run() -> int:
        clients = identity_of(args).clients(RuntimeSettings())
        try:
            return await show_insights(clients, window_seconds, args.top, args.markdown)
        finally:
            await clients.close()

    return asyncio.run(run())


def cmd_workflows(args: argparse.Namespace) -> int:
    from kubernaut.cli.workflows import decide_workflow, show_workflow, watch_workflow

    async def run() -> int:
        clients = identity_of(args).clients(RuntimeSettings())
        try:
            if args.action == "show":
                return await show_workflow(clients, args.workflow_id)
            if args.action == "watch":
                return await watch_workflow(clients, args.workflow_id)
            return await decide_workflow(
                clients, args.workflow_id, args.action, (args.by or "").strip(), args.reason
            )
        finally:
            await clients.close()

    return asyncio.run(run())


def cmd_audit(args: argparse.Namespace) -> int:
    from kubernaut.cli.audit import BadTime, list_entries, parse_time, verify

    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except BadTime as error:
        print(f"kubernaut audit: {error}", file=sys.stderr)
        return 2
    if args.person and args.principal:
        print("kubernaut audit: --person or --principal, not both", file=sys.stderr)
        return 2
    principal = f"person:{args.person}" if args.person else args.principal or ""

    async def run() -> int:
        clients = identity_of(args).clients(RuntimeSettings())
        try:
            if args.action == "verify":
                return await verify(clients)
            return await list_entries(
                clients,
                principal=principal,
                incident_id=args.incident or "",
                method=args.method or "",
                since=since,
                until=until,
                limit=args.limit,
            )
        finally:
            await clients.close()

    return asyncio.run(run())


def cmd_policy_check(args: argparse.Namespace) -> int:
    from kubernaut.cli.policy import cmd_policy_check as check

    return check(args)


def cmd_policy_test(args: argparse.Namespace) -> int:
    from kubernaut.cli.policy import cmd_policy_test as test

    return test(args)


def cmd_runbooks(args: argparse.Namespace) -> int:
    from kubernaut.cli.runbooks import list_runbooks

    return asyncio.run(list_runbooks(RuntimeSettings(), identity=identity_of(args)))


def cmd_render_istio(args: argparse.Namespace) -> int:
    from kubernaut.runtime.istio import render

    print(render(namespace=args.namespace, trust_domain=args.trust_domain), end="")
    return 0


def cmd_render_chart(args: argparse.Namespace) -> int:
    from kubernaut.cli.render_chart import render

    sys.stdout.write(render())
    return 0


def cmd_render_actions(args: argparse.Namespace) -> int:
    from kubernaut.services.executor.docs import render_catalogue

    print(render_catalogue(), end="")
    return 0


def cmd_storage_reindex(args: argparse.Namespace) -> int:
    from kubernaut.cli.storage import reindex_vectors

    return asyncio.run(reindex_vectors(args.batch))


def cmd_render_alert_coverage(args: argparse.Namespace) -> int:
    from kubernaut.services.ai_analysis.rules.coverage import render_markdown

    sys.stdout.write(render_markdown())
    return 0


def cmd_render_settings(args: argparse.Namespace) -> int:
    from kubernaut.cli.settings_reference import render_markdown

    sys.stdout.write(render_markdown())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kubernaut.cli.demo import run_demo

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_demo(keep_running=args.keep_running, model=not args.no_model))
    return 0


def _no_model_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--no-model",
        action="store_true",
        help="leave the local model out of the dev stack (ai_analysis' rules then decide alone)",
    )


def _vector_store_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--vector-store",
        choices=["pgvector", "weaviate"],
        default="pgvector",
        help="where storage searches similar incidents: pgvector in the stack's PostgreSQL "
        "(default) or a Weaviate server the stack starts",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kubernaut", description=__doc__)
    add_identity_options(top)
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service in the foreground")
    serve.add_argument(
        "service",
        choices=[s.value for s in ServiceName] + [s.account for s in ServiceName] + [EDGE],
    )
    serve.set_defaults(func=cmd_serve)
    edge = commands.add_parser(
        "edge", help=f"run the HTTP edge in the foreground (the same as `serve {EDGE}`)"
    )
    edge.set_defaults(func=cmd_serve, service=EDGE)

    up = commands.add_parser(
        "up",
        help="the dev stack, then all ten services and the HTTP edge, each in its own process",
    )
    _no_model_flag(up)
    _vector_store_flag(up)
    up.set_defaults(func=cmd_up)

    down = commands.add_parser(
        "down", help="stop a running `kubernaut up` and its services (from another shell)"
    )
    down.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    down.set_defaults(func=cmd_down)

    login = commands.add_parser(
        "login", help="sign in at the OIDC issuer (device login) and keep the token"
    )
    login.add_argument("--issuer", default="", help="the issuer (KUBERNAUT_ACCESS_OIDC_ISSUER)")
    login.add_argument(
        "--client-id", default="", help="Kubernaut's client id (KUBERNAUT_ACCESS_OIDC_AUDIENCE)"
    )
    login.set_defaults(func=cmd_login)

    status = commands.add_parser("status", help="show every service's health")
    status.set_defaults(func=cmd_status)

    certs = commands.add_parser("certs", help="development certificates")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_commands.add_parser("init", help="make a dev CA and a certificate per service")
    init.add_argument("--force", action="store_true", help="replace the CA too")
    person = certs_commands.add_parser(
        "person", help="issue a person's client certificate, signed by the same CA"
    )
    person.add_argument("name", help="the person's name, as role bindings say cert:<name>")
    person.add_argument("--days", type=int, default=30, help="how long it is valid (30)")
    person.set_defaults(func=cmd_certs_person)
    init.set_defaults(func=cmd_certs_init)

    incidents = commands.add_parser("incidents", help="what Kubernaut saw and did (over gRPC)")
    incidents.add_argument("action", choices=["list", "show"])
    incidents.add_argument("incident_id", nargs="?")
    incidents.add_argument("--limit", type=int, default=20)
    incidents.add_argument(
        "--prompt", action="store_true", help="show: also print each model's redacted prompt"
    )
    incidents.set_defaults(func=cmd_incidents)

    alerts = commands.add_parser(
        "alerts", help="alerts that did not become incidents, and why (over gRPC)"
    )
    alerts.add_argument("action", choices=["list"])
    alerts.add_argument("--limit", type=int, default=20)
    alerts.set_defaults(func=cmd_alerts)

    insights = commands.add_parser(
        "insights",
        help="recurring incidents, least effective actions, noisiest alerts and time saved"
        " (over gRPC)",
    )
    insights.add_argument(
        "--window", default="7d", help="how far back: 7d, 36h, 90m (default 7d, at most 90d)"
    )
    insights.add_argument(
        "--top",
        type=int,
        default=5,
        choices=range(1, 51),
        metavar="N",
        help="rows per table (default 5, at most 50)",
    )
    insights.add_argument("--markdown", action="store_true", help="print Markdown, not tables")
    insights.set_defaults(func=cmd_insights)

    workflows = commands.add_parser(
        "workflows",
        help="a workflow's steps (show; watch: live, until it ends, exit 0 when it"
        " succeeded); approve or reject one that waits (over gRPC)",
    )
    workflows.add_argument("action", choices=["show", "watch", "approve", "reject"])
    workflows.add_argument("workflow_id", help="a workflow's id, or its incident's")
    workflows.add_argument(
        "--by",
        help="who you are (approve, reject): checked against who you authenticated as;"
        " the workflow records the authenticated name",
    )
    workflows.add_argument("--reason", default="", help="why, in a sentence")
    workflows.set_defaults(func=cmd_workflows)

    policy = commands.add_parser(
        "policy", help="the workflow's approval policy (CEL rules in a YAML file)"
    )
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    policy_check = policy_commands.add_parser(
        "check", help="validate a policy file as the workflow service does at start"
    )
    policy_check.add_argument("file", help="the policy file (YAML)")
    policy_check.set_defaults(func=cmd_policy_check)
    policy_test = policy_commands.add_parser(
        "test",
        help="what a policy file decides on a stored incident's plan, beside what was"
        " decided (over gRPC)",
    )
    policy_test.add_argument("file", help="the policy file (YAML)")
    policy_test.add_argument("--incident", required=True, metavar="ID", help="an incident's id")
    add_identity_options(policy_test)
    policy_test.set_defaults(func=cmd_policy_test)

    runbooks = commands.add_parser(
        "runbooks", help="the runbook templates the workflow service loaded (over gRPC)"
    )
    add_identity_options(runbooks)
    runbooks.set_defaults(func=cmd_runbooks)

    audit = commands.add_parser(
        "audit",
        help="the audit trail: who did what; verify recomputes its hash chain (over gRPC)",
    )
    audit.add_argument("action", choices=["list", "verify"])
    audit.add_argument("--person", metavar="NAME", help="only calls by this person")
    audit.add_argument(
        "--principal", metavar="KIND:NAME", help="only calls by this one (service:workflow)"
    )
    audit.add_argument("--incident", metavar="ID", help="only calls about this incident")
    audit.add_argument(
        "--since",
        metavar="T",
        help="only from this time: ISO 8601 (UTC unless it says) or a duration ago (2h, 7d)",
    )
    audit.add_argument("--until", metavar="T", help="only before this time (as --since)")
    audit.add_argument(
        "--method", metavar="M", help="only this call (ExecuteAction, DecideApproval, ...)"
    )
    audit.add_argument("--limit", type=int, default=50, help="list: the newest this many (50)")
    audit.set_defaults(func=cmd_audit)

    demo = commands.add_parser(
        "demo", help="everything up, a bad rollout, and Kubernaut fixing it, live"
    )
    demo.add_argument(
        "--keep-running", action="store_true", help="leave everything running afterwards"
    )
    _no_model_flag(demo)
    demo.set_defaults(func=cmd_demo)

    dev_stack = commands.add_parser(
        "dev-stack", help="the local Kubernetes, PostgreSQL, Prometheus, AlertManager and SMTP"
    )
    dev_stack.add_argument("action", choices=["up", "down", "status"])
    dev_stack.add_argument("--nodes", type=int, default=3, help="KWOK nodes (default 3)")
    dev_stack.add_argument(
        "--webhook-url",
        default=None,
        help="where AlertManager sends alerts (default: Kubernaut's HTTP edge, "
        "at KUBERNAUT_HTTP_HOST and KUBERNAUT_HTTP_PORT)",
    )
    dev_stack.add_argument(
        "--alert-for",
        default=None,
        metavar="DURATION",
        help="replace the alerts' upstream `for:` durations (e.g. 30s) for demos and tests",
    )
    _no_model_flag(dev_stack)
    _vector_store_flag(dev_stack)
    dev_stack.set_defaults(func=cmd_dev_stack)

    storage = commands.add_parser("storage", help="storage's record and its vector store")
    storage_commands = storage.add_subparsers(dest="storage_command", required=True)
    reindex = storage_commands.add_parser(
        "reindex",
        help="rebuild the vector store (KUBERNAUT_VECTOR_STORE) from PostgreSQL's embeddings",
    )
    reindex.add_argument(
        "--batch", type=int, default=1000, help="vectors written per request (default 1000)"
    )
    reindex.set_defaults(func=cmd_storage_reindex)

    render = commands.add_parser("render", help="render deployment objects and docs")
    render_commands = render.add_subparsers(dest="render_command", required=True)
    istio = render_commands.add_parser("istio", help="PeerAuthentication and AuthorizationPolicies")
    istio.add_argument("--namespace", default="kubernaut")
    istio.add_argument("--trust-domain", default="cluster.local")
    istio.set_defaults(func=cmd_render_istio)
    chart = render_commands.add_parser(
        "chart",
        help="the Helm chart's generated part (helm/kubernaut/generated/components.yaml)",
    )
    chart.set_defaults(func=cmd_render_chart)
    actions = render_commands.add_parser("actions", help="the action catalogue as Markdown")
    actions.set_defaults(func=cmd_render_actions)
    settings = render_commands.add_parser(
        "settings", help="every KUBERNAUT_* setting as Markdown (docs/settings.md)"
    )
    settings.set_defaults(func=cmd_render_settings)
    coverage = render_commands.add_parser(
        "alert-coverage", help="how the rules answer each alert (docs/alert-coverage.md)"
    )
    coverage.set_defaults(func=cmd_render_alert_coverage)
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
