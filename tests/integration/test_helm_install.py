"""`helm install` of helm/kubernaut on the session's local control plane (KWOK plays the
pods; nothing runs in them), exactly as the README's "Install on a cluster" says: its
fenced `sh` blocks are parsed and run here (`kubectl` lines through the API, `helm` lines
with the built Helm), with helm/examples/istio.yaml. Then, on what the apiserver holds:

- every Deployment becomes Available, with the image the chart names;
- SelfSubjectAccessReviews, made with a TokenRequest token of each ServiceAccount, prove
  least privilege over a grid generated from the executor's catalogue, context_api's
  reads and the sensitive resources of the cluster: the executor can do exactly its
  catalogue's verbs, context_api only reads, the edge only reviews tokens, the others
  nothing;
- the installed AuthorizationPolicies, evaluated as Istio does, allow exactly the call
  table's (caller, service, method) triples;
- `helm upgrade` rolls every Deployment; `helm uninstall` leaves nothing of the release
  in the namespace nor cluster-wide, only what is kept by design (the namespace and the
  Secrets made before the install).

Istio off (helm/examples/no-istio.yaml) installs, becomes Available and uninstalls clean
too."""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import re
import shlex
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from kubernaut.devstack.crds import ApiServer, build_helm
from kubernaut.devstack.kube import LocalCluster
from kubernaut.devstack.stages import SIMULATE_ANNOTATION
from kubernaut.runtime import edges
from kubernaut.runtime.certs import init_dev_pki
from kubernaut.runtime.names import EDGE_ACCOUNT, ServiceName, all_accounts
from kubernaut.runtime.registry import protocol
from kubernaut.services.context_api import rbac as context_rbac
from kubernaut.services.executor.catalogue import list_actions
from kubernaut.services.executor.checks import CHECK_READS, SCOPE_READS
from kubernaut.services.executor.cluster import KINDS
from kubernaut.services.executor.gitops import SOURCE_READ_RESOURCES
from tests.fixtures.helm import CHART, Helm
from tests.fixtures.waiting import eventually
from tests.integration.test_helm_chart import api_server as api_server  # fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NO_ISTIO_VALUES = ROOT / "helm" / "examples" / "no-istio.yaml"
# What the README's commands name; the test puts its own namespace in their place.
README_NAMESPACE = "kubernaut"
RELEASE = "kubernaut"
PART_OF = "app.kubernetes.io/part-of=kubernaut"


# -- The README's commands -------------------------------------------------------------------


def readme_commands() -> list[list[str]]:
    """The `kubectl` and `helm` command lines of the fenced `sh` blocks in the README's
    "Install on a cluster" section, in order, split as a shell would (comments dropped)."""
    text = README.read_text()
    match = re.search(r"^## Install on a cluster\b.*?(?=^## )", text, re.M | re.S)
    assert match, "README.md has no '## Install on a cluster' section"
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", match.group(0), re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("kubectl", "helm"):
                commands.append(words)
    return commands


def helm_command(verb: str) -> list[str]:
    (found,) = [c for c in readme_commands() if c[:2] == ["helm", verb]]
    return found


def in_namespace(words: list[str], namespace: str) -> list[str]:
    """`words` with the README's namespace replaced wherever it names the namespace."""
    out = list(words)
    for i, word in enumerate(out):
        after_flag = i > 0 and out[i - 1] in ("--namespace", "-n")
        after_kind = i > 0 and out[i - 1] == "namespace" and out[0] == "kubectl"
        if word == README_NAMESPACE and (after_flag or after_kind):
            out[i] = namespace
    return out


