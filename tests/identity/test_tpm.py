"""A device key inside a (software) TPM: mTLS to the test hub with a key that never leaves it.

Real parts: swtpm (a TPM 2.0 simulator) behind tpm2-abrmd, a tpm2-pkcs11 token whose key is
created inside the TPM, libp11's pkcs11 engine in OpenSSL, the project's FakeHub over mTLS on
127.0.0.1. The device runs in a child process (the engine and the PKCS#11 module are
process-wide). Skipped, with the packages to install, where they are missing; CI installs them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nhlink.config import LinkConfig
from nhlink.errors import ConfigError
from nhlink.testing import FakeHub
from nhlink.testing.certs import PKI, create_pki
from nhlink.testing.tpm import SoftTPM, missing
from tests.support import FAST_LINK, META

needs_tpm = pytest.mark.skipif(
    bool(missing()), reason="needs Debian packages: " + " ".join(missing())
)

DEVICE = "gw-tpm-0001"

CHILD = r"""
import asyncio, json, sys
import nhlink
from nhlink.errors import ConfigError

async def main() -> None:
    options = json.loads(sys.argv[1])
    try:
        link = nhlink.NervesHubLink(**options)
    except ConfigError as exc:
        print("CONFIG-ERROR", exc, flush=True)
        return
    async with link:
        status = await link.wait_joined(20)
        print("JOINED", status.state.value, flush=True)

asyncio.run(main())
"""


@pytest.fixture
def tpm(tmp_path: Path) -> Iterator[SoftTPM]:
    with SoftTPM(tmp_path / "tpm") as soft:
        yield soft


def nhlink_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``nhlink ARGS`` in a child process that reaches the TPM through ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "nhlink", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def provision(tpm: SoftTPM, pki: PKI, tmp_path: Path) -> tuple[str, Path]:
    """The provisioning path of docs/identity.md: key made in the TPM (tpm2_ptool), CSR signed
    in it (``nhlink key csr``), certificate issued by the product's CA."""
    uri = tpm.create_key()
    csr = tmp_path / "device.csr"
    done = nhlink_cli(tpm.env(), "key", "csr", "--key", uri, "--cn", DEVICE, "--out", str(csr))
    assert done.returncode == 0, done.stderr
    cert = pki.sign_csr(csr.read_bytes(), tmp_path / "device.crt")
    return uri, cert


async def run_device(env: dict[str, str], options: dict[str, object]) -> str:
    import json

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        json.dumps(options, default=str),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


def device_options(hub: FakeHub, pki: PKI, cert: Path, key: str) -> dict[str, object]:
    return {
        "host": "127.0.0.1",
        "port": hub.port,
        "ssl": True,
        "device_cert": str(cert),
        "device_key": key,
        "ca_file": str(pki.ca.cert),
        "firmware_meta": META,
        "name": "tpm",
        **FAST_LINK,
        "serializer": "json",
    }


