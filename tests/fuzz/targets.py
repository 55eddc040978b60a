"""Fuzz targets: each takes arbitrary bytes and must only ever raise the documented error —
and, where nhlink has two implementations, both must give the same answer (differential).

* ``frames``: the WebSocket frame parser, the input cut into chunks at positions drawn from
  it, compiled vs pure (frames, close codes and the frames delivered before an error);
* ``codec``: the Phoenix message decoder (text and binary), compiled vs pure;
* ``etf``: the test server's ETF decoder (NH1 tokens arrive through it): ``ETFError`` only;
* ``update``: ``UpdateInfo.parse`` of a JSON document: ``DecodeError`` only, and what it
  accepts is well-formed (a string uuid, 64-hex checksums, an http(s) URL);
* ``config``: ``LinkConfig.build`` from a JSON object of options: ``ConfigError`` only, and
  what it accepts is usable (a safe name, a real boolean for every security switch).

``python -m tests.fuzz TARGET [seconds]`` fuzzes one with atheris (coverage-guided over the
pure-Python code); tests/fuzz/test_fuzz.py replays the corpus and runs each briefly in CI.
Everything a target runs is imported at the top of this module, so that atheris instruments
it (it instruments what is imported inside ``instrument_imports``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

from nhlink.config import LinkConfig
from nhlink.errors import ConfigError, DecodeError, FrameError
from nhlink.protocol.lifecycle import UpdateInfo
from nhlink.testing._etf import ETFError, decode

PY: ModuleType = importlib.import_module("nhlink._core.python")
try:
    C: ModuleType | None = importlib.import_module("nhlink._core.cython")
except ImportError:  # pure-only builds: the targets still run, without the comparison
    C = None


def _chunks(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Parser options from the first byte, the rest cut at sizes from the second."""
    if len(data) < 2:
        return {}, [data]
    flags, step = data[0], data[1] or 1
    options = {
        "allow_rsv1": bool(flags & 1),
        "validate_utf8": not flags & 2,
        "max_frame_size": 1 << (4 + (flags >> 4)),
        "max_message_size": 1 << (6 + ((flags >> 2) & 3) * 4),
    }
    body = data[2:]
    return options, [body[i : i + step] for i in range(0, len(body), step)] or [b""]


def _parse(core: ModuleType, options: dict[str, Any], chunks: list[bytes]) -> list[Any]:
    parser = core.FrameParser(**options)
    out: list[Any] = []
    for chunk in chunks:
        try:
            frames = parser.feed(chunk)
        except FrameError as exc:
            out += [(f.opcode, f.fin, f.rsv1, f.payload) for f in exc.frames]
            out.append(("error", exc.close_code))
            return out
        out += [(f.opcode, f.fin, f.rsv1, f.payload) for f in frames]
    return out


def frames(data: bytes) -> None:
    options, chunks = _chunks(data)
    expected = _parse(PY, options, chunks)
    if C is not None:
        got = _parse(C, options, chunks)
        if got != expected:
            raise AssertionError(f"compiled {got!r} != pure {expected!r}")
    whole = _parse(PY, options, [b"".join(chunks)])
    if whole != expected:  # the same bytes in one piece: the same frames
        raise AssertionError(f"one chunk {whole!r} != chunked {expected!r}")


def _decode(core: ModuleType, data: bytes, binary: bool) -> Any:
    try:
        message = core.decode_binary(data) if binary else core.decode_message(data)
    except DecodeError as exc:
        return ("error", type(exc).__name__)
    return tuple(message)


def codec(data: bytes) -> None:
    for binary in (False, True):
        expected = _decode(PY, data, binary)
        if C is not None:
            got = _decode(C, data, binary)
            if got != expected:
                raise AssertionError(f"compiled {got!r} != pure {expected!r} (binary={binary})")


def etf(data: bytes) -> None:
    with contextlib.suppress(ETFError):
        decode(data)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def update(data: bytes) -> None:
    value = _json(data)
    try:
        info = UpdateInfo.parse(value)
    except DecodeError:
        return
    if info is None:
        return
    if not isinstance(info.uuid, str) or not info.uuid:
        raise AssertionError(f"accepted an update without a uuid: {value!r}")
    if not info.firmware_url.startswith(("https://", "http://")):
        raise AssertionError(f"accepted firmware_url {info.firmware_url!r}")
    for digest in (info.checksum, *info.partials_checksums):
        if digest is not None and (len(digest) != 64 or digest.upper() != digest):
            raise AssertionError(f"accepted checksum {digest!r}")


_META = {"uuid": "u", "product": "p", "architecture": "a", "platform": "x", "version": "1"}
_BASE = {"host": "h", "product_key": "k", "product_secret": "s", "identifier": "i"}


def config(data: bytes) -> None:
    value = _json(data)
    if not isinstance(value, dict):
        return
    options = {**_BASE, "firmware_meta": _META, **value}
    try:
        built = LinkConfig.build(**options)
    except ConfigError:
        return
    for switch in ("dangerously_disable_verification", "allow_unverified_firmware", "ssl"):
        if type(getattr(built, switch)) is not bool:
            raise AssertionError(f"{switch} accepted {getattr(built, switch)!r}")
    if "/" in built.name or built.name.startswith((".", "-")):
        raise AssertionError(f"unsafe name accepted: {built.name!r}")
    if any(c in built.url for c in " \n?#@") and built.url.count("?") != 1:
        raise AssertionError(f"URL broken by options: {built.url!r}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": frames,
    "codec": codec,
    "etf": etf,
    "update": update,
    "config": config,
}
