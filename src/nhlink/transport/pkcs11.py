"""Device keys that never leave a token: PKCS#11 URIs (RFC 7512) for mTLS (docs/identity.md).

A TPM 2.0 becomes a PKCS#11 token with tpm2-pkcs11 (Debian: ``libtpm2-pkcs11-1``); the key is
created inside it and only the TPM can use it. OpenSSL reaches the token through the ``pkcs11``
engine of libp11 (Debian: ``libengine-pkcs11-openssl``), which OpenSSL 3 still runs. Python's
:mod:`ssl` takes keys from files only, so the key is handed to the context's ``SSL_CTX`` with
``SSL_CTX_use_PrivateKey`` through :mod:`ctypes`, on the very libssl/libcrypto the :mod:`ssl`
module runs on (checked: same version number, and the ``SSL_CTX`` found must report the
context's own options and verification mode, or nothing is done). The TLS handshake then signs
inside the token: the private key is never in this process's memory.

Why not the tpm2 OpenSSL *provider* with a ``TSS2 PRIVATE KEY`` file: with Debian 12's
tpm2-openssl 1.1.1 and OpenSSL 3.0, the handshake's signature is fetched from the default
provider (the TPM key "exports" its public half to it) and fails with "missing private key";
preferring the tpm2 provider moves hashing, ciphers and key exchange into the TPM as well.
tpm2-openssl 1.2.0 changed both (symmetric operations off, mTLS support); until that is what
gateways run, a TSS2 key file is refused here with that explanation (:func:`refuse_tss2_key`).

Only the URI's path attributes go to the engine. The query attributes are read here:
``module-path`` (the PKCS#11 module, required unless ``pkcs11_module`` is given),
``pin-source`` (``file:`` path or a plain path: the PIN file, read at configuration time) and
``pin-value`` (inline PIN; discouraged). The PIN is never logged; :func:`redact` shows a URI
without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from ..errors import ConfigError

__all__ = [
    "TSS2_HEADER",
    "Pkcs11Key",
    "is_pkcs11_uri",
    "is_tss2_key_file",
    "make_csr",
    "parse_uri",
    "redact",
    "refuse_tss2_key",
    "test_signature",
    "use_token_key",
]

logger = logging.getLogger(__name__)

TSS2_HEADER = b"-----BEGIN TSS2 PRIVATE KEY-----"
_ENGINE_ID = b"pkcs11"


def is_pkcs11_uri(value: object) -> bool:
    return isinstance(value, str) and value.lower().startswith("pkcs11:")


def is_tss2_key_file(path: Path) -> bool:
    """True when ``path`` holds a ``TSS2 PRIVATE KEY`` PEM (a TPM-wrapped key)."""
    try:
        with path.open("rb") as f:
            return f.read(4096).lstrip().startswith(TSS2_HEADER)
    except OSError:
        return False


def refuse_tss2_key(path: Path) -> ConfigError:
    return ConfigError(
        "device_key",
        f"{path} is a TSS2 PRIVATE KEY (a TPM key for the tpm2 OpenSSL provider). TLS client "
        "authentication with it needs tpm2-openssl >= 1.2.0; with Debian 12's 1.1.1 on OpenSSL "
        "3.0 the handshake signature cannot be made in the TPM. Use the TPM as a PKCS#11 token "
        'instead (tpm2-pkcs11): device_key = "pkcs11:token=...;object=...;type=private'
        '?module-path=...&pin-source=..." — see docs/identity.md',
    )


@dataclass(frozen=True)
class Pkcs11Key:
    """A parsed PKCS#11 key URI: ``engine_uri`` (path attributes only, what the engine gets),
    ``module`` (the PKCS#11 module), ``pin`` (from pin-source or pin-value; never shown)."""

    engine_uri: str
    module: str
    pin: str | None = None

    def __repr__(self) -> str:
        pin = "'***'" if self.pin else "None"
        return f"Pkcs11Key({self.engine_uri!r}, module={self.module!r}, pin={pin})"


def redact(uri: str) -> str:
    """The URI without ``pin-value`` (for logs and messages)."""
    path, _, query = uri.partition("?")
    kept = [p for p in query.split("&") if p and not p.lower().startswith("pin-value=")]
    path_parts = [p for p in path.split(";") if not p.lower().startswith("pin-value=")]
    return ";".join(path_parts) + (("?" + "&".join(kept)) if kept else "")


def parse_uri(uri: str, module: str | os.PathLike[str] | None = None) -> Pkcs11Key:
    """Split a ``pkcs11:`` URI; ConfigError (URI redacted) when it cannot name a private key."""
    if not is_pkcs11_uri(uri):
        raise ConfigError("device_key", f"not a PKCS#11 URI: {redact(uri)!r}")
    path, _, query = uri[len("pkcs11:") :].partition("?")
    attrs: dict[str, str] = {}
    for part in filter(None, path.split(";")):
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigError("device_key", f"malformed PKCS#11 URI attribute {name!r}")
        attrs[name.lower()] = value
    queries: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        name, _, value = part.partition("=")
        queries[name.lower()] = unquote(value)
    if "object" not in attrs and "id" not in attrs:
        raise ConfigError("device_key", "a PKCS#11 URI must name the key: object=... or id=...")
    if attrs.get("type", "private") != "private":
        raise ConfigError("device_key", "the PKCS#11 URI must name a private key (type=private)")
    pin = attrs.pop("pin-value", None) or queries.get("pin-value")
    source = queries.get("pin-source")
    if source is not None:
        pin_file = Path(source[len("file:") :] if source.startswith("file:") else source)
        try:
            pin = pin_file.read_text().strip()
        except OSError as exc:
            raise ConfigError("device_key", f"cannot read the PIN file {pin_file}: {exc}") from None
    module_path = queries.get("module-path") or (os.fspath(module) if module else None)
    if not module_path:
        raise ConfigError(
            "device_key",
            "the PKCS#11 URI needs ?module-path=/path/to/module.so (e.g. Debian's "
            "/usr/lib/<arch>/pkcs11/libtpm2_pkcs11.so for a TPM)",
        )
    if not Path(module_path).is_file():
        raise ConfigError("device_key", f"no such PKCS#11 module: {module_path}")
    attrs.setdefault("type", "private")
    engine_uri = "pkcs11:" + ";".join(f"{k}={v}" for k, v in attrs.items())
    return Pkcs11Key(engine_uri, module_path, pin)


# -- OpenSSL through ctypes ------------------------------------------------------------------


class _OpenSSL:
    """libcrypto and libssl, the very ones the ssl module runs on, with the prototypes used."""

    def __init__(self) -> None:
        crypto_path, ssl_path = _loaded_libraries()
        self.crypto = ctypes.CDLL(crypto_path)
        self.ssl = ctypes.CDLL(ssl_path)
        c, s, vp = self.crypto, self.ssl, ctypes.c_void_p
        c.OpenSSL_version_num.restype = ctypes.c_ulong
        if c.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
            raise ConfigError(
                "device_key",
                f"{crypto_path} is not the OpenSSL the ssl module runs on "
                f"({ssl.OPENSSL_VERSION}); cannot use a token key",
            )
        for lib, name, res, args in (
            (c, "ENGINE_by_id", vp, [ctypes.c_char_p]),
            (
                c,
                "ENGINE_ctrl_cmd_string",
                ctypes.c_int,
                [vp, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int],
            ),
            (c, "ENGINE_init", ctypes.c_int, [vp]),
            (c, "ENGINE_free", ctypes.c_int, [vp]),
            (c, "ENGINE_load_private_key", vp, [vp, ctypes.c_char_p, vp, vp]),
            (c, "EVP_PKEY_free", None, [vp]),
            (c, "EVP_sha256", vp, []),
            (c, "EVP_MD_CTX_new", vp, []),
            (c, "EVP_MD_CTX_free", None, [vp]),
            (c, "EVP_DigestSignInit", ctypes.c_int, [vp, vp, vp, vp, vp]),
            (
                c,
                "EVP_DigestSign",
                ctypes.c_int,
                [vp, vp, ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p, ctypes.c_size_t],
            ),
            (c, "EVP_DigestVerifyInit", ctypes.c_int, [vp, vp, vp, vp, vp]),
            (
                c,
                "EVP_DigestVerify",
                ctypes.c_int,
                [vp, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t],
            ),
            (c, "BIO_new_file", vp, [ctypes.c_char_p, ctypes.c_char_p]),
            (c, "BIO_new", vp, [vp]),
            (c, "BIO_s_mem", vp, []),
            (c, "BIO_ctrl", ctypes.c_long, [vp, ctypes.c_int, ctypes.c_long, vp]),
            (c, "BIO_free", ctypes.c_int, [vp]),
            (c, "PEM_read_bio_X509", vp, [vp, vp, vp, vp]),
            (c, "X509_get0_pubkey", vp, [vp]),
            (c, "X509_free", None, [vp]),
            (c, "X509_REQ_new", vp, []),
            (c, "X509_REQ_free", None, [vp]),
            (c, "X509_REQ_set_version", ctypes.c_int, [vp, ctypes.c_long]),
            (c, "X509_REQ_set_subject_name", ctypes.c_int, [vp, vp]),
            (c, "X509_REQ_set_pubkey", ctypes.c_int, [vp, vp]),
            (c, "X509_REQ_sign", ctypes.c_int, [vp, vp, vp]),
            (c, "PEM_write_bio_X509_REQ", ctypes.c_int, [vp, vp]),
            (c, "X509_NAME_new", vp, []),
            (c, "X509_NAME_free", None, [vp]),
            (
                c,
                "X509_NAME_add_entry_by_txt",
                ctypes.c_int,
                [
                    vp,
                    ctypes.c_char_p,
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_int,
                    ctypes.c_int,
                    ctypes.c_int,
                ],
            ),
            (c, "ERR_get_error", ctypes.c_ulong, []),
            (c, "ERR_error_string_n", None, [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_size_t]),
            (c, "ERR_clear_error", None, []),
            (s, "SSL_CTX_use_certificate_chain_file", ctypes.c_int, [vp, ctypes.c_char_p]),
            (s, "SSL_CTX_use_PrivateKey", ctypes.c_int, [vp, vp]),
            (s, "SSL_CTX_check_private_key", ctypes.c_int, [vp]),
            (s, "SSL_CTX_get_options", ctypes.c_uint64, [vp]),
            (s, "SSL_CTX_get_verify_mode", ctypes.c_int, [vp]),
        ):
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args

    def errors(self) -> str:
        """The OpenSSL error queue as text (and cleared)."""
        texts: list[str] = []
        while code := self.crypto.ERR_get_error():
            buf = ctypes.create_string_buffer(256)
            self.crypto.ERR_error_string_n(code, buf, len(buf))
            texts.append(buf.value.decode(errors="replace"))
        return "; ".join(texts) or "no detail from OpenSSL"


def _loaded_libraries() -> tuple[str, str]:
    """Paths of the libcrypto and libssl mapped into this process by the ssl module."""
    import _ssl  # noqa: F401  (maps libssl/libcrypto)

    found: dict[str, str] = {}
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                name = os.path.basename(path)
                for lib in ("libcrypto", "libssl"):
                    if name.startswith((lib + ".so", lib + "-")):
                        found.setdefault(lib, path)
    except OSError:
        pass
    for lib, short in (("libcrypto", "crypto"), ("libssl", "ssl")):
        if lib not in found:
            located = ctypes.util.find_library(short)
            if located is None:
                raise ConfigError(
                    "device_key",
                    f"cannot find the {lib} the ssl module uses (statically linked?); "
                    "a token key needs it",
                )
            found[lib] = located
    return found["libcrypto"], found["libssl"]


_lock = threading.Lock()
_openssl: _OpenSSL | None = None
_engines: dict[str, int] = {}  # module path -> initialised ENGINE* (kept for the process)


def _lib() -> _OpenSSL:
    global _openssl
    if ssl.OPENSSL_VERSION_INFO < (1, 1, 1):
        raise ConfigError(
            "device_key", f"token keys need OpenSSL >= 1.1.1; Python uses {ssl.OPENSSL_VERSION}"
        )
    if _openssl is None:
        _openssl = _OpenSSL()
    return _openssl


def _engine(lib: _OpenSSL, key: Pkcs11Key) -> int:
    engine = _engines.get(key.module)
    if engine is not None:
        return engine
    lib.crypto.ERR_clear_error()
    handle = lib.crypto.ENGINE_by_id(_ENGINE_ID)
    if not handle:
        raise ConfigError(
            "device_key",
            f"OpenSSL ({ssl.OPENSSL_VERSION}) has no pkcs11 engine ({lib.errors()}): install "
            "libp11's engine (Debian/Ubuntu: apt install libengine-pkcs11-openssl)",
        )
    if not lib.crypto.ENGINE_ctrl_cmd_string(handle, b"MODULE_PATH", key.module.encode(), 0):
        lib.crypto.ENGINE_free(handle)
        raise ConfigError("device_key", f"pkcs11 engine refused MODULE_PATH: {lib.errors()}")
    if not lib.crypto.ENGINE_init(handle):
        lib.crypto.ENGINE_free(handle)
        raise ConfigError(
            "device_key",
            f"the PKCS#11 module {key.module} did not initialise ({lib.errors()}): for a TPM, "
            "check that it is reachable (/dev/tpmrm0, or TPM2_PKCS11_TCTI) and the token store "
            "(TPM2_PKCS11_STORE)",
        )
    _engines[key.module] = handle
    return int(handle)


def _ssl_ctx_pointer(lib: _OpenSSL, context: ssl.SSLContext) -> int:
    """The ``SSL_CTX*`` of ``context``: CPython's ``PySSLContext`` starts with it right after
    the object header. Refused unless that SSL_CTX reports the context's own settings."""
    if not isinstance(context, ssl.SSLContext):
        raise TypeError("an ssl.SSLContext is needed")
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        raise ConfigError("device_key", "cannot reach this Python's SSL_CTX")
    # SSL_VERIFY_PEER (1) | SSL_VERIFY_FAIL_IF_NO_PEER_CERT (2), as _ssl sets them.
    verify = lib.ssl.SSL_CTX_get_verify_mode(pointer) & 3
    expected_verify = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}
    if (
        lib.ssl.SSL_CTX_get_options(pointer) != int(context.options)
        or verify != expected_verify[context.verify_mode]
    ):
        raise ConfigError(
            "device_key",
            "this Python's ssl module does not lay out SSLContext as expected; token keys are "
            "not supported on it",
        )
    return int(pointer)


