"""Certificates and keys for the test control plane, generated with ``cryptography``.

One self-signed CA signs:

* the kube-apiserver serving certificate (SANs: localhost, 127.0.0.1, the in-cluster
  service names and the first service-cluster IP),
* the etcd serving/peer certificate and the apiserver's etcd client certificate,
* client certificates: ``admin`` (group ``system:masters``), ``system:kube-controller-manager``,
  ``system:kube-scheduler`` and ``kwok`` (group ``system:masters``, because kwok patches
  node and pod status),
* the front-proxy client certificate that the aggregation layer needs.

A separate RSA key signs and verifies service-account tokens.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = _dt.timedelta(days=7)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertBundle:
    """Paths of everything :func:`generate` wrote."""

    dir: Path
    ca: CertPair
    apiserver: CertPair
    etcd: CertPair
    etcd_client: CertPair
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    kwok: CertPair
    front_proxy_client: CertPair
    service_account_key: Path
    service_account_pub: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def sign(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    is_ca: bool = False,
    server: bool = False,
    client: bool = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    validity: _dt.timedelta = _VALIDITY,
) -> x509.Certificate:
    """A certificate for ``public_key`` signed by ``issuer_key``: a CA (cert and CRL signing), or a
    leaf for server and/or client auth; the SANs are ``dns`` and ``ips``. (Also Kueue's webhook CA
    and serving certificate, tests/cluster/kueue.py.)"""
    now = _dt.datetime.now(_dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(
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
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def generate(directory: Path, *, service_ip: str = "10.0.0.1", extra_ips: tuple[str, ...] = ()) -> CertBundle:
    """Write a CA, serving and client certificates and the service-account key pair.

    ``extra_ips``: more addresses for the apiserver's serving certificate (the real node's pods
    reach it on the node bridge's address, see node.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_name = _name("rlaif-test-ca")
    ca_cert = sign(
        subject=ca_name, public_key=ca_key.public_key(), issuer=ca_name, issuer_key=ca_key, is_ca=True
    )
    ca = CertPair(directory / "ca.crt", directory / "ca.key")
    _write_cert(ca.cert, ca_cert)
    _write_key(ca.key, ca_key)

    def leaf(
        stem: str,
        cn: str,
        orgs: tuple[str, ...] = (),
        *,
        server: bool = False,
        client: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
    ) -> CertPair:
        key = _new_key()
        cert = sign(
            subject=_name(cn, orgs),
            public_key=key.public_key(),
            issuer=ca_name,
            issuer_key=ca_key,
            server=server,
            client=client,
            dns=dns,
            ips=ips,
        )
        pair = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
        _write_cert(pair.cert, cert)
        _write_key(pair.key, key)
        return pair

    local_dns = ("localhost",)
    local_ips = ("127.0.0.1", "::1")
    apiserver = leaf(
        "apiserver",
        "kube-apiserver",
        server=True,
        dns=(
            *local_dns,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=(*local_ips, service_ip, *extra_ips),
    )
    etcd = leaf("etcd", "etcd", server=True, client=True, dns=local_dns, ips=local_ips)
    etcd_client = leaf("etcd-client", "kube-apiserver-etcd-client", client=True)
    admin = leaf("admin", "admin", ("system:masters",), client=True)
    controller_manager = leaf("kube-controller-manager", "system:kube-controller-manager", client=True)
    scheduler = leaf("kube-scheduler", "system:kube-scheduler", client=True)
    kwok = leaf("kwok", "kwok-controller", ("system:masters",), client=True)
    front_proxy_client = leaf("front-proxy-client", "front-proxy-client", client=True)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key_path = directory / "sa.key"
    sa_pub_path = directory / "sa.pub"
    _write_key(sa_key_path, sa_key)
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return CertBundle(
        dir=directory,
        ca=ca,
        apiserver=apiserver,
        etcd=etcd,
        etcd_client=etcd_client,
        admin=admin,
        controller_manager=controller_manager,
        scheduler=scheduler,
        kwok=kwok,
        front_proxy_client=front_proxy_client,
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
    )


def issue(
    ca: CertPair,
    directory: Path,
    stem: str,
    cn: str,
    orgs: tuple[str, ...] = (),
    *,
    server: bool = False,
    client: bool = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> CertPair:
    """One more leaf certificate signed by an existing CA (the real node's kubelet and kube-proxy)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _new_key()
    cert = sign(
        subject=_name(cn, orgs),
        public_key=key.public_key(),
        issuer=ca_cert.subject,
        issuer_key=ca_key,
        server=server,
        client=client,
        dns=dns,
        ips=ips,
    )
    pair = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    _write_cert(pair.cert, cert)
    _write_key(pair.key, key)
    return pair
