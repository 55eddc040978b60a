"""Bytes on the wire for one day of one device: JSON (vsn 2.0.0) against MessagePack (vsn 3.0.0).

Run: ``python benchmarks/wire_bytes.py [--json out.json]``.

No timing: the script builds, with nhlink's own codecs (``encode_message``, ``encode_msgpack``),
every message a device and the server exchange in one day on one connection, and adds the
WebSocket frame headers (RFC 6455 §5.2: 2 bytes, plus 2 or 8 for a payload of 126 B or more,
plus the 4-byte mask on device → server frames; device frames are built with nhlink's
``build_frame``). The day:

* on connect: the ``device`` join (``LinkConfig.join_params``: ``nerves_fw_*``, api 2.2.0, meta)
  and its reply, the server's ``extensions:get``, ``report_network_interface``, the
  ``extensions`` join ``{"health": "0.0.1"}``, its reply ``["health"]``, ``health:attached``;
* 2,880 heartbeats (one per 30 s) and their replies (§4.3);
* 24 ``health:check`` pushes (one per hour, the first right after attaching) and the
  ``health:report`` answers, built with ``build_report`` from what ``LinuxHealthProvider`` reads
  on a Raspberry Pi 4 (11 metrics and the ``wlan0``/``eth0`` connectivity; no metadata, alarms or
  checks, which that provider does not fill), values changing every hour;
* one firmware update (§7.3): the ``update`` push of ``bench_codec.py``, ``status_update``
  received / started / downloading, ``fwup_progress`` downloading 0–100 %, ``status_update``
  updating, ``fwup_progress`` updating 0–100 %, ``status_update`` completed. (The reboot and the
  new connection that follow are not counted: they would repeat the connect messages.)

Refs: one increasing counter on the device (strings); every message on a channel carries its
join's ref. With ``permessage-deflate`` (RFC 7692, context takeover, 15-bit windows): one
compressor per direction for the whole day, ``compress + flush(Z_SYNC_FLUSH)`` minus the trailing
``00 00 ff ff``. The device compresses as nhlink does (``DeflateOptions``: level 6, messages under
``min_size`` = 64 B go uncompressed); the server compresses every message (Bandit at zlib's
default level 6, cowboy at 9: ``--server-level``). TCP/IP and TLS overhead are not counted.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nhlink import _core
from nhlink.config import LinkConfig
from nhlink.extensions.health import build_report
from nhlink.protocol import wire
from nhlink.protocol.websocket import DeflateOptions

DAY = 86_400
HEARTBEAT_INTERVAL = 30
HEALTH_INTERVAL = 3_600
UPDATE_AT = DAY // 2
T0 = datetime(2026, 5, 27, tzinfo=UTC).timestamp()

DEVICE, SERVER = "device→server", "server→device"
SERIALIZERS: dict[str, tuple[Callable[..., bytes], int]] = {
    "JSON": (_core.encode_message, _core.OP_TEXT),
    "MessagePack": (_core.encode_msgpack, _core.OP_BINARY),
}
VSN = {"JSON": "vsn 2.0.0", "MessagePack": "vsn 3.0.0"}
MASK = b"\x37\xfa\x21\x3d"
TAIL = b"\x00\x00\xff\xff"
OK: dict[str, Any] = {"status": wire.REPLY_OK, "response": {}}

FIRMWARE_META = {
    "uuid": "0c6f2e1a-7b3d-4c59-9e8f-1a2b3c4d5e6f",
    "product": "gateway",
    "architecture": "arm",
    "platform": "rpi4",
    "version": "1.1.0",
    "author": "Acme Devices",
    "description": "Field gateway",
    "vcs_identifier": "4f2c9a1e7d3b5a6c8e0f1d2b3a4c5e6f7a8b9c0d",
}


@dataclass(frozen=True)
class Msg:
    """One Phoenix message: who sends it, what kind it is (a table row), the five fields."""

    sender: str
    kind: str
    fields: tuple[Any, ...]


@dataclass
class Device:
    """The device side: one ref counter for every message, the join refs of its channels."""

    counter: int = 0
    join_refs: dict[str, str] = field(default_factory=dict)

    def next_ref(self) -> str:
        self.counter += 1
        return str(self.counter)

    def join(self, topic: str, payload: Any, kind: str) -> Msg:
        ref = self.next_ref()
        self.join_refs[topic] = ref
        return Msg(DEVICE, kind, (ref, ref, topic, wire.EVENT_JOIN, payload))

    def push(self, topic: str, event: str, payload: Any, kind: str | None = None) -> Msg:
        fields = (self.join_refs[topic], self.next_ref(), topic, event, payload)
        return Msg(DEVICE, kind or event, fields)

    def reply(self, msg: Msg, response: Any, kind: str) -> Msg:
        """The server's ``phx_reply`` to ``msg``."""
        join_ref, ref, topic = msg.fields[:3]
        payload = {"status": wire.REPLY_OK, "response": response}
        return Msg(SERVER, kind, (join_ref, ref, topic, wire.EVENT_REPLY, payload))