def _load_key(lib: _OpenSSL, key: Pkcs11Key) -> int:
    """The token key as an ``EVP_PKEY*`` (the caller frees or keeps it)."""
    engine = _engine(lib, key)
    lib.crypto.ERR_clear_error()
    if key.pin is not None and not lib.crypto.ENGINE_ctrl_cmd_string(
        engine, b"PIN", key.pin.encode(), 0
    ):
        raise ConfigError("device_key", f"pkcs11 engine refused the PIN: {lib.errors()}")
    pkey = lib.crypto.ENGINE_load_private_key(engine, key.engine_uri.encode(), None, None)
    if not pkey:
        raise ConfigError(
            "device_key",
            f"cannot load {key.engine_uri} from {key.module} ({lib.errors()}); a token key "
            "works only with the token (TPM) that holds it: a copied store on another device, "
            "or after the TPM was cleared, cannot be used",
        )
    return int(pkey)


def make_csr(key: Pkcs11Key, common_name: str) -> bytes:
    """A PEM certificate signing request for the token key with subject ``CN=common_name``,
    signed (SHA-256) inside the token: what the product's CA signs (docs/identity.md)."""
    with _lock:
        lib = _lib()
        c = lib.crypto
        pkey = _load_key(lib, key)
        req = c.X509_REQ_new()
        name = c.X509_NAME_new()
        bio = c.BIO_new(c.BIO_s_mem())
        try:
            mbstring_utf8 = 0x1000 | 1
            if not (
                c.X509_REQ_set_version(req, 0)
                and c.X509_NAME_add_entry_by_txt(
                    name, b"CN", mbstring_utf8, common_name.encode(), -1, -1, 0
                )
                and c.X509_REQ_set_subject_name(req, name)
                and c.X509_REQ_set_pubkey(req, pkey)
                and c.X509_REQ_sign(req, pkey, c.EVP_sha256()) > 0
                and c.PEM_write_bio_X509_REQ(bio, req)
            ):
                raise ConfigError("device_key", f"cannot make the CSR: {lib.errors()}")
            data = ctypes.c_void_p()
            size = c.BIO_ctrl(bio, 3, 0, ctypes.byref(data))  # BIO_get_mem_data
            return ctypes.string_at(data.value, size) if data.value else b""
        finally:
            c.BIO_free(bio)
            c.X509_NAME_free(name)
            c.X509_REQ_free(req)
            c.EVP_PKEY_free(pkey)


