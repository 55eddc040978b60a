"""The pure-Python core: the fallback, and the reference the compiled core must agree with."""

from __future__ import annotations

from ._codec_py import MAX_JSON_DEPTH, Message, decode_binary, decode_message, encode_message
from ._digest_py import StreamingDigest
from ._frames_py import (
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
from ._mask_py import apply_mask, mask_inplace
from ._msgpack_py import MAX_MSGPACK_DEPTH, decode_msgpack, encode_msgpack

NAME = "python"

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
