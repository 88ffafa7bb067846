"""The local control plane's PKI and kubeconfigs (see `kubernaut.devstack.kube`).

Identities are client certificates signed by a CA generated on first start (Python
`cryptography`): the admin is in `system:masters`; the controller manager and scheduler use
their built-in RBAC users; KWOK is in `system:masters` (it writes node and pod status and
leases); kube-state-metrics gets its read-only ClusterRole from `kube_bootstrap`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubernaut.devstack.kube_layout import SERVICE_IP, KubeClusterError, StateLayout
from kubernaut.devstack.processes import LOOPBACK
from kubernaut.runtime.certs import create_ca, write_private_key

COMPONENT_USERS = ("controller-manager", "scheduler", "kwok", "kube-state-metrics")
"""The components that talk to the API server, each with its certificate and kubeconfig."""


@dataclass(frozen=True)
class _Cert:
    cn: str
    org: str | None = None
    server: bool = False
    client: bool = False
    ca: str = "ca"
    """The file name (without .crt) of the CA that signs it."""


# Two CAs, as kubeadm has: `ca` for the cluster, `front-proxy-ca` for the request-header
# authentication of aggregated API servers (and the controller manager's and scheduler's
# delegated authentication), so no cluster client certificate can pose as the front proxy.
_CAS = {"ca": "kubernaut-devstack-ca", "front-proxy-ca": "kubernaut-devstack-front-proxy-ca"}
_CERTS = {
    "apiserver": _Cert("kube-apiserver", server=True),
    "etcd": _Cert("etcd", server=True, client=True),
    "serving": _Cert("kubernaut-devstack-serving", server=True),
    "apiserver-etcd-client": _Cert("kube-apiserver-etcd-client", client=True),
    # The API server's identity towards the kubelet API (KWOK serves it: pod logs).
    "apiserver-kubelet-client": _Cert("kube-apiserver-kubelet-client", client=True),
    "admin": _Cert("kubernaut-admin", "system:masters", client=True),
    "controller-manager": _Cert("system:kube-controller-manager", client=True),
    "scheduler": _Cert("system:kube-scheduler", client=True),
    "kwok": _Cert("kwok", "system:masters", client=True),
    "kube-state-metrics": _Cert("kube-state-metrics", client=True),
    "front-proxy-client": _Cert("front-proxy-client", client=True, ca="front-proxy-ca"),
}
_SANS_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
_SANS_IP = ("127.0.0.1", "::1", SERVICE_IP)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ensure_ca(pki: Path, file_name: str, cn: str) -> bool:
    """Create the CA `file_name` when missing; True when it was created."""
    if (pki / f"{file_name}.crt").exists() and (pki / f"{file_name}.key").exists():
        return False
    create_ca(pki, common_name=cn, name=file_name, path_length=None)
    return True


def ensure_pki(pki: Path) -> None:
    """Create what is missing in `pki`: the CAs, every certificate, the ServiceAccount keys.

    EC P-256 for the CAs and certificates, RSA 2048 for ServiceAccount tokens (RS256); keys
    are written 0600 in a 0700 directory. A new CA replaces the certificates it signs.
    """
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    now = dt.datetime.now(dt.UTC)
    cas: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}
    for ca_name, ca_cn in _CAS.items():
        if _ensure_ca(pki, ca_name, ca_cn):
            for file_name, spec in _CERTS.items():
                if spec.ca == ca_name:
                    (pki / f"{file_name}.crt").unlink(missing_ok=True)
        ca_key = serialization.load_pem_private_key(
            (pki / f"{ca_name}.key").read_bytes(), password=None
        )
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise KubeClusterError(None, f"{pki / ca_name}.key is not an EC private key")
        cas[ca_name] = (
            x509.load_pem_x509_certificate((pki / f"{ca_name}.crt").read_bytes()),
            ca_key,
        )
    for file_name, spec in _CERTS.items():
        cert_path, key_path = pki / f"{file_name}.crt", pki / f"{file_name}.key"
        if cert_path.exists() and key_path.exists():
            continue
        ca_cert, ca_key = cas[spec.ca]
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, spec.cn)]
        if spec.org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, spec.org))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if spec.server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if spec.client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if spec.server:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in _SANS_DNS]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _SANS_IP]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        write_private_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    sa_key_path, sa_pub_path = pki / "sa.key", pki / "sa.pub"
    if not (sa_key_path.exists() and sa_pub_path.exists()):
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_private_key(sa_key_path, sa_key)
        sa_pub_path.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def write_kubeconfig(
    path: Path, server: str, pki: Path, cert: str, user: str | None = None
) -> None:
    """A kubeconfig (JSON, which YAML readers accept) with the certificates embedded."""

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    user = user or cert
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubernaut-devstack",
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(f"{cert}.crt"),
                    "client-key-data": b64(f"{cert}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "kubernaut-devstack",
                "context": {"cluster": "kubernaut-devstack", "user": user},
            }
        ],
        "current-context": "kubernaut-devstack",
        "preferences": {},
    }
    data = json.dumps(config, indent=2) + "\n"
    with contextlib.suppress(OSError):
        if path.read_text() == data:
            return
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    path.with_suffix(".tmp").replace(path)


def write_kubeconfigs(layout: StateLayout, ports: Mapping[str, int]) -> None:
    """The admin's kubeconfig and one per component, for the API server on `ports`."""
    server = f"https://{LOOPBACK}:{ports['apiserver']}"
    write_kubeconfig(layout.kubeconfig, server, layout.pki, "admin", "kubernaut-admin")
    for user in COMPONENT_USERS:
        write_kubeconfig(layout.kubeconfigs / f"{user}.kubeconfig", server, layout.pki, user)