def test_signature(certfile: Path, key: Pkcs11Key) -> str:
    """Sign random bytes with the token key and verify the signature with ``certfile``'s public
    key. Returns a one-line account; ConfigError when either step fails."""
    with _lock:
        lib = _lib()
        c = lib.crypto
        pkey = _load_key(lib, key)
        data = os.urandom(32)
        sign_ctx = c.EVP_MD_CTX_new()
        verify_ctx = c.EVP_MD_CTX_new()
        bio = c.BIO_new_file(os.fsencode(certfile), b"r")
        cert = c.PEM_read_bio_X509(bio, None, None, None) if bio else None
        try:
            if not cert:
                raise ConfigError("device_cert", f"cannot read {certfile}: {lib.errors()}")
            size = ctypes.c_size_t(0)
            if not (
                c.EVP_DigestSignInit(sign_ctx, None, c.EVP_sha256(), None, pkey) == 1
                and c.EVP_DigestSign(sign_ctx, None, ctypes.byref(size), data, len(data)) == 1
            ):
                raise ConfigError("device_key", f"the token cannot sign: {lib.errors()}")
            signature = ctypes.create_string_buffer(size.value)
            if c.EVP_DigestSign(sign_ctx, signature, ctypes.byref(size), data, len(data)) != 1:
                raise ConfigError("device_key", f"the token refused to sign: {lib.errors()}")
            public = c.X509_get0_pubkey(cert)
            if not (
                public
                and c.EVP_DigestVerifyInit(verify_ctx, None, c.EVP_sha256(), None, public) == 1
                and c.EVP_DigestVerify(
                    verify_ctx, signature.raw[: size.value], size.value, data, 32
                )
                == 1
            ):
                lib.errors()
                raise ConfigError(
                    "device_key",
                    f"the token's signature does not verify with {certfile}: the key and the "
                    "certificate do not belong together",
                )
            return (
                f"a SHA-256 signature ({size.value} bytes) made in the token verified with the "
                f"public key of {certfile}"
            )
        finally:
            if cert:
                c.X509_free(cert)
            if bio:
                c.BIO_free(bio)
            c.EVP_MD_CTX_free(sign_ctx)
            c.EVP_MD_CTX_free(verify_ctx)
            c.EVP_PKEY_free(pkey)


