"""Firmware download options, importable without aiohttp: a connected, idle device never
imports the HTTP client (:mod:`nhlink.update.download` is loaded when a download starts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["DownloadOptions"]


@dataclass(frozen=True)
class DownloadOptions:
    """Retry and timeout policy of :func:`download`; defaults from NHL (PROTOCOL.md §11.1)."""

    #: failures (disconnect, idle timeout, retryable status) tolerated; one more fails.
    max_disconnects: int = 10
    #: seconds without a byte (connecting, waiting for headers or body) that count as a failure.
    idle_timeout: float = 60.0
    #: first delay before retrying; doubles per consecutive failure without progress.
    retry_delay: float = 15.0
    #: cap of that doubling (``Retry-After`` is capped at this too).
    retry_delay_max: float = 60.0
    #: each backoff delay is stretched by ``1 + jitter * rand()`` (so up to 50 % above the cap).
    jitter: float = 0.5
    #: hard limit on the whole download, retries and delays included.
    max_total_time: float = 24 * 3600
    #: redirects followed per request (301, 302, 303, 307, 308).
    max_redirects: int = 5
    #: accept plain ``http://`` firmware URLs (tests, a trusted LAN mirror). Never a redirect
    #: from ``https`` to ``http``.
    allow_http: bool = False
    #: the largest file accepted when the update announced no ``size`` (a misbehaving server
    #: must not be able to fill the disk); an announced size is trusted (writers check space).
    max_size: int = 4 * 1024**3
    #: network read buffer (aiohttp ``read_bufsize``); aiohttp stops reading from the socket
    #: when twice this is waiting. Chunks handed to the sink are what was buffered: up to about
    #: that plus one socket read (256 KiB). Trade-off: when a connection drops, aiohttp discards
    #: what it had buffered (its reads raise before returning it), so up to about that much is
    #: fetched again on resume. 256 KiB: ~5-15 % less CPU than 64 KiB on loopback
    #: (BENCHMARKS.md), and small beside the 1 MiB parts a resume re-fetches anyway.
    chunk_size: int = 256 * 1024
    user_agent: str = "nhlink"
    #: HTTP proxy for firmware (``http://[user:password@]host:port``); None: the environment
    #: (``https_proxy``, ``no_proxy``...), ``""``: never. The link passes its own explicit
    #: ``proxy`` here when this is None.
    proxy: str | None = field(default=None, repr=False)
    #: hosts fetched directly (``no_proxy`` syntax); None: the environment's
    no_proxy: str | None = None
    #: the highest average download rate, bytes per second (None: no limit); the firmware
    #: download leaves bandwidth to the device's real job (a cellular uplink)
    max_download_rate: int | None = None

    def __post_init__(self) -> None:
        if self.max_disconnects < 0:
            raise ConfigError("max_disconnects", "must be >= 0")
        for name in ("idle_timeout", "retry_delay", "max_total_time"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, "must be > 0")
        if self.retry_delay_max < self.retry_delay:
            raise ConfigError("retry_delay_max", "must be >= retry_delay")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("jitter", "must be within [0, 1]")
        if self.max_redirects < 0:
            raise ConfigError("max_redirects", "must be >= 0")
        if self.chunk_size < 1024:
            raise ConfigError("chunk_size", "must be >= 1024")
        if not isinstance(self.allow_http, bool):
            raise ConfigError("allow_http", "must be True or False")
        if isinstance(self.max_size, bool) or not isinstance(self.max_size, int):
            raise ConfigError("max_size", "must be an integer")
        if self.max_size < 1:
            raise ConfigError("max_size", "must be >= 1")
        rate = self.max_download_rate
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int) or rate < 1024
        ):
            raise ConfigError("max_download_rate", "must be an integer >= 1024 (bytes/s)")
        if self.proxy is not None:
            if not isinstance(self.proxy, str):
                raise ConfigError("proxy", 'must be a proxy URL or ""')
            if self.proxy.strip():
                from ..transport.proxy import Proxy

                Proxy.parse(self.proxy)
