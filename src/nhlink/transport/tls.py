"""TLS contexts for the device socket: server verification on by default, optional mTLS.

PROTOCOL.md §2.4: the device endpoint allows TLS 1.2 (1.3 only if the operator enables it), asks
for a client certificate without requiring it, and self-hosted servers often use a private CA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError
from . import pkcs11

__all__ = ["client_ssl_context"]

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]


def _readable(option: str, path: StrPath) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(option, f"no such file: {p}")
    if not os.access(p, os.R_OK):
        raise ConfigError(option, f"file is not readable: {p}")
    return p


def client_ssl_context(
    *,
    cafile: StrPath | None = None,
    certfile: StrPath | None = None,
    keyfile: StrPath | pkcs11.Pkcs11Key | None = None,
    chainfile: StrPath | None = None,
    dangerously_disable_verification: bool = False,
) -> ssl.SSLContext:
    """A client :class:`ssl.SSLContext`.

    * ``cafile``: CA bundle that signs the server (default: the system store).
    * ``certfile``/``keyfile``: the device certificate and its key, for mTLS; ``chainfile``: an
      optional signer (intermediate) CA certificate sent after the device certificate.
      ``keyfile`` may be a ``pkcs11:`` URI (``str``) or a parsed
      :class:`~nhlink.transport.pkcs11.Pkcs11Key`: a key in a token (a TPM through
      tpm2-pkcs11) that signs the handshake itself (docs/identity.md).
    * ``dangerously_disable_verification``: accept any server certificate. Development only — a
      warning is logged every time such a context is made.
    """
    if cafile is not None:
        _readable("ca_file", cafile)
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # §2.5: HTTP/1.1 only
    if dangerously_disable_verification:
        logger.warning(
            "TLS server certificate verification is DISABLED: any server can impersonate NervesHub"
        )
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if certfile is not None or keyfile is not None:
        if certfile is None or keyfile is None:
            raise ConfigError("device_cert", "device_cert and device_key must be given together")
        cert = _readable("device_cert", certfile)
        if isinstance(keyfile, pkcs11.Pkcs11Key) or pkcs11.is_pkcs11_uri(keyfile):
            token_key = (
                keyfile if isinstance(keyfile, pkcs11.Pkcs11Key) else pkcs11.parse_uri(str(keyfile))
            )
            if chainfile is None:
                pkcs11.use_token_key(ctx, cert, token_key)
            else:
                with _joined_chain(cert, _readable("device_chain", chainfile)) as joined:
                    pkcs11.use_token_key(ctx, joined, token_key)
            return ctx
        key = _readable("device_key", keyfile)
        if pkcs11.is_tss2_key_file(key):
            raise pkcs11.refuse_tss2_key(key)
        try:
            if chainfile is None:
                ctx.load_cert_chain(cert, key)
            else:
                chain = _readable("device_chain", chainfile)
                _load_with_chain(ctx, cert, key, chain)
        except ssl.SSLError as exc:
            raise ConfigError("device_cert", f"cannot load certificate/key pair: {exc}") from exc
    return ctx


def _load_with_chain(ctx: ssl.SSLContext, cert: Path, key: Path, chain: Path) -> None:
    # load_cert_chain takes the certificate and its chain from one file; the public parts are
    # joined in a short-lived temporary file (the private key never leaves its own file).
    with _joined_chain(cert, chain) as joined:
        ctx.load_cert_chain(joined, key)


@contextlib.contextmanager
def _joined_chain(cert: Path, chain: Path) -> Iterator[Path]:
    """The certificate and its chain in one short-lived temporary file (public parts only)."""
    data = cert.read_bytes().rstrip(b"\n") + b"\n" + chain.read_bytes()
    with tempfile.NamedTemporaryFile(prefix="nhlink-chain-", suffix=".pem") as tmp:
        tmp.write(data)
        tmp.flush()
        yield Path(tmp.name)