class Cluster:
    """Admin calls to the local API server, failing the test on an error status."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api

    async def __call__(self, method: str, path: str, body: Any = None, **query: str) -> Any:
        # A PATCH here is a JSON merge patch.
        kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
        status, answer = await self.api.call(
            method, path, body=body, query=query or None, content_type=kind
        )
        assert 200 <= status < 300, (method, path, status, answer)
        return answer

    async def items(self, path: str, **query: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await self(method="GET", path=path, **query))["items"]
        return items

    async def kubectl(self, words: list[str]) -> None:
        """The few `kubectl` forms the README uses, done through the API (no kubectl here);
        any other form fails, so that the README cannot say what the test does not do."""
        namespace = None
        rest = words[1:]
        if rest[:1] in (["-n"], ["--namespace"]):
            namespace, rest = rest[1], rest[2:]
        if rest[:2] == ["create", "namespace"] and len(rest) == 3:
            await self("POST", "/api/v1/namespaces", {"metadata": {"name": rest[2]}})
        elif rest[:2] == ["label", "namespace"] and len(rest) >= 4:
            labels = dict(label.split("=", 1) for label in rest[3:])
            await self(
                "PATCH",
                f"/api/v1/namespaces/{rest[2]}",
                {"metadata": {"labels": labels}},
            )
        elif rest[:3] == ["create", "secret", "generic"] and namespace:
            literals = [w.removeprefix("--from-literal=") for w in rest[4:]]
            assert all(w != lit for w, lit in zip(rest[4:], literals, strict=True)), words
            data = dict(literal.split("=", 1) for literal in literals)
            await self(
                "POST",
                f"/api/v1/namespaces/{namespace}/secrets",
                {"metadata": {"name": rest[3]}, "stringData": data},
            )
        else:
            raise AssertionError(f"the test does not know this README command: {words}")


@pytest.fixture(scope="module")
def cluster(api_server: ApiServer) -> Cluster:
    """The local API server with Istio's CRDs (and the others the chart may render)."""
    return Cluster(api_server)