def _update_payload() -> dict[str, Any]:
    """The ``update`` push of ``bench_codec.py`` (importable when this runs as a script too)."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.bench_codec import UPDATE_PAYLOAD

    return UPDATE_PAYLOAD


def _health_report(hour: int, rng: random.Random) -> dict[str, Any]:
    """What ``HealthExtension(LinuxHealthProvider())`` sends on a Raspberry Pi 4 (§8.3)."""
    uptime = 5 * DAY + 1_234.56 + hour * HEALTH_INTERVAL + rng.random()
    mem_used = rng.randint(380, 620)
    disk_total = 14_551_040
    disk_available = 12_894_112 - hour * 37 - rng.randint(0, 99)
    used = disk_total - disk_available
    load1 = round(rng.uniform(0.02, 0.9), 2)
    metrics = {
        wire.HEALTH_METRIC_LOAD_1: load1,
        wire.HEALTH_METRIC_LOAD_5: round(load1 * rng.uniform(0.6, 1.1), 2),
        wire.HEALTH_METRIC_LOAD_15: round(load1 * rng.uniform(0.4, 0.9), 2),
        wire.HEALTH_METRIC_CPU_USAGE: round(rng.uniform(1.5, 18.0), 2),
        wire.HEALTH_METRIC_MEM_SIZE: 3_794,
        wire.HEALTH_METRIC_MEM_USED: mem_used,
        wire.HEALTH_METRIC_MEM_USED_PERCENT: round(100.0 * mem_used / 3_794, 2),
        wire.HEALTH_METRIC_DISK_TOTAL: disk_total,
        wire.HEALTH_METRIC_DISK_AVAILABLE: disk_available,
        wire.HEALTH_METRIC_DISK_USED_PERCENT: round(100.0 * used / disk_total, 2),
        wire.HEALTH_METRIC_CPU_TEMP: rng.randint(41_000, 58_000) / 1000,
        wire.HEALTH_METRIC_UPTIME: round(uptime, 2),
    }

    def interface(kind: str, up: bool, rx: float, tx: float, mac: str) -> dict[str, Any]:
        return {
            "type": kind,
            "present": True,
            "state": "up" if up else "down",
            "connection_status": "internet" if up else "disconnected",
            "metrics": {"rx_bytes": rx, "tx_bytes": tx, "rx_errors": 0.0, "tx_errors": 0.0},
            "metadata": {"mac": mac},
        }

    rx = float(812_345_678 + hour * rng.randint(2_000_000, 9_000_000))
    tx = float(96_543_210 + hour * rng.randint(400_000, 1_500_000))
    sections: dict[str, dict[str, Any]] = {
        wire.HEALTH_KEY_METRICS: metrics,
        wire.HEALTH_KEY_CONNECTIVITY: {
            "eth0": interface("ethernet", False, 0.0, 0.0, "dc:a6:32:5e:11:07"),
            "wlan0": interface("wifi", True, rx, tx, "dc:a6:32:5e:11:08"),
        },
    }
    now = T0 + hour * HEALTH_INTERVAL + 1 + rng.random()
    return {wire.HEALTH_REPORT_VALUE: build_report(sections, now=now)}


def day() -> list[Msg]:
    """Every message of the day, in the order they cross the wire."""
    rng = random.Random(20260527)
    device = Device()
    config = LinkConfig.build(
        host="devices.example.com",
        product_key="nhp_1234567890abcdef",
        product_secret="s3cr3t-product-secret",
        identifier="gw-0001",
        firmware_meta=FIRMWARE_META,
    )
    params = config.join_params(validated=True, auto_revert=False, downloading_uuid=None)

    def connect() -> Iterator[Msg]:
        join = device.join(wire.TOPIC_DEVICE, params, "join device")
        yield join
        yield device.reply(join, {}, "join reply device")
        get: tuple[Any, ...] = (None, None, wire.TOPIC_DEVICE, wire.EVENT_EXTENSIONS_GET, {})
        yield Msg(SERVER, wire.EVENT_EXTENSIONS_GET, get)
        yield device.push(wire.TOPIC_DEVICE, "report_network_interface", {"interface": "wlan0"})
        ext = device.join(wire.TOPIC_EXTENSIONS, {"health": "0.0.1"}, "join extensions")
        yield ext
        yield device.reply(ext, ["health"], "join reply extensions")
        yield device.push(wire.TOPIC_EXTENSIONS, "health:attached", {})

    def heartbeat() -> Iterator[Msg]:
        fields: tuple[Any, ...] = (
            None,
            device.next_ref(),
            wire.TOPIC_PHOENIX,
            wire.EVENT_HEARTBEAT,
            {},
        )
        yield Msg(DEVICE, "heartbeat", fields)
        yield Msg(SERVER, "heartbeat reply", (*fields[:3], wire.EVENT_REPLY, OK))

    def health(hour: int) -> Iterator[Msg]:
        ext_join = device.join_refs[wire.TOPIC_EXTENSIONS]
        check: tuple[Any, ...] = (ext_join, None, wire.TOPIC_EXTENSIONS, "health:check", {})
        yield Msg(SERVER, "health:check", check)
        report = _health_report(hour, rng)
        yield device.push(wire.TOPIC_EXTENSIONS, "health:report", report)

    def update() -> Iterator[Msg]:
        push = (None, None, wire.TOPIC_DEVICE, wire.EVENT_UPDATE, _update_payload())
        yield Msg(SERVER, wire.EVENT_UPDATE, push)

        def status(value: str, **extra: Any) -> Msg:
            payload = {"status": value, **extra}
            return device.push(wire.TOPIC_DEVICE, wire.EVENT_STATUS_UPDATE, payload)

        def progress(stage: str, percent: int) -> Msg:
            payload = {"stage": stage, "value": percent}
            return device.push(wire.TOPIC_DEVICE, wire.EVENT_FWUP_PROGRESS, payload)

        yield status(wire.STATUS_RECEIVED)
        yield status(wire.STATUS_STARTED, downloader_network_interface=None)
        yield status(wire.STATUS_DOWNLOADING)
        for percent in range(101):
            yield progress(wire.PROGRESS_STAGE_DOWNLOADING, percent)
        yield status(wire.STATUS_UPDATING)
        for percent in range(101):
            yield progress(wire.PROGRESS_STAGE_UPDATING, percent)
        yield status(wire.STATUS_COMPLETED)

    # (second, order within that second, what happens); sorted, then played in that order so
    # refs rise with time.
    schedule: list[tuple[int, int, Callable[[], Iterator[Msg]]]] = [(0, 0, connect)]
    schedule += [(s, 1, heartbeat) for s in range(HEARTBEAT_INTERVAL, DAY + 1, HEARTBEAT_INTERVAL)]
    schedule += [
        (h * HEALTH_INTERVAL + 1, 2, functools.partial(health, h))
        for h in range(DAY // HEALTH_INTERVAL)
    ]
    schedule.append((UPDATE_AT + 5, 3, update))
    schedule.sort(key=lambda item: (item[0], item[1]))
    return [msg for _, _, action in schedule for msg in action()]


# --- frames -----------------------------------------------------------------------------------


def header_size(length: int, *, masked: bool) -> int:
    """RFC 6455 §5.2: 2 bytes, the extended payload length, the masking key."""
    extended = 0 if length < 126 else 2 if length < 65_536 else 8
    return 2 + extended + (4 if masked else 0)


class Deflater:
    """One direction's permessage-deflate compressor with context takeover (RFC 7692 §7.2.1)."""

    def __init__(self, level: int, min_size: int) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        self.min_size = min_size

    def __call__(self, data: bytes) -> tuple[bytes, bool]:
        """The frame payload and whether it is compressed (RSV1)."""
        if len(data) < self.min_size:
            return data, False  # sent as is; it does not enter the compressor's window either
        out = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if out.endswith(TAIL):
            out = out[:-4]
        return out or b"\x00", True


