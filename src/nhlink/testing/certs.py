"""A throw-away test PKI for mTLS against :class:`~nhlink.testing.FakeHub`.

:func:`create_pki` writes, into a directory, PEM files for

* a device CA (the org's registered CA, §3.1) — trusted by the hub,
* a server certificate for ``localhost``, ``127.0.0.1`` and ``::1`` signed by that CA, so a
  client that trusts ``ca.cert`` can verify the hub,
* a second, *untrusted* CA, to issue certificates the hub must refuse;

and :meth:`PKI.device` issues device certificates whose subject CN is the device identifier,
with Authority/Subject Key Identifier extensions as NervesHub requires. Keys are EC P-256.

``cryptography`` is a test/dev dependency, not a runtime one: it is imported only when a
function here is called. The SSL-context helpers need only the standard library.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "PKI",
    "CertPair",
    "client_ssl_context",
    "create_pki",
    "issue_device_certs",
    "server_ssl_context",
    "sign_device_csr",
]


@dataclass(frozen=True)
class CertPair:
    """Paths of a PEM certificate and its unencrypted PKCS#8 PEM private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    """The files written by :func:`create_pki`."""

    __test__ = False  # not a pytest test class, whatever it is imported as

    directory: Path
    ca: CertPair
    server: CertPair
    untrusted_ca: CertPair

    def device(self, identifier: str, *, trusted: bool = True) -> CertPair:
        """Issue a device certificate with subject CN ``identifier`` (no CN if empty).

        Signed by :attr:`ca` (``trusted=True``) or :attr:`untrusted_ca`. Writes
        ``device-<identifier>[-untrusted].{crt,key}`` and returns their paths.
        """
        return issue_device_cert(self, identifier, trusted=trusted)

    def sign_csr(self, csr_pem: bytes, cert_path: str | os.PathLike[str]) -> Path:
        """See :func:`sign_device_csr`."""
        return sign_device_csr(self, csr_pem, cert_path)

    def server_context(self, *, mtls: bool = True, tls13: bool = False) -> ssl.SSLContext:
        """See :func:`server_ssl_context`."""
        return server_ssl_context(self, mtls=mtls, tls13=tls13)

    def client_context(self, device: CertPair | None = None) -> ssl.SSLContext:
        """See :func:`client_ssl_context`."""
        return client_ssl_context(self, device)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write(pair: CertPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertPair:
    from cryptography.hazmat.primitives import serialization

    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(pair.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    return pair


def _load(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pair.key} is not an EC private key")
    return cert, key


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any, days: int) -> Any:
    from cryptography import x509

    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _make_ca(pair: CertPair, common_name: str) -> CertPair:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nhlink FakeHub"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    cert = (
        _builder(name, name, key.public_key(), 3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return _write(pair, cert, key)


def _issue(
    pair: CertPair,
    issuer_pair: CertPair,
    subject: x509.Name,
    extensions: list[tuple[Any, bool]],
) -> CertPair:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    issuer_cert, issuer_key = _load(issuer_pair)
    key = _new_key()
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _builder(subject, issuer_cert.subject, key.public_key(), 365)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # §3.1: NervesHub matches the certificate's AKI against a registered CA's SKI.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return _write(pair, builder.sign(issuer_key, hashes.SHA256()), key)


def _key_usage() -> Any:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def create_pki(directory: str | os.PathLike[str]) -> PKI:
    """Create the CA, server certificate and untrusted CA in ``directory`` (created if needed).

    Files: ``ca.crt``/``ca.key``, ``server.crt``/``server.key``,
    ``untrusted-ca.crt``/``untrusted-ca.key``.
    """
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(CertPair(root / "ca.crt", root / "ca.key"), "FakeHub Test Device CA")
    untrusted = _make_ca(
        CertPair(root / "untrusted-ca.crt", root / "untrusted-ca.key"), "FakeHub Untrusted CA"
    )
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    server = _issue(
        CertPair(root / "server.crt", root / "server.key"),
        ca,
        server_name,
        [
            (san, False),
            (_key_usage(), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    return PKI(root, ca, server, untrusted)


def issue_device_cert(pki: PKI, identifier: str, *, trusted: bool = True) -> CertPair:
    """Issue a device certificate (subject CN = ``identifier``); see :meth:`PKI.device`."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nhlink FakeHub devices")]
    if identifier:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, identifier))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in identifier) or "no-cn"
    suffix = "" if trusted else "-untrusted"
    pair = CertPair(
        pki.directory / f"device-{safe}{suffix}.crt", pki.directory / f"device-{safe}{suffix}.key"
    )
    return _issue(
        pair,
        pki.ca if trusted else pki.untrusted_ca,
        x509.Name(attributes),
        [
            (_key_usage(), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ],
    )


def sign_device_csr(pki: PKI, csr_pem: bytes, cert_path: str | os.PathLike[str]) -> Path:
    """What a product's CA does with a device's CSR (docs/identity.md): check its signature
    (the device holds the key), then issue a device certificate for its public key and subject
    (the CN is the device identifier, §3.1), signed by :attr:`PKI.ca`. Writes ``cert_path``;
    no private key is involved on this side. ValueError for a CSR whose signature is wrong."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    csr = x509.load_pem_x509_csr(csr_pem)
    if not csr.is_signature_valid:
        raise ValueError("the CSR's signature does not verify: not made with its own key")
    issuer_cert, issuer_key = _load(pki.ca)
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(csr.subject, issuer_cert.subject, csr.public_key(), 365)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    path = Path(cert_path)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def issue_device_certs(ca: CertPair, directory: Path, identifiers: Sequence[str]) -> int:
    """Sign one device certificate per identifier with ``ca`` (loaded once): writes
    ``<identifier>.crt`` and ``<identifier>.key`` (0600) into ``directory`` (``nhlink fleet
    make-certs``). Returns how many were written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    issuer_cert, issuer_key = _load(ca)
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    directory.mkdir(parents=True, exist_ok=True)
    for identifier in identifiers:
        if not identifier or "/" in identifier or identifier.startswith("."):
            raise ValueError(f"not usable as a file name: {identifier!r}")
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identifier)])
        cert = (
            _builder(subject, issuer_cert.subject, key.public_key(), 365)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(aki, critical=False)
            .add_extension(_key_usage(), critical=True)
            .add_extension(usage, critical=False)
            .sign(issuer_key, hashes.SHA256())
        )
        _write(
            CertPair(directory / f"{identifier}.crt", directory / f"{identifier}.key"), cert, key
        )
    return len(identifiers)


def server_ssl_context(pki: PKI, *, mtls: bool = True, tls13: bool = False) -> ssl.SSLContext:
    """A server context for FakeHub(tls=...), like NervesHub's device endpoint (§2.4).

    With ``mtls`` it *requests* a client certificate but does not require one
    (``CERT_OPTIONAL``), trusting only :attr:`PKI.ca`: a certificate from another CA fails the
    handshake. TLS 1.2 only unless ``tls13`` (the real default, ``DEVICE_ENABLE_TLS_13``).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls13:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pki.server.cert, pki.server.key)
    if mtls:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cafile=pki.ca.cert)
    return context


def client_ssl_context(pki: PKI, device: CertPair | None = None) -> ssl.SSLContext:
    """A client context that verifies the hub against :attr:`PKI.ca` (host name checked) and,
    with ``device``, presents that certificate."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if device is not None:
        context.load_cert_chain(device.cert, device.key)
    return context
