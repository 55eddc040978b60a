"""Type stub of the compiled :mod:`nhlink._core._msgpack_c`.

Same API as :mod:`nhlink._core._msgpack_py`, its pure-Python twin.
"""

from typing import Any, Final

from ._codec_c import Message

Buffer = bytes | bytearray | memoryview

MAX_MSGPACK_DEPTH: Final[int]

def encode_msgpack(
    join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
) -> bytes: ...
def decode_msgpack(data: Buffer, /) -> Message: ...