def frame_size(sender: str, opcode: int, payload: bytes, compressed: bool) -> int:
    if sender == SERVER:
        return header_size(len(payload), masked=False) + len(payload)
    size = len(_core.build_frame(opcode, payload, MASK, True, compressed))
    assert size == header_size(len(payload), masked=True) + len(payload)
    return size


@dataclass
class Tally:
    """Frame bytes by direction and by message kind, for one serializer and deflate setting."""

    by_sender: dict[str, int] = field(default_factory=lambda: {DEVICE: 0, SERVER: 0})
    by_kind: dict[str, int] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    def add(self, msg: Msg, size: int) -> None:
        self.by_sender[msg.sender] += size
        self.by_kind[msg.kind] = self.by_kind.get(msg.kind, 0) + size
        self.count[msg.kind] = self.count.get(msg.kind, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_sender.values())


def measure(
    messages: list[Msg], serializer: str, *, deflate: bool, server_level: int, device_min: int
) -> Tally:
    encode, opcode = SERIALIZERS[serializer]
    options = DeflateOptions()
    compress = {
        DEVICE: Deflater(options.compress_level, device_min),
        SERVER: Deflater(server_level, 0),
    }
    tally = Tally()
    for msg in messages:
        data = encode(*msg.fields)
        payload, compressed = compress[msg.sender](data) if deflate else (data, False)
        tally.add(msg, frame_size(msg.sender, opcode, payload, compressed))
    return tally


