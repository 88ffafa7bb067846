"""Certificates of `kubernaut certs init`: each names the identity authorization reads and
every host a client dials, locally and in the chart's cluster (Service kubernaut-<account>)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from kubernaut.runtime.certs import init_dev_pki


def test_a_certificate_names_the_spiffe_id_and_every_dialled_host(tmp_path: Path) -> None:
    (paths,) = init_dev_pki(
        tmp_path, ["alert-processor"], trust_domain="cluster.local", namespace="kubernaut"
    )
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://cluster.local/ns/kubernaut/sa/alert-processor"]
    dns = set(san.get_values_for_type(x509.DNSName))
    for host in ("alert-processor", "kubernaut-alert-processor"):
        assert {
            host,
            f"{host}.kubernaut",
            f"{host}.kubernaut.svc",
            f"{host}.kubernaut.svc.cluster.local",
        } <= dns
    assert "localhost" in dns