@needs_tpm
async def test_device_joins_with_a_key_held_by_the_tpm(tpm: SoftTPM, tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki")
    uri, cert = provision(tpm, pki, tmp_path)
    async with FakeHub(tls=pki.server_context()) as hub:
        out = await run_device(tpm.env(), device_options(hub, pki, cert, uri))
        assert "JOINED" in out, out
        record = hub.devices[DEVICE]
        assert record.auth == "certificate"
        assert record.joins >= 1


@needs_tpm
def test_key_test_signs_in_the_token_and_catches_a_mismatch(tpm: SoftTPM, tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki")
    uri, cert = provision(tpm, pki, tmp_path)
    done = nhlink_cli(tpm.env(), "key", "test", "--key", uri, "--cert", str(cert))
    assert done.returncode == 0, done.stderr
    assert "made in the token verified with the public key" in done.stdout
    assert "pkcs11:token=nhlink;object=device;type=private" in done.stdout
    assert "1234" not in done.stdout + done.stderr
    other = pki.device("someone-else")
    done = nhlink_cli(tpm.env(), "key", "test", "--key", uri, "--cert", str(other.cert))
    assert done.returncode == 2
    assert "do not belong together" in done.stderr


@needs_tpm
async def test_a_copied_store_without_its_tpm_is_useless(tpm: SoftTPM, tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki")
    uri, cert = provision(tpm, pki, tmp_path)
    # Another device: its own TPM, and a copy of the first one's token store (the key blobs).
    with SoftTPM(tmp_path / "thief") as thief:
        shutil.rmtree(thief.store)
        shutil.copytree(tpm.store, thief.store)
        async with FakeHub(tls=pki.server_context()) as hub:
            out = await run_device(thief.env(), device_options(hub, pki, cert, uri))
            assert "CONFIG-ERROR" in out and "cannot load" in out, out
            assert "1234" not in out  # the PIN is never shown
            assert DEVICE not in hub.devices


def test_uri_checks_and_redaction(tmp_path: Path) -> None:
    from nhlink.transport import pkcs11

    module = tmp_path / "module.so"
    module.write_bytes(b"")
    good = f"pkcs11:token=t;object=k;type=private;pin-value=9876?module-path={module}"
    key = pkcs11.parse_uri(good)
    assert key.engine_uri == "pkcs11:token=t;object=k;type=private"
    assert key.pin == "9876" and "9876" not in repr(key)
    assert "9876" not in pkcs11.redact(good)
    with pytest.raises(ConfigError, match="module-path"):
        pkcs11.parse_uri("pkcs11:token=t;object=k")
    with pytest.raises(ConfigError, match="no such PKCS#11 module"):
        pkcs11.parse_uri("pkcs11:object=k?module-path=/nonexistent.so")
    with pytest.raises(ConfigError, match=r"object=\.\.\. or id"):
        pkcs11.parse_uri(f"pkcs11:token=t?module-path={module}")
    with pytest.raises(ConfigError, match="type=private"):
        pkcs11.parse_uri(f"pkcs11:object=k;type=public?module-path={module}")
    with pytest.raises(ConfigError, match="PIN file"):
        pkcs11.parse_uri(f"pkcs11:object=k?module-path={module}&pin-source=file:/nonexistent")


def test_tss2_key_file_refused_with_the_reason(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki")
    device = pki.device(DEVICE)
    tss2 = tmp_path / "device.tss2.pem"
    tss2.write_text("-----BEGIN TSS2 PRIVATE KEY-----\nMIIB\n-----END TSS2 PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=r"tpm2-openssl >= 1\.2\.0"):
        LinkConfig.build(
            host="127.0.0.1",
            device_cert=device.cert,
            device_key=tss2,
            firmware_meta=META,
        )


@needs_tpm
async def test_nhlink_check_shows_the_token_key_and_joins(tpm: SoftTPM, tmp_path: Path) -> None:
    from tests.agent.support import to_toml

    pki = create_pki(tmp_path / "pki")
    uri, cert = provision(tpm, pki, tmp_path)
    async with FakeHub(tls=pki.server_context()) as hub:
        config = tmp_path / "nhlink.toml"
        config.write_text(
            to_toml(
                {
                    "host": "127.0.0.1",
                    "port": hub.port,
                    "ssl": True,
                    "ca_file": str(pki.ca.cert),
                    "agent": {
                        "control_socket": str(tmp_path / "sock"),
                        "lock_file": str(tmp_path / "lock"),
                        "state_dir": str(tmp_path / "state"),
                    },
                    "device": [
                        {
                            "name": "tpm",
                            "device_cert": str(cert),
                            "device_key": uri,
                            "firmware": dict(META),
                            "writer": {"type": "file", "path": str(tmp_path / "fw.img")},
                        }
                    ],
                }
            )
        )
        config.chmod(0o600)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nhlink",
            "check",
            "--join",
            "-c",
            str(config),
            env={**os.environ, **tpm.env()},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode()
        assert proc.returncode == 0, text + err.decode()
        assert "key        pkcs11:token=nhlink;object=device;type=private in " in text
        assert "made in the token verified with the public key" in text
        assert f"identity   {DEVICE} (mtls)" in text
        assert "joined" in text
        assert "1234" not in text + err.decode()
        assert hub.devices[DEVICE].joins == 1


def test_the_ssl_context_pointer_is_found_and_checked() -> None:
    import ssl

    from nhlink.transport import pkcs11

    lib = pkcs11._lib()
    for context in (ssl.create_default_context(), ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)):
        pointer = pkcs11._ssl_ctx_pointer(lib, context)
        assert pointer
        # The SSL_CTX found follows the context: change an option, read it back through it.
        context.options |= ssl.OP_NO_TICKET
        assert lib.ssl.SSL_CTX_get_options(pointer) == int(context.options)
