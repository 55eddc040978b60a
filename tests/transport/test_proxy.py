"""HTTP proxies: the selection rules, and the device socket and firmware downloads through a
real proxy (Debian's ``tinyproxy``, started on 127.0.0.1 by the tests): plain, with
credentials, refusing (407, 403), ``no_proxy``, and mTLS through the tunnel."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import nhlink
from nhlink.errors import ConfigError, PermanentDownloadError, ProxyError
from nhlink.testing import FakeHub
from nhlink.testing.firmware import FirmwareServer
from nhlink.transport.proxy import Proxy, bypass, select_proxy
from nhlink.update.download import DownloadOptions, download
from tests.support import META, device_options, image, sha
from tests.update.conftest import CollectingSink

USER, PASSWORD = "alice", "pr0xy-s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TinyProxy:
    """A tinyproxy process on 127.0.0.1; ``log`` is what it logged (requests included)."""

    def __init__(
        self, directory: Path, *, auth: bool = False, connect_ports: tuple[int, ...] = ()
    ) -> None:
        self.port = free_port()
        self.log_path = directory / f"tinyproxy-{self.port}.log"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "MaxClients 50",
            "LogLevel Connect",
            "Allow 127.0.0.1",
            *(f"ConnectPort {p}" for p in connect_ports),
        ]
        if auth:
            lines.append(f"BasicAuth {USER} {PASSWORD}")
        self.conf = directory / f"tinyproxy-{self.port}.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TinyProxy:
        tool = shutil.which("tinyproxy")
        assert tool is not None
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([tool, "-d", "-c", str(self.conf)], stdout=log, stderr=log)
        for _ in range(250):  # until it listens
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"tinyproxy exited: {self.log}")
            time.sleep(0.02)  # another process getting ready: nothing to wait on
        self.stop()  # never leave it running behind a failed start
        raise RuntimeError(f"tinyproxy did not start: {self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Callable[..., TinyProxy]]:
    if shutil.which("tinyproxy") is None:
        pytest.skip("tinyproxy missing (Debian package; scripts/test.sh installs it as root)")
    made: list[TinyProxy] = []

    def make(**kwargs: object) -> TinyProxy:
        proxy = TinyProxy(tmp_path, **kwargs).start()  # type: ignore[arg-type]
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.stop()


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
        "HTTP_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


# -- selection ---------------------------------------------------------------------------------


def test_the_environment_rules() -> None:
    env = {"https_proxy": "http://p1:3128", "http_proxy": "p2:8080", "HTTP_PROXY": "http://cgi:1"}
    assert select_proxy("wss", "hub.example", 443, environ=env) == Proxy("p1", 3128)
    assert select_proxy("https", "cdn.example", 443, environ=env) == Proxy("p1", 3128)
    assert select_proxy("ws", "hub.example", 80, environ=env) == Proxy("p2", 8080)
    # HTTP_PROXY (upper case) is ignored: a web server's CGI environment can set it.
    assert select_proxy("http", "x", 80, environ={"HTTP_PROXY": "http://cgi:1"}) is None
    assert select_proxy("https", "x", 443, environ={"ALL_PROXY": "http://all:1"}) == Proxy("all", 1)
    assert select_proxy("https", "x", 443, environ={"HTTPS_PROXY": "http://up:2"}) == Proxy("up", 2)
    # An explicit proxy wins; "" means none at all.
    assert select_proxy("wss", "h", 443, proxy="http://mine:9", environ=env) == Proxy("mine", 9)
    assert select_proxy("wss", "h", 443, proxy="", environ=env) is None
    # no_proxy from the environment, or the explicit one.
    env_np = {**env, "no_proxy": "example.com"}
    assert select_proxy("wss", "hub.example.com", 443, environ=env_np) is None
    assert select_proxy("wss", "hub.example.com", 443, no_proxy="", environ=env_np) is not None
    # An explicit proxy still honours the environment's no_proxy, unless no_proxy is given.
    assert select_proxy("wss", "hub.example.com", 443, proxy="http://m:1", environ=env_np) is None
    assert select_proxy(
        "wss", "hub.example.com", 443, proxy="http://m:1", no_proxy="", environ=env_np
    ) == Proxy("m", 1)


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        ("hub.example.com", 443, "example.com", True),
        ("example.com", 443, "example.com", True),
        ("badexample.com", 443, "example.com", False),
        ("hub.example.com", 443, ".example.com", True),
        ("hub.example.com", 443, "*.example.com", True),
        ("hub.example.com", 443, "other.org, EXAMPLE.COM ", True),
        ("anything", 1, "*", True),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("127.0.0.1", 80, "127.0.0.1", True),
        ("::1", 80, "::1", True),
        ("[::1]", 80, "[::1]:80", True),
        ("[::1]", 81, "[::1]:80", False),
        ("hub.example.com", 8443, "example.com:443", False),
        ("hub.example.com", 443, "example.com:443", True),
        ("hub.example.com", 443, "", False),
    ],
)
def test_no_proxy_matching(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert bypass(host, port, no_proxy) is expected


def test_proxy_urls_and_credentials_never_shown() -> None:
    proxy = Proxy.parse(f"http://{USER}:{PASSWORD}@proxy.example:3128")
    assert (proxy.host, proxy.port, proxy.username, proxy.password) == (
        "proxy.example",
        3128,
        USER,
        PASSWORD,
    )
    assert PASSWORD not in repr(proxy) and PASSWORD not in str(proxy)
    assert proxy.authorization() == "Basic YWxpY2U6cHIweHktczNjcmV0"
    for bad, message in [
        ("https://p:1", "only http://"),
        ("socks5://p:1", "only http://"),
        ("http://:1", "no host"),
        ("http://p:99999", "not a valid proxy URL"),
        ("http://p:1/path", "scheme://host:port"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            Proxy.parse(bad.replace("://", f"://{USER}:{PASSWORD}@"))
        assert PASSWORD not in str(info.value)
    with pytest.raises(ConfigError, match="not a valid proxy URL") as odd:
        Proxy.parse(f"http://{USER}:{PASSWORD}\uff03x@proxy:3128")  # urlsplit refuses it
    assert PASSWORD not in str(odd.value)
    with pytest.raises(ConfigError, match="proxy") as bad_option:
        nhlink.LinkConfig.build(**device_options(4000), proxy=f"ftp://{USER}:{PASSWORD}@p:1")
    assert PASSWORD not in str(bad_option.value)
    config = nhlink.LinkConfig.build(**device_options(4000), proxy=f"http://{USER}:{PASSWORD}@p:1")
    assert PASSWORD not in repr(config)


async def first_error(hub: FakeHub, proxy: str) -> nhlink.LinkStatus:
    """Start a device with ``proxy``; its status once the first connection attempt failed."""
    link = nhlink.NervesHubLink(**device_options(hub), proxy=proxy)
    await link.start()
    try:
        return await link.wait_for(lambda s: s.last_error is not None, timeout=10)
    finally:
        await link.stop()


# -- the device socket through tinyproxy --------------------------------------------------------


async def test_the_device_joins_through_the_proxy(
    hub: FakeHub, proxies: Callable[..., TinyProxy]
) -> None:
    proxy = proxies()
    async with nhlink.NervesHubLink(**device_options(hub), proxy=proxy.url) as link:
        await link.wait_joined(10)
    assert f"CONNECT 127.0.0.1:{hub.port}" in proxy.log


async def test_the_environment_proxy_and_no_proxy(
    hub: FakeHub, proxies: Callable[..., TinyProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = proxies()
    monkeypatch.setenv("http_proxy", proxy.url)  # ws:// goes through http_proxy
    async with nhlink.NervesHubLink(**device_options(hub)) as link:
        await link.wait_joined(10)
    assert proxy.log.count(f"CONNECT 127.0.0.1:{hub.port}") == 1
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.0/8")
    async with nhlink.NervesHubLink(**device_options(hub)) as link:
        await link.wait_joined(10)
    assert proxy.log.count(f"CONNECT 127.0.0.1:{hub.port}") == 1  # direct this time
    assert hub.devices["gw-0001"].connections == 2


async def test_proxy_credentials(
    hub: FakeHub, proxies: Callable[..., TinyProxy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = proxies(auth=True)
    status = await first_error(hub, proxy.url)  # no credentials
    assert isinstance(status.last_error, ProxyError) and status.last_error.status == 407
    assert "wants credentials" in str(status.last_error)
    wrong = f"http://{USER}:wrong-{PASSWORD}@127.0.0.1:{proxy.port}"
    status = await first_error(hub, wrong)
    assert isinstance(status.last_error, ProxyError) and "were refused" in str(status.last_error)
    async with nhlink.NervesHubLink(**device_options(hub), proxy=proxy.auth_url) as link:
        await link.wait_joined(10)
    assert PASSWORD not in caplog.text


async def test_a_proxy_that_forbids_the_target(
    hub: FakeHub, proxies: Callable[..., TinyProxy]
) -> None:
    proxy = proxies(connect_ports=(443,))  # tunnels to port 443 only
    status = await first_error(hub, proxy.url)
    assert isinstance(status.last_error, ProxyError) and status.last_error.status == 403
    assert f"refused the tunnel to 127.0.0.1:{hub.port}: HTTP 403" in str(status.last_error)


async def test_an_unreachable_proxy(hub: FakeHub) -> None:
    status = await first_error(hub, f"http://127.0.0.1:{free_port()}")
    assert isinstance(status.last_error, ProxyError)
    assert "cannot connect to the proxy" in str(status.last_error)


async def test_mtls_through_the_tunnel(tmp_path: Path, proxies: Callable[..., TinyProxy]) -> None:
    pytest.importorskip("cryptography")
    from nhlink.testing.certs import create_pki

    pki = create_pki(tmp_path / "pki")
    device = pki.device("gw-mtls")
    proxy = proxies()
    async with FakeHub(tls=pki.server_context()) as hub:
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": hub.port,
            "device_cert": str(device.cert),
            "device_key": str(device.key),
            "ca_file": str(pki.ca.cert),
            "firmware_meta": META,
            "name": "gw-mtls",
            "proxy": proxy.url,
        }
        async with nhlink.NervesHubLink(**options) as link:
            await link.wait_joined(10)
        assert hub.devices["gw-mtls"].auth == "certificate"
    assert f"CONNECT 127.0.0.1:{hub.port}" in proxy.log


# -- firmware downloads through tinyproxy -------------------------------------------------------


@pytest.fixture
async def files() -> AsyncIterator[FirmwareServer]:
    async with FirmwareServer() as server:
        yield server


async def test_a_download_through_the_proxy(
    files: FirmwareServer, proxies: Callable[..., TinyProxy]
) -> None:
    proxy = proxies(auth=True)
    data = image(300_000)
    url = files.add("fw.bin", data)
    sink = CollectingSink()
    options = DownloadOptions(allow_http=True, proxy=proxy.auth_url)
    assert await download(url, sink=sink, expected_size=len(data), options=options) == len(data)
    assert sha(bytes(sink.buffer)) == sha(data)
    assert f"GET {url}" in proxy.log  # plain http through a proxy: absolute-form requests

    refused = DownloadOptions(allow_http=True, proxy=proxy.url, max_disconnects=0)
    with pytest.raises(PermanentDownloadError, match="HTTP 407") as info:
        await download(url, sink=CollectingSink(), expected_size=len(data), options=refused)
    assert PASSWORD not in str(info.value)


async def test_an_https_download_tunnels_and_no_proxy_bypasses(
    tmp_path: Path, proxies: Callable[..., TinyProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cryptography")
    import ssl

    from nhlink.testing.certs import create_pki

    pki = create_pki(tmp_path / "pki")
    proxy = proxies()
    client = ssl.create_default_context(cafile=str(pki.ca.cert))
    async with FirmwareServer(ssl=pki.server_context(mtls=False)) as server:
        data = image(200_000, seed=4)
        url = server.add("fw.bin", data)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        sink = CollectingSink()
        await download(url, sink=sink, expected_size=len(data), ssl=client)
        assert sha(bytes(sink.buffer)) == sha(data)
        assert f"CONNECT 127.0.0.1:{server.port}" in proxy.log
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        await download(url, sink=CollectingSink(), expected_size=len(data), ssl=client)
        assert proxy.log.count(f"CONNECT 127.0.0.1:{server.port}") == 1


async def test_the_link_proxy_serves_firmware_too(
    hub: FakeHub, files: FirmwareServer, proxies: Callable[..., TinyProxy], tmp_path: Path
) -> None:
    from nhlink.update.writers import FileWriter
    from tests.support import ota_options, push, wait_status

    proxy = proxies()
    data = image(500_000, seed=5)
    options = ota_options(hub, tmp_path, proxy=proxy.url)
    async with nhlink.NervesHubLink(fwup_writer=FileWriter(tmp_path / "fw.img"), **options) as link:
        await link.wait_joined(10)
        url = files.add("fw.bin", data)
        await push(hub, url, data)
        await wait_status(hub, "completed")
    assert f"GET {url}" in proxy.log