# --- report -----------------------------------------------------------------------------------


def _kinds(messages: list[Msg]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for msg in messages:
        seen.setdefault(msg.kind, msg.sender)
    return list(seen.items())


def render(messages: list[Msg], results: dict[str, dict[str, Tally]], extra: dict[str, Any]) -> str:
    plain, deflated = results["plain"], results["deflate"]
    n_device = sum(1 for m in messages if m.sender == DEVICE)
    n_server = len(messages) - n_device
    out = [
        f"One device, one day, one connection: {n_device:,} frames {DEVICE}, "
        f"{n_server:,} {SERVER}.",
        "Bytes are WebSocket frames (header + payload; device frames masked). TCP/IP and TLS are",
        "not counted: TLS adds ~22-29 B per record (TLS 1.3: 5 B header + 1 B content type +",
        "16 B AEAD tag; TLS 1.2 AES-GCM: 5 B header + 8 B explicit nonce + 16 B tag), so about",
        f"{22 * len(messages):,}-{29 * len(messages):,} B a day at one record per frame.",
        "",
        f"{'':<26}{'plain':^36}   {'permessage-deflate':^36}",
        f"{'':<26}"
        + "   ".join([f"{'dev→srv':>12}{'srv→dev':>12}{'total':>12}"] * 2)
        + f"{'deflate/plain':>15}",
    ]

    def row(label: str, p: Tally, d: Tally) -> str:
        cells = (
            f"{t.by_sender[DEVICE]:>12,}{t.by_sender[SERVER]:>12,}{t.total:>12,}" for t in (p, d)
        )
        return f"{label:<26}{'   '.join(cells)}{d.total / p.total:>15.2f}"

    for name in SERIALIZERS:
        out.append(row(f"{name} ({VSN[name]})", plain[name], deflated[name]))
    cells = []
    for tallies in (plain, deflated):
        mp, js = tallies["MessagePack"], tallies["JSON"]
        cells.append(
            "".join(f"{mp.by_sender[s] / js.by_sender[s]:>12.2f}" for s in (DEVICE, SERVER))
            + f"{mp.total / js.total:>12.2f}"
        )
    out.append(f"{'MessagePack / JSON':<26}{'   '.join(cells)}")
    out.append("")
    out.append(
        f"{DEVICE} with deflate, nhlink's min_size = {extra['device_min_size']} B: "
        + ", ".join(f"{k} {deflated[k].by_sender[DEVICE]:,} B" for k in SERIALIZERS)
        + ";"
    )
    out.append(
        "if the device compressed every message (min_size = 0): "
        + ", ".join(f"{k} {v:,} B" for k, v in extra["device_compress_all"].items())
        + "."
    )
    out.append("")
    out.append("Per message kind: bytes per frame (mean), then per day.")
    out.append(
        f"{'kind':<26}{'dir':<5}{'n/day':>6}"
        f"{'JSON':>8}{'MP':>7}{'JSON+d':>8}{'MP+d':>7}"
        f"{'JSON/day':>11}{'MP/day':>10}{'JSON+d':>10}{'MP+d':>9}"
    )
    for kind, sender in _kinds(messages):
        n = plain["JSON"].count[kind]
        sizes = [
            plain["JSON"].by_kind[kind],
            plain["MessagePack"].by_kind[kind],
            deflated["JSON"].by_kind[kind],
            deflated["MessagePack"].by_kind[kind],
        ]
        means = "".join(f"{c / n:>{w}.0f}" for c, w in zip(sizes, (8, 7, 8, 7), strict=True))
        days = "".join(f"{c:>{w},}" for c, w in zip(sizes, (11, 10, 10, 9), strict=True))
        arrow = "→" if sender == DEVICE else "←"
        out.append(f"{kind:<26}{arrow:<5}{n:>6}{means}{days}")
    out.append("(→ device to server, ← server to device; MP = MessagePack, +d = with deflate)")
    return "\n".join(line.rstrip() for line in out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument(
        "--server-level",
        type=int,
        default=6,
        help="the server's zlib level: 6 for Bandit (default), 9 for cowboy",
    )
    args = parser.parse_args(argv)
    messages = day()
    min_size = DeflateOptions().min_size
    results: dict[str, dict[str, Tally]] = {
        mode: {
            name: measure(
                messages,
                name,
                deflate=mode == "deflate",
                server_level=args.server_level,
                device_min=min_size,
            )
            for name in SERIALIZERS
        }
        for mode in ("plain", "deflate")
    }
    all_compressed = {
        name: measure(
            messages, name, deflate=True, server_level=args.server_level, device_min=0
        ).by_sender[DEVICE]
        for name in SERIALIZERS
    }
    extra = {"device_compress_all": all_compressed, "device_min_size": min_size}
    print(render(messages, results, extra))
    if args.json:
        data = {
            "frames": {
                DEVICE: sum(1 for m in messages if m.sender == DEVICE),
                SERVER: sum(1 for m in messages if m.sender == SERVER),
            },
            "server_level": args.server_level,
            **extra,
            "results": {
                mode: {
                    name: {
                        "by_direction": t.by_sender,
                        "total": t.total,
                        "by_kind": t.by_kind,
                        "count": t.count,
                    }
                    for name, t in tallies.items()
                }
                for mode, tallies in results.items()
            },
        }
        Path(args.json).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
