"""A development PKI: one CA and one certificate per service, with SPIFFE identities.

Production meshes get certificates from Istio (transport `mesh`) or from the platform's
CA (cert-manager, SPIRE); `kubernaut certs init` makes the same shape locally so that
the `mtls` transport works on a laptop and in tests.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

# cryptography is imported by the functions that make keys and certificates (`certs init`,
# the dev stack, tests): a service only reads the files (CertPaths), and the library is
# some 8 MiB of RSS in each of the eleven processes.


def spiffe_id(trust_domain: str, namespace: str, account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{account}"


def person_spiffe_id(trust_domain: str, name: str) -> str:
    """The SPIFFE ID of a personal certificate: it names the person, in no namespace."""
    return f"spiffe://{trust_domain}/person/{name}"


@dataclass(frozen=True)
class CertPaths:
    """Where one identity's files live inside a certs directory."""

    certs_dir: Path
    account: str

    @property
    def ca(self) -> Path:
        return self.certs_dir / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.certs_dir / f"{self.account}.crt"

    @property
    def key(self) -> Path:
        return self.certs_dir / f"{self.account}.key"


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path`, readable by its owner only (0600) from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    """Write `key` as unencrypted PKCS#8 PEM, readable by its owner only (0600)."""
    from cryptography.hazmat.primitives import serialization

    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def create_ca(
    certs_dir: Path,
    *,
    common_name: str = "Kubernaut dev CA",
    days: int = 3650,
    name: str = "ca",
    path_length: int | None = 0,
) -> None:
    """Write `<name>.crt` and `<name>.key` into certs_dir (`path_length`: how many
    intermediate CAs may sit below it; None for no limit)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    certs_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_key(certs_dir / f"{name}.key", key)
    (certs_dir / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue_certificate(
    certs_dir: Path,
    account: str,
    *,
    trust_domain: str,
    namespace: str,
    days: int = 365,
) -> CertPaths:
    """Issue `<account>.crt/.key` signed by the CA in certs_dir.

    The URI SAN carries the SPIFFE identity that authorization reads; the DNS and IP
    SANs let clients verify the server by the names they dial, locally and in-cluster.
    """
    # In-cluster clients dial the chart's Service, kubernaut-<account>; the bare account
    # names serve installs that name Services after the accounts.
    dns_names = ["localhost"]
    for host in (account, f"kubernaut-{account}"):
        dns_names += [
            host,
            f"{host}.{namespace}",
            f"{host}.{namespace}.svc",
            f"{host}.{namespace}.svc.cluster.local",
        ]
    return _issue(
        certs_dir,
        account,
        common_name=account,
        uri=spiffe_id(trust_domain, namespace, account),
        dns_names=dns_names,
        server=True,
        days=days,
    )


def person_cert_name(name: str) -> str:
    """The file name (without .crt/.key) of a person's certificate in a certs dir."""
    return f"person-{name}"


def issue_person_certificate(
    certs_dir: Path, name: str, *, trust_domain: str, days: int = 30
) -> CertPaths:
    """Issue a personal client certificate, `person-<name>.crt/.key`: its SPIFFE ID
    spiffe://<trust domain>/person/<name> names the person (role bindings `cert:<name>`).
    Client authentication only, and short-lived."""
    if not name or "/" in name or not name.isprintable():
        raise ValueError(f"a person's name must be printable and without '/': {name!r}")
    return _issue(
        certs_dir,
        person_cert_name(name),
        common_name=name,
        uri=person_spiffe_id(trust_domain, name),
        dns_names=[],
        server=False,
        days=days,
    )


def _issue(
    certs_dir: Path,
    file_name: str,
    *,
    common_name: str,
    uri: str,
    dns_names: list[str],
    server: bool,
    days: int,
) -> CertPaths:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((certs_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs_dir / "ca.key").read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{certs_dir / 'ca.key'} is not an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        names += [x509.DNSName(name) for name in dns_names]
        names += [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = CertPaths(certs_dir, file_name)
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(paths.key, key)
    return paths


def init_dev_pki(
    certs_dir: Path,
    accounts: Iterable[str],
    *,
    trust_domain: str,
    namespace: str,
    force: bool = False,
) -> list[CertPaths]:
    """Create the CA (unless one exists and not force) and a certificate per account."""
    if force or not (certs_dir / "ca.crt").exists():
        create_ca(certs_dir)
    return [
        issue_certificate(certs_dir, account, trust_domain=trust_domain, namespace=namespace)
        for account in accounts
    ]
