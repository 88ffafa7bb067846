"""The rbac stage: does the executor's own identity hold every permission the catalogue lists
for the action (and the target's kind)?

One SelfSubjectAccessReview per verb, on the very object where the action names one; refused
naming each missing verb, FAILED when the reviews cannot be made. The role these permissions
add up to is kubernaut.services.executor.rbac.
"""

from __future__ import annotations

import asyncio

from kubernaut.services.executor import catalogue
from kubernaut.services.executor.cluster import KINDS, ApiError
from kubernaut.services.executor.run import Run


async def check_rbac(run: Run) -> None:
    ref = run.ref
    definition = catalogue.describe_action(run.action)
    target_plural = KINDS[ref.kind].plural
    namespaced = KINDS[ref.kind].namespaced
    checks: list[tuple[str, str, str, str, str]] = []
    for permission in definition.permissions:
        if permission.target_kinds and ref.kind not in permission.target_kinds:
            continue
        own = permission.resource == target_plural and not permission.subresource
        for verb in permission.verbs:
            # Checked on the very object where the action names one (list and create
            # name none), so RBAC restricted by resourceNames is honoured.
            name = ""
            if own and verb not in ("list", "create"):
                name = ref.name
            elif permission.resource == "namespaces":
                name = ref.namespace
            checks.append(
                (permission.api_group, permission.resource, permission.subresource, verb, name)
            )
    if not checks:
        run.stage("rbac: ok: the action needs no permission")
        return
    cluster = await run.cluster()
    try:
        answers = await asyncio.gather(
            *(
                cluster.allowed(
                    # Cluster-scoped targets (nodes) act on pods in every namespace.
                    namespace=ref.namespace if namespaced else "",
                    group=group,
                    resource=resource,
                    subresource=subresource,
                    verb=verb,
                    name=name,
                )
                for group, resource, subresource, verb, name in checks
            )
        )
    except ApiError as error:
        run.fail(
            f"rbac: failed: SelfSubjectAccessReview: {error}",
            f"{run.what()} failed: cannot check RBAC: {error}",
        )

    def label(group: str, resource: str, subresource: str) -> str:
        full = f"{resource}.{group}" if group else resource
        return f"{full}/{subresource}" if subresource else full

    missing = [
        f"{verb} {label(group, resource, subresource)}"
        for (group, resource, subresource, verb, _), (allowed, _) in zip(
            checks, answers, strict=True
        )
        if not allowed
    ]
    where = f"in namespace {ref.namespace}" if namespaced else "cluster-wide"
    if missing:
        run.refuse(
            f"rbac: refused: the executor's identity may not {'; '.join(missing)} {where}",
            f"{run.what()} refused: missing RBAC permission: {'; '.join(missing)}",
        )
    granted: dict[str, list[str]] = {}
    for group, resource, subresource, verb, _ in checks:
        granted.setdefault(label(group, resource, subresource), []).append(verb)
    run.stage(
        "rbac: ok: " + "; ".join(f"{', '.join(verbs)} {what}" for what, verbs in granted.items())
    )
