"""A fault-injecting TCP proxy, for reliability tests (loopback only).

Put it between a device and the hub, or a device and the firmware server, and tell it what to
break::

    async with FaultProxy("127.0.0.1", hub.port, seed=7) as proxy:
        proxy.schedule(Fault("cut", at=5000))               # the next connection
        link = NervesHubLink(host="127.0.0.1", port=proxy.port, ...)

Faults apply per connection and per direction (``"down"``: server → client, ``"up"``: client →
server), at a byte offset of that direction's stream:

* ``cut`` — close both sides at once (a dropped link; the peers see EOF, no close frame);
* ``reset`` — abort both sides with a TCP RST (``SO_LINGER`` 0);
* ``stall`` — forward nothing in that direction for ``seconds`` (a silent link);
* ``slow`` — forward at most ``rate`` bytes per second from there on;
* ``corrupt`` — flip one byte (XOR 0xFF) at that offset;
* ``half_close`` — shut down writing towards the receiver (it sees EOF; the other direction
  goes on).

With ``split=True`` every forwarded chunk is written in pieces of random sizes (1 byte up), so
the peers' parsers see arbitrary read boundaries. TCP neither duplicates nor reorders, so
neither does the proxy. Randomness comes from ``seed`` (print it on a failure to replay it).

:meth:`FaultProxy.schedule` queues the faults of the *next* connection (each call, one more
connection); :attr:`FaultProxy.always` applies to every connection that has no schedule.
Every connection is recorded (:class:`ProxiedConnection`: bytes each way, faults fired, how it
ended). The proxy listens on 127.0.0.1 only, and only connects to the target it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

__all__ = ["Direction", "Fault", "FaultProxy", "Kind", "ProxiedConnection"]

Direction = Literal["down", "up"]
Kind = Literal["cut", "reset", "stall", "slow", "corrupt", "half_close"]
_KINDS: frozenset[str] = frozenset({"cut", "reset", "stall", "slow", "corrupt", "half_close"})
_READ = 65536


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` at byte ``at`` of the ``direction`` stream of a connection."""

    kind: Kind
    at: int = 0
    direction: Direction = "down"
    #: ``stall``: how long nothing is forwarded.
    seconds: float = 0.0
    #: ``slow``: bytes per second from ``at`` on.
    rate: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.direction not in ("down", "up"):
            raise ValueError(f"direction must be 'down' or 'up', not {self.direction!r}")
        if self.at < 0:
            raise ValueError("at must be >= 0")
        if self.kind == "slow" and self.rate <= 0:
            raise ValueError("a slow fault needs rate > 0")
        if self.kind == "stall" and self.seconds <= 0:
            raise ValueError("a stall fault needs seconds > 0")


@dataclass
class ProxiedConnection:
    """One client connection through the proxy."""

    number: int
    faults: tuple[Fault, ...]
    #: bytes forwarded server → client and client → server.
    down: int = 0
    up: int = 0
    #: the faults that fired, in order.
    fired: list[Fault] = field(default_factory=list)
    #: "" while open; then "closed" (a peer closed), "cut", "reset", "refused" (no upstream).
    outcome: str = ""
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