@pytest.fixture(scope="module")
def helm(kube: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(
        build_helm(timeout=1100) / "helm", tmp_path_factory.mktemp("helm-home"), kube.kubeconfig
    )


@dataclass
class Release:
    namespace: str
    secrets: set[str]
    """Made by the README's commands before the install: kept by design."""


@pytest.fixture(scope="module")
async def release(cluster: Cluster, helm: Helm) -> AsyncIterator[Release]:
    """The README's install, as written, into a fresh namespace (left installed for the
    tests below, which uninstall it last; uninstalled here if one of them did not)."""
    namespace = f"kubernaut-{uuid.uuid4().hex[:8]}"
    install = [c for c in readme_commands() if c[:2] != ["helm", "upgrade"]]
    install = [c for c in install if c[:2] != ["helm", "uninstall"]]
    assert install[-1][:2] == ["helm", "install"], install
    for words in install[:-1]:
        await cluster.kubectl(in_namespace(words, namespace))
    secrets = {s["metadata"]["name"] for s in await cluster.items(_secrets(namespace))}
    await helm.line(in_namespace(install[-1], namespace))
    yield Release(namespace, secrets)
    listed = await helm.line(["helm", "list", "--namespace", namespace, "-q"])
    if listed.split():
        await helm.line(["helm", "uninstall", RELEASE, "--namespace", namespace])


def _secrets(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets"


def _deployments(namespace: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments"


def _accounts() -> set[str]:
    return {s.account for s in ServiceName} | {EDGE_ACCOUNT}


def _chart_image() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"


# -- Available -------------------------------------------------------------------------------


async def _all_available(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    """Every Deployment of the namespace by name once each has rolled out whole (the
    newest template's pods all Ready, no old ones left), else {}."""
    deployments = {d["metadata"]["name"]: d for d in await cluster.items(_deployments(namespace))}
    for d in deployments.values():
        status, want = d.get("status", {}), d["spec"]["replicas"]
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        if not (
            status.get("observedGeneration") == d["metadata"]["generation"]
            and status.get("updatedReplicas") == want
            and status.get("availableReplicas") == want
            and status.get("replicas") == want
            and conditions.get("Available") == "True"
        ):
            return {}
    return deployments


async def _ready_pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    pods = await cluster.items(f"/api/v1/namespaces/{namespace}/pods")
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running"
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])
    ]


async def _check_available(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    deployments = await eventually(
        lambda: _all_available(cluster, namespace), "every Deployment Available", timeout=180
    )
    assert set(deployments) == {f"kubernaut-{a}" for a in _accounts()}
    pods = await _ready_pods(cluster, namespace)
    assert len(pods) == sum(d["spec"]["replicas"] for d in deployments.values())
    for pod in pods:
        # KWOK's default Stages play them Running and Ready; no simulated failure.
        assert SIMULATE_ANNOTATION not in pod["metadata"].get("annotations", {})
        (container,) = pod["spec"]["containers"]
        assert container["image"] == _chart_image()
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    return deployments


async def test_every_deployment_becomes_available(cluster: Cluster, release: Release) -> None:
    deployments = await _check_available(cluster, release.namespace)
    config = await cluster(
        "GET", f"/api/v1/namespaces/{release.namespace}/configmaps/kubernaut-config"
    )
    assert config["data"]["KUBERNAUT_TRANSPORT"] == "mesh"
    assert config["data"]["KUBERNAUT_NAMESPACE"] == release.namespace
    # The Secrets the README made beforehand are what the pods take by reference.
    storage = deployments["kubernaut-storage"]["spec"]["template"]["spec"]["containers"][0]
    db = {e["name"]: e for e in storage["env"]}["KUBERNAUT_DATABASE_URL"]
    assert db["valueFrom"]["secretKeyRef"]["name"] in release.secrets
    assert {"kubernaut-db", "kubernaut-env"} <= release.secrets


# -- Least privilege -------------------------------------------------------------------------

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
# Beyond what Kubernaut reads or changes: what an attacker with a stolen token would want.
SENSITIVE = [
    ("", "secrets"),
    ("", "serviceaccounts"),
    ("", "serviceaccounts/token"),
    ("", "services"),
    ("", "endpoints"),
    ("", "persistentvolumes"),
    ("", "pods/exec"),
    ("", "pods/attach"),
    ("", "pods/portforward"),
    ("", "nodes/proxy"),
    ("apps", "deployments/scale"),
    ("coordination.k8s.io", "leases"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
    ("certificates.k8s.io", "certificatesigningrequests"),
    ("security.istio.io", "authorizationpolicies"),
    ("authentication.k8s.io", "tokenreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"),
]
# Verbs outside the usual eight that grant more than they say.
ESCALATIONS = [
    ("", "users", "impersonate"),
    ("", "groups", "impersonate"),
    ("", "serviceaccounts", "impersonate"),
    ("rbac.authorization.k8s.io", "clusterroles", "escalate"),
    ("rbac.authorization.k8s.io", "clusterroles", "bind"),
    ("certificates.k8s.io", "signers", "approve"),
]
# system:auth-delegator (the edge with TokenReview on): exactly these two.
DELEGATOR = {
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
}

Check = tuple[str, str, str]  # (API group, resource[/subresource], verb)


def executor_grants() -> set[Check]:
    """Every (group, resource, verb) an action of the catalogue declares, and the reads of
    RunCheck's checks (and their scope check) and of the GitOps sources: get and list only."""
    grants = set()
    for action in list_actions():
        for p in action.permissions:
            resource = f"{p.resource}/{p.subresource}" if p.subresource else p.resource
            grants |= {(p.api_group, resource, verb) for verb in p.verbs}
    grants |= {(group, resource, "get") for group, resource in SOURCE_READ_RESOURCES}
    for kind, verbs in [*SCOPE_READS, *(r for reads in CHECK_READS.values() for r in reads)]:
        assert set(verbs) <= {"get", "list"}, (kind, verbs)
        grants |= {(KINDS[kind].group, KINDS[kind].plural, verb) for verb in verbs}
    return grants


def context_api_grants() -> set[Check]:
    return {
        (group, resource, verb)
        for rule in context_rbac.policy_rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def access_grid() -> set[Check]:
    """Every verb on every resource Kubernaut touches or an attacker would want."""
    resources = {(g, r) for g, r, _ in executor_grants() | context_api_grants()}
    resources |= set(SENSITIVE)
    return {(g, r, v) for g, r in resources for v in VERBS} | set(ESCALATIONS) | DELEGATOR


def expected_grants(account: str) -> set[Check]:
    if account == ServiceName.EXECUTOR.account:
        return executor_grants()
    if account == ServiceName.CONTEXT_API.account:
        return context_api_grants()
    if account == EDGE_ACCOUNT:  # helm/examples/istio.yaml turns TokenReview on
        return DELEGATOR
    return set()


async def _token(cluster: Cluster, namespace: str, account: str) -> str:
    answer = await cluster(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    token: str = answer["status"]["token"]
    return token


async def _allowed_as(
    kube: LocalCluster, token: str, checks: list[tuple[Check, str]], expected_user: str
) -> set[tuple[Check, str]]:
    """Which of `checks` ((group, resource, verb), namespace; "" for all namespaces) the
    token's identity may do: one SelfSubjectAccessReview each, made with that token."""
    context = ssl.create_default_context(cafile=str(kube.info.ca_file))
    headers = {"Authorization": f"Bearer {token}"}
    base = kube.info.apiserver_url
    limit = asyncio.Semaphore(8)
    async with aiohttp.ClientSession(headers=headers) as session:
        # The token is who we think: the ServiceAccount itself, not the admin.
        async with session.post(
            f"{base}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            ssl=context,
        ) as response:
            assert response.status == 201, await response.text()
            user = (await response.json())["status"]["userInfo"]["username"]
            assert user == expected_user

        async def review(check: Check, namespace: str) -> bool:
            group, resource, verb = check
            resource, _, subresource = resource.partition("/")
            attributes = {
                "group": group,
                "resource": resource,
                "subresource": subresource,
                "verb": verb,
                "namespace": namespace,
            }
            body = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
            async with (
                limit,
                session.post(
                    f"{base}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                    json=body,
                    ssl=context,
                ) as response,
            ):
                assert response.status == 201, await response.text()
                allowed: bool = (await response.json())["status"]["allowed"]
                return allowed

        answers = await asyncio.gather(*(review(c, ns) for c, ns in checks))
    return {check for check, allowed in zip(checks, answers, strict=True) if allowed}


async def test_each_service_account_has_least_privilege(
    kube: LocalCluster, cluster: Cluster, release: Release
) -> None:
    ns = release.namespace
    accounts = {
        sa["metadata"]["name"]
        for sa in await cluster.items(f"/api/v1/namespaces/{ns}/serviceaccounts")
        if sa["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "kubernaut"
    }
    assert accounts == _accounts()
    grid = sorted(access_grid())
    assert executor_grants() <= set(grid) and context_api_grants() <= set(grid)
    # Cluster-wide, in the release's namespace and in kube-system: ClusterRoleBindings
    # reach everywhere, and no Role may add anything in the release's own namespace.
    scopes = ["", ns, "kube-system"]
    checks = [(c, scope) for c in grid for scope in scopes]
    for account in sorted(accounts):
        token = await _token(cluster, ns, account)
        allowed = await _allowed_as(kube, token, checks, f"system:serviceaccount:{ns}:{account}")
        expected = {(c, scope) for c in expected_grants(account) for scope in scopes}
        assert allowed == expected, (
            account,
            "more than expected:",
            sorted(allowed - expected),
            "missing:",
            sorted(expected - allowed),
        )
    # context_api only reads, whatever its module says.
    assert {v for _, _, v in context_api_grants()} <= {"get", "list", "watch"}


# -- Istio: the installed AuthorizationPolicies are the call table ------------------------------


def _matches(patterns: list[str] | None, value: str | None) -> bool:
    """Istio's string match: exact, `prefix*`, `*suffix` or `*`; an absent field matches
    anything, a present one never matches a missing value."""
    if patterns is None:
        return True
    if value is None:
        return False
    for pattern in patterns:
        assert pattern.count("*") <= 1 and (
            "*" not in pattern or pattern.startswith("*") or pattern.endswith("*")
        ), pattern
        if fnmatch.fnmatchcase(value, pattern):
            return True
    return False


def _rule_matches(rule: dict[str, Any], principal: str | None, path: str, port: int) -> bool:
    sources = rule.get("from")
    operations = rule.get("to")
    assert not rule.get("when"), rule  # not modelled: fail loudly rather than guess
    if sources is not None and not any(
        _matches(s["source"].get("principals"), principal) for s in sources
    ):
        return False
    if operations is None:
        return True
    for to in operations:
        op = to["operation"]
        assert set(op) <= {"paths", "ports"}, op
        if _matches(op.get("paths"), path) and _matches(op.get("ports"), str(port)):
            return True
    return False


def _allows(
    policies: list[dict[str, Any]],
    pod_labels: dict[str, str],
    principal: str | None,
    path: str,
    port: int,
) -> bool:
    """Istio's decision for one request to a pod: no DENY or CUSTOM policies here; with
    any ALLOW policy selecting the pod (a namespace-wide one selects every pod), some rule
    of one must match. `spec: {}` is an ALLOW policy with no rule: it matches nothing."""
    applying = []
    for policy in policies:
        spec = policy["spec"]
        assert spec.get("action", "ALLOW") == "ALLOW", policy["metadata"]["name"]
        selector = (spec.get("selector") or {}).get("matchLabels", {})
        if selector.items() <= pod_labels.items():
            applying.append(spec)
    if not applying:
        return True
    return any(
        _rule_matches(rule, principal, path, port)
        for spec in applying
        for rule in spec.get("rules") or []
    )


async def test_authorization_policies_allow_exactly_the_call_table(
    cluster: Cluster, release: Release
) -> None:
    ns = release.namespace
    group = "/apis/security.istio.io/v1/namespaces"
    (peer,) = await cluster.items(f"{group}/{ns}/peerauthentications")
    assert peer["spec"] == {"mtls": {"mode": "STRICT"}}
    policies = await cluster.items(f"{group}/{ns}/authorizationpolicies")
    trust_domain = "cluster.local"
    principals: dict[str | None, str | None] = {
        f"{trust_domain}/ns/{ns}/sa/{account}": account for account in all_accounts()
    }
    # Strangers: the same names in another namespace, and plaintext (no identity).
    principals |= {f"{trust_domain}/ns/elsewhere/sa/{a}": None for a in all_accounts()}
    principals[None] = None

    allowed: set[tuple[str, ServiceName, str]] = set()
    health = reflection = 0
    deployments = await cluster.items(_deployments(ns))
    for deployment in deployments:
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        if container["args"] == ["serve", EDGE_ACCOUNT]:
            # The edge takes webhooks from anyone in the mesh (it checks tokens itself) on
            # its HTTP port; not on a port it does not declare (the policy names ports).
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
            undeclared = 1 + max(p["containerPort"] for p in container["ports"])
            labels = pod["metadata"]["labels"]
            for principal in principals:
                assert _allows(policies, labels, principal, "/api/v1/alerts", port)
                assert not _allows(policies, labels, principal, "/api/v1/alerts", undeclared)
            continue
        service = ServiceName.parse(container["args"][1])
        proto = protocol(service)
        port = service.default_grpc_port
        labels = pod["metadata"]["labels"]
        for principal, account in principals.items():
            for method in proto.method_names:
                if _allows(policies, labels, principal, proto.path(method), port):
                    assert account is not None, (principal, service, method)
                    allowed.add((account, service, method))
            # Health for anyone (the kubelet's probes have no identity); reflection for
            # anyone of the namespace only.
            health += _allows(policies, labels, principal, "/grpc.health.v1.Health/Check", port)
            own = account is not None
            for name in sorted(edges.REFLECTION_SERVICES):
                path = f"/{name}/ServerReflectionInfo"
                assert _allows(policies, labels, principal, path, port) is own, (principal, path)
                reflection += own
    assert health == len(ServiceName) * len(principals)
    assert reflection == len(ServiceName) * len(all_accounts()) * 2

    table = {
        (account, service, method)
        for service in ServiceName
        for method in protocol(service).method_names
        for account in all_accounts()
        if edges.is_allowed(account, service, method)
    }
    assert allowed - table == set(), "the policies allow calls the table does not"
    assert table - allowed == set(), "the table allows calls the policies refuse"


# -- Upgrade and uninstall -------------------------------------------------------------------


async def test_upgrade_rolls_every_deployment(
    cluster: Cluster, helm: Helm, release: Release
) -> None:
    ns = release.namespace
    before = await _check_available(cluster, ns)
    upgrade = in_namespace(helm_command("upgrade"), ns)
    await helm.line(upgrade)
    after = await _check_available(cluster, ns)
    # The README's upgrade changes a value of the shared ConfigMap: every pod template's
    # config checksum changes, so every Deployment rolls to new pods.
    for name, deployment in after.items():
        old, new = (
            d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in (before[name], deployment)
        )
        assert old != new, name
        assert deployment["metadata"]["generation"] > before[name]["metadata"]["generation"]
    sets = await cluster.items(f"/apis/apps/v1/namespaces/{ns}/replicasets")
    assert len(sets) == 2 * len(after)
    assert sum(1 for rs in sets if rs["spec"]["replicas"] == 0) == len(after)
    pods = await _ready_pods(cluster, ns)
    hashes = {
        rs["metadata"]["labels"]["pod-template-hash"] for rs in sets if rs["spec"]["replicas"]
    }
    assert {p["metadata"]["labels"]["pod-template-hash"] for p in pods} <= hashes
    history = await helm.line(["helm", "history", RELEASE, "--namespace", ns, "-o", "yaml"])
    assert [r["status"] for r in yaml.safe_load(history)] == ["superseded", "deployed"]


async def _leftovers(cluster: Cluster, namespace: str) -> list[str]:
    """Everything left in `namespace` (every namespaced kind, labelled or not) and every
    cluster-scoped object labelled as Kubernaut's, by discovery of every API resource."""
    groups = ["/api/v1"]
    for group in (await cluster("GET", "/apis"))["groups"]:
        groups.append(f"/apis/{group['preferredVersion']['groupVersion']}")
    found = []
    for base in groups:
        for resource in (await cluster("GET", base))["resources"]:
            if "/" in resource["name"] or "list" not in resource.get("verbs", []):
                continue
            if resource["namespaced"]:
                path, query = f"{base}/namespaces/{namespace}/{resource['name']}", {}
            else:
                path, query = f"{base}/{resource['name']}", {"labelSelector": PART_OF}
            status, answer = await cluster.api.call("GET", path, query=query)
            for _ in range(30):
                # 429: a CRD's storage still initialising (Retry-After); asked again.
                if status != 429:
                    break
                await asyncio.sleep(1)
                status, answer = await cluster.api.call("GET", path, query=query)
            if status in (404, 405):  # served but not listable here (e.g. aggregated)
                continue
            assert status == 200, (path, status, answer)
            for item in answer.get("items") or []:
                meta = item["metadata"]
                released = (meta.get("annotations") or {}).get("meta.helm.sh/release-namespace")
                # Cluster-wide, only this release's (another test's may be installed).
                if resource["namespaced"] or namespace in (
                    released,
                    meta["name"][-len(namespace) :],
                ):
                    found.append(f"{resource['kind']}/{meta['name']}")
    return sorted(found)


def _kept_by_design(name: str, secrets: set[str]) -> bool:
    kind, _, object_name = name.partition("/")
    return (
        # Made before the install, by reference: the chart never owns them.
        (kind == "Secret" and object_name in secrets)
        # The namespace's own, made by Kubernetes.
        or (kind == "ServiceAccount" and object_name == "default")
        or (kind == "ConfigMap" and object_name == "kube-root-ca.crt")
        # The record of what happened; they expire on their own (1 h by default).
        or kind == "Event"
    )


async def _uninstall_leaves_nothing(
    cluster: Cluster, helm: Helm, namespace: str, secrets: set[str], command: list[str]
) -> None:
    installed = await _leftovers(cluster, namespace)
    # The query sees what the release made, namespaced and cluster-wide.
    for kind in ("Deployment", "Pod", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
        assert any(n.startswith(f"{kind}/") for n in installed), (kind, installed)
    await helm.line(in_namespace(command, namespace))

    async def nothing_left() -> bool:
        left = await _leftovers(cluster, namespace)
        return not [n for n in left if not _kept_by_design(n, secrets)]

    try:
        await eventually(nothing_left, "nothing of the release left", timeout=120, interval=1)
    except AssertionError:
        left = [n for n in await _leftovers(cluster, namespace) if not _kept_by_design(n, secrets)]
        raise AssertionError(f"left behind after `helm uninstall`: {left}") from None
    kept = {n for n in await _leftovers(cluster, namespace) if not n.startswith("Event/")}
    assert kept == {f"Secret/{s}" for s in secrets} | {
        "ServiceAccount/default",
        "ConfigMap/kube-root-ca.crt",
    }
    # The namespace itself stays (the README made it; Helm does not own it).
    await cluster("GET", f"/api/v1/namespaces/{namespace}")


async def test_uninstall_leaves_only_what_is_kept_by_design(
    cluster: Cluster, helm: Helm, release: Release
) -> None:
    await _uninstall_leaves_nothing(
        cluster, helm, release.namespace, release.secrets, helm_command("uninstall")
    )


# -- Istio off -------------------------------------------------------------------------------


async def test_istio_off_installs_and_uninstalls(
    cluster: Cluster, helm: Helm, tmp_path: Path
) -> None:
    """helm/examples/no-istio.yaml: Kubernaut's own mTLS, certificates from
    `kubernaut certs init`'s layout in a Secret made beforehand."""
    values = yaml.safe_load(NO_ISTIO_VALUES.read_text())
    namespace = f"kubernaut-{uuid.uuid4().hex[:8]}"
    await cluster("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    init_dev_pki(tmp_path, all_accounts(), trust_domain="cluster.local", namespace=namespace)
    made = {
        values["mtls"]["existingSecret"]: {
            p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix in (".crt", ".key")
        },
        values["database"]["existingSecret"]: {
            values["database"]["key"]: b"postgresql://kubernaut@db.example:5432/kubernaut"
        },
        values["edge"]["tokens"]["existingSecret"]: {values["edge"]["tokens"]["key"]: b"t0k3n\n"},
    }
    for name, data in made.items():
        encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
        await cluster("POST", _secrets(namespace), {"metadata": {"name": name}, "data": encoded})
    install = helm_command("install")
    install = [w if w != "helm/examples/istio.yaml" else str(NO_ISTIO_VALUES) for w in install]
    assert str(NO_ISTIO_VALUES) in install
    await helm.line(in_namespace(install, namespace))
    deployments = await _check_available(cluster, namespace)
    config = await cluster("GET", f"/api/v1/namespaces/{namespace}/configmaps/kubernaut-config")
    assert config["data"]["KUBERNAUT_TRANSPORT"] == "mtls"
    group = f"/apis/security.istio.io/v1/namespaces/{namespace}"
    assert await cluster.items(f"{group}/authorizationpolicies") == []
    assert await cluster.items(f"{group}/peerauthentications") == []
    for deployment in deployments.values():
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert any(v.get("secret", {}).get("secretName") == "kubernaut-certs" for v in volumes)
    await _uninstall_leaves_nothing(cluster, helm, namespace, set(made), helm_command("uninstall"))
