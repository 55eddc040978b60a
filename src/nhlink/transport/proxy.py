"""HTTP proxies: which one a URL goes through, and a ``CONNECT`` tunnel for the device socket.

Selection follows curl's long-standing rules. An explicit ``proxy`` wins over the environment's
proxy variables (``""`` means "no proxy", ignoring them); otherwise ``https_proxy``/``HTTPS_PROXY``
for ``https``/``wss`` URLs, ``http_proxy`` (lower case only: ``HTTP_PROXY`` can be set by a
web server's CGI environment) for ``http``/``ws``, ``all_proxy``/``ALL_PROXY`` for either.
``no_proxy``/``NO_PROXY`` (unless an explicit ``no_proxy`` is given, also with an explicit
``proxy``) lists hosts that are reached directly:
comma-separated names that match the host and its subdomains (``example.com`` matches
``hub.example.com``; a leading ``.`` or ``*.`` is the same), IP addresses, CIDR blocks
(``10.0.0.0/8``), an optional ``:port``, or ``*`` for everything.

Only ``http://`` proxies are supported; credentials come from the proxy URL
(``http://user:password@proxy:3128``) and are sent as ``Proxy-Authorization: Basic``. They
never appear in a log line, an error or a ``repr``.

The device socket always tunnels (``CONNECT host:port``), for ``ws://`` too; TLS to NervesHub
(with the device certificate, for mTLS) runs end to end through the tunnel, so the proxy sees
neither the traffic nor the credentials of the device.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError, ProxyError

__all__ = ["Proxy", "bypass", "open_tunnel", "select_proxy"]

#: the proxy's answer to CONNECT may not exceed this (headers only)
MAX_RESPONSE = 16 * 1024


@dataclass(frozen=True)
class Proxy:
    """An ``http://`` proxy. ``repr``/``str`` never show the credentials."""

    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, option: str = "proxy") -> Proxy:
        """``http://[user:password@]host[:port]`` (default port 80; a bare ``host:port`` is
        taken as ``http://``). Raises ConfigError (without the credentials)."""
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        shown = redact(url)
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - validates the port (ValueError)
        except ValueError:
            # urlsplit's messages quote the whole netloc, credentials included.
            raise ConfigError(option, f"not a valid proxy URL: {shown}") from None
        if parts.scheme != "http":
            raise ConfigError(
                option,
                f"only http:// proxies are supported (TLS to the target runs through "
                f"the tunnel), not {parts.scheme}:// in {shown}",
            )
        if not parts.hostname:
            raise ConfigError(option, f"no host in {shown}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(option, f"a proxy URL is scheme://host:port, not {shown}")
        port = parts.port or 80  # checked above
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(parts.hostname, port, user, password)

    @property
    def url(self) -> str:
        """With the credentials: for aiohttp's ``proxy=`` (never log it)."""
        auth = ""
        if self.username is not None:
            from urllib.parse import quote

            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{auth}{host}:{self.port}"

    @property
    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        return self.display

    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value, if the URL carried credentials."""
        if self.username is None:
            return None
        token = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(token).decode("ascii")


def redact(url: str) -> str:
    """A proxy URL without its credentials."""
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    host = rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}***@{host}"


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name)
        if value is not None:
            return value
    return None


def bypass(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``host:port`` is excluded by a ``no_proxy`` list."""
    import ipaddress  # only when there is a proxy to bypass

    host = host.strip("[]").lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port: int | None = None
        if entry.startswith("["):  # [::1]:8080
            inside, _, rest = entry[1:].partition("]")
            entry = inside
            if rest.startswith(":") and rest[1:].isdigit():
                entry_port = int(rest[1:])
        elif entry.count(":") == 1:
            name, _, maybe_port = entry.partition(":")
            if maybe_port.isdigit():
                entry, entry_port = name, int(maybe_port)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.removeprefix("*").removeprefix(".").rstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def select_proxy(
    scheme: str,
    host: str,
    port: int,
    *,
    proxy: str | None = None,
    no_proxy: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Proxy | None:
    """The proxy for a ``scheme://host:port`` URL, or None to connect directly (see the module
    docstring for the rules)."""
    env = os.environ if environ is None else environ
    if proxy is not None:
        chosen = proxy
        exclusions = no_proxy if no_proxy is not None else _env(env, "no_proxy", "NO_PROXY") or ""
    else:
        secure = scheme in ("https", "wss")
        chosen = (
            (_env(env, "https_proxy", "HTTPS_PROXY") if secure else _env(env, "http_proxy"))
            or _env(env, "all_proxy", "ALL_PROXY")
            or ""
        )
        exclusions = no_proxy if no_proxy is not None else _env(env, "no_proxy", "NO_PROXY") or ""
    if not chosen.strip():
        return None
    if bypass(host, port, exclusions):
        return None
    return Proxy.parse(chosen, "proxy" if proxy is not None else "environment proxy")


async def open_tunnel(proxy: Proxy, host: str, port: int) -> socket.socket:
    """A TCP socket to ``host:port`` through ``proxy`` (``CONNECT``), ready for TLS or plain
    bytes. Raises :class:`ProxyError`. The caller bounds the time (``asyncio.timeout``)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ProxyError(f"cannot resolve the proxy {proxy}: {exc.strerror}") from None
    sock: socket.socket | None = None
    last: OSError | None = None
    for family, type_, proto, _, address in infos:
        candidate = socket.socket(family, type_, proto)
        candidate.setblocking(False)
        try:
            await loop.sock_connect(candidate, address)
        except OSError as exc:
            candidate.close()
            last = exc
            continue
        except BaseException:
            candidate.close()
            raise
        sock = candidate
        break
    if sock is None:
        raise ProxyError(f"cannot connect to the proxy {proxy}: {last}")
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        auth = proxy.authorization()
        if auth is not None:
            lines.append(f"Proxy-Authorization: {auth}")
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await _read_head(loop, sock, proxy)
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
            raise ProxyError(f"the proxy {proxy} answered CONNECT with {status_line!r}")
        status = int(fields[1])
        reason = fields[2] if len(fields) > 2 else ""
        if status in (407, 401):  # tinyproxy answers wrong credentials with 401
            raise ProxyError(
                f"the proxy {proxy} wants credentials (HTTP 407 {reason}): "
                + ("they were refused" if auth else "give them in the proxy URL"),
                status,
            )
        if not 200 <= status < 300:
            raise ProxyError(
                f"the proxy {proxy} refused the tunnel to {authority}: HTTP {status} {reason}",
                status,
            )
        if not head.endswith(b"\r\n\r\n"):
            raise ProxyError(f"the proxy {proxy} sent data after its CONNECT response")
    except BaseException:
        sock.close()
        raise
    return sock


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: Proxy) -> bytes:
    """The proxy's response, up to and including its blank line (plus whatever came with it:
    the caller checks that a successful answer carried nothing more — the target speaks only
    after we do)."""
    head = b""
    while b"\r\n\r\n" not in head:
        try:
            chunk = await loop.sock_recv(sock, 4096)
        except OSError as exc:
            raise ProxyError(f"the proxy {proxy} dropped the connection: {exc}") from None
        if not chunk:
            raise ProxyError(f"the proxy {proxy} closed the connection before answering CONNECT")
        head += chunk
        if len(head) > MAX_RESPONSE:
            raise ProxyError(f"the proxy {proxy} sent an oversized response to CONNECT")
    return head