class _Cut(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class FaultProxy:
    """A TCP proxy from ``127.0.0.1:<port>`` to ``target_host:target_port``. See the module
    docstring. Use as ``async with`` or :meth:`start`/:meth:`stop`."""

    host = "127.0.0.1"

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        seed: int | None = None,
        split: bool = False,
        max_split: int = 4096,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.seed = seed if seed is not None else random.randrange(2**32)
        self.random = random.Random(self.seed)
        self.split = split
        self.max_split = max_split
        #: faults for connections without a schedule of their own.
        self.always: tuple[Fault, ...] = ()
        self.connections: list[ProxiedConnection] = []
        self._plans: deque[tuple[Fault, ...]] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)

    async def stop(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        # Cancel the pumps, not the connection handlers: those end by themselves then (a
        # cancelled handler task upsets asyncio's start_server bookkeeping).
        for pump in list(self._pumps):
            pump.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- control -----------------------------------------------------------------------------

    def schedule(self, *faults: Fault) -> None:
        """The faults of the next connection (no argument: a clean one)."""
        self._plans.append(tuple(faults))

    def drop_all(self) -> int:
        """Cut every open connection now (both sides see EOF); returns how many."""
        count = 0
        for writer in list(self._writers):
            writer.transport.abort()
            count += 1
        return count

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self.connections if not c.done.is_set())

    # -- forwarding --------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        plan = self._plans.popleft() if self._plans else self.always
        record = ProxiedConnection(len(self.connections), plan)
        self.connections.append(record)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, upstream = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                record.outcome = "refused"
                writer.transport.abort()
                return
            self._writers.add(upstream)
            down = asyncio.create_task(self._pump(up_reader, writer, record, "down"))
            up = asyncio.create_task(self._pump(reader, upstream, record, "up"))
            self._pumps.update((down, up))
            try:
                done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_EXCEPTION)
                for finished in done:
                    if finished.cancelled():
                        continue
                    error = finished.exception()
                    if isinstance(error, _Cut):
                        record.outcome = error.kind
                        _kill(writer, upstream, rst=error.kind == "reset")
                await asyncio.gather(down, up, return_exceptions=True)
            finally:
                for pump in (down, up):
                    pump.cancel()
                    self._pumps.discard(pump)
                await asyncio.gather(down, up, return_exceptions=True)
            record.outcome = record.outcome or "closed"
        finally:
            _kill(writer, upstream, rst=False)
            self._writers.discard(writer)
            if upstream is not None:
                self._writers.discard(upstream)
            record.done.set()
            if task is not None:
                self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: ProxiedConnection,
        direction: Direction,
    ) -> None:
        """Forward one direction, firing its faults at their byte offsets."""
        faults = deque(sorted((f for f in record.faults if f.direction == direction), key=_at))
        offset = 0  # bytes of this direction read before the current chunk
        rate = 0
        while True:
            try:
                data = await reader.read(_READ)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                _write_eof(writer)
                return
            pos = 0
            while True:
                # Every fault due here (a corruption needs a byte to flip: it waits for one).
                while (
                    faults
                    and faults[0].at <= offset + pos
                    and (faults[0].kind != "corrupt" or pos < len(data))
                ):
                    fault = faults.popleft()
                    record.fired.append(fault)
                    if fault.kind in ("cut", "reset"):
                        raise _Cut(fault.kind)
                    if fault.kind == "stall":
                        await asyncio.sleep(fault.seconds)
                    elif fault.kind == "slow":
                        rate = fault.rate
                    elif fault.kind == "corrupt":
                        data = data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]
                    else:  # half_close
                        _write_eof(writer)
                        await _discard(reader)
                        return
                if pos >= len(data):
                    break
                end = len(data)
                if faults:
                    end = min(end, max(pos + 1, faults[0].at - offset))
                await self._send(writer, data[pos:end], rate)
                if direction == "down":
                    record.down += end - pos
                else:
                    record.up += end - pos
                pos = end
            offset += len(data)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, rate: int) -> None:
        pieces: Sequence[bytes]
        if self.split and len(data) > 1:
            pieces = []
            pos = 0
            while pos < len(data):
                size = self.random.randint(1, min(self.max_split, len(data) - pos))
                pieces.append(data[pos : pos + size])
                pos += size
        else:
            pieces = (data,)
        for piece in pieces:
            if rate:
                await asyncio.sleep(len(piece) / rate)
            writer.write(piece)
            await writer.drain()


def _at(fault: Fault) -> int:
    return fault.at


def _write_eof(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()


async def _discard(reader: asyncio.StreamReader) -> None:
    """After a half-close towards the receiver, drop what the sender still sends."""
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(_READ):
            pass


def _kill(
    writer: asyncio.StreamWriter, upstream: asyncio.StreamWriter | None, *, rst: bool
) -> None:
    for w in (writer, upstream):
        if w is None:
            continue
        if rst:
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if rst:
            w.transport.abort()
        else:
            w.transport.close()