def use_token_key(context: ssl.SSLContext, certfile: Path, key: Pkcs11Key) -> None:
    """Load ``certfile`` (certificate, then any chain) and the token key ``key`` into
    ``context``. ConfigError (never showing the PIN) when the engine, module, token or key is
    missing, or the key does not match the certificate."""
    with _lock:
        lib = _lib()
        pointer = _ssl_ctx_pointer(lib, context)
        pkey = _load_key(lib, key)
        try:
            if lib.ssl.SSL_CTX_use_certificate_chain_file(pointer, os.fsencode(certfile)) != 1:
                raise ConfigError("device_cert", f"cannot load {certfile}: {lib.errors()}")
            # The SSL_CTX takes its own reference to the key; ours is released below.
            if lib.ssl.SSL_CTX_use_PrivateKey(pointer, pkey) != 1:
                raise ConfigError("device_key", f"SSL_CTX_use_PrivateKey failed: {lib.errors()}")
            if lib.ssl.SSL_CTX_check_private_key(pointer) != 1:
                raise ConfigError(
                    "device_key",
                    f"the key {key.engine_uri} does not belong to the certificate {certfile} "
                    f"({lib.errors()})",
                )
        finally:
            lib.crypto.EVP_PKEY_free(pkey)
    logger.info("device key: %s in %s (PKCS#11, signs in the token)", key.engine_uri, key.module)
