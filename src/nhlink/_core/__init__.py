"""The hot paths of nhlink: bytes in, bytes out. No asyncio, sockets, clocks or logging here.

Three areas, each with a compiled (Cython) implementation and a pure-Python twin that gives the
same results byte for byte:

* WebSocket frames, client side (RFC 6455 §5): :func:`apply_mask`, :func:`mask_inplace`,
  :func:`build_frame`, :class:`FrameParser`, :class:`Frame`, close payload helpers.
* The Phoenix Channels v2 message codec: :func:`encode_message`, :func:`decode_message`,
  :func:`decode_binary`, :class:`Message`; and its MessagePack variant (vsn 3.0.0):
  :func:`encode_msgpack`, :func:`decode_msgpack`.
* Streaming SHA-256 with chunk buffering for firmware: :class:`StreamingDigest`.

The implementation is chosen **once**, here: the compiled one when it is importable and the
environment variable ``NHLINK_NO_EXTENSIONS`` is not set, else the pure-Python one.
:data:`IMPLEMENTATION` says which (``"cython"`` or ``"python"``). Both stay importable side by
side as :mod:`nhlink._core.python` and :mod:`nhlink._core.cython` (the latter raises
:class:`ImportError` when the extensions were not built) for tests and benchmarks.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

__all__ = [
    "CLOSE_NO_STATUS",
    "IMPLEMENTATION",
    "MAX_JSON_DEPTH",
    "MAX_MSGPACK_DEPTH",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Frame",
    "FrameParser",
    "Message",
    "StreamingDigest",
    "Utf8Validator",
    "apply_mask",
    "build_close_payload",
    "build_frame",
    "decode_binary",
    "decode_message",
    "decode_msgpack",
    "encode_message",
    "encode_msgpack",
    "extensions_disabled",
    "mask_inplace",
    "parse_close_payload",
]


def extensions_disabled() -> bool:
    """True when ``NHLINK_NO_EXTENSIONS`` asks for the pure-Python core."""
    return os.environ.get("NHLINK_NO_EXTENSIONS", "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


if TYPE_CHECKING:
    # Type checkers always see the Python API; the compiled modules mirror it (see the .pyi stubs).
    from .python import (
        CLOSE_NO_STATUS,
        MAX_JSON_DEPTH,
        MAX_MSGPACK_DEPTH,
        OP_BINARY,
        OP_CLOSE,
        OP_CONT,
        OP_PING,
        OP_PONG,
        OP_TEXT,
        Frame,
        FrameParser,
        Message,
        StreamingDigest,
        Utf8Validator,
        apply_mask,
        build_close_payload,
        build_frame,
        decode_binary,
        decode_message,
        decode_msgpack,
        encode_message,
        encode_msgpack,
        mask_inplace,
        parse_close_payload,
    )

    IMPLEMENTATION: Literal["cython", "python"]
else:
    # Only the chosen core is imported: the pure twins cost ~10 ms and ~1 MB when unused.
    _impl = None
    if not extensions_disabled():
        try:
            from . import cython as _impl
        except ImportError:
            _impl = None
    if _impl is None:
        from . import python as _impl

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

    for _name in __all__:
        if _name not in ("IMPLEMENTATION", "extensions_disabled"):
            globals()[_name] = getattr(_impl, _name)
    del _name
