"""The compiled core. Importing it raises :class:`ImportError` unless every extension is built.

Only :mod:`nhlink._core` decides which core the rest of nhlink uses; this module exists so tests
and benchmarks can reach the compiled core explicitly, side by side with :mod:`nhlink._core.python`.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from types import ModuleType

from . import _codec_c, _digest_c, _frames_c, _mask, _msgpack_c


def _require_compiled(*modules: ModuleType) -> None:
    # ``_frames_c.py`` and ``_digest_c.py`` exist as Cython sources (symlinks to the pure twins)
    # in a source checkout; importing one of those is not the compiled core.
    for module in modules:
        path = getattr(module, "__file__", None) or ""
        if not path.endswith(tuple(EXTENSION_SUFFIXES)):
            raise ImportError(f"{module.__name__} is not compiled (loaded from {path or '?'})")


_require_compiled(_mask, _frames_c, _codec_c, _digest_c, _msgpack_c)

from ._codec_c import MAX_JSON_DEPTH, Message, decode_binary, decode_message, encode_message  # noqa: E402
from ._digest_c import StreamingDigest  # noqa: E402
from ._frames_c import (  # noqa: E402
    CLOSE_NO_STATUS,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    FrameParser,
    Utf8Validator,
    build_close_payload,
    build_frame,
    parse_close_payload,
)
from ._mask import apply_mask, mask_inplace  # noqa: E402
from ._msgpack_c import MAX_MSGPACK_DEPTH, decode_msgpack, encode_msgpack  # noqa: E402

NAME = "cython"

__all__ = [
    "CLOSE_NO_STATUS",
    "MAX_JSON_DEPTH",
    "MAX_MSGPACK_DEPTH",
    "NAME",
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
    "mask_inplace",
    "parse_close_payload",
]
