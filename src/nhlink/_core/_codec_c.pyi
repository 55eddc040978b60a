"""Type stub of the compiled :mod:`nhlink._core._codec_c`.

Same API as :mod:`nhlink._core._codec_py`, its pure-Python twin.
"""

from collections.abc import Iterator
from typing import Any, Final

Buffer = bytes | bytearray | memoryview

MAX_JSON_DEPTH: Final[int]

class Message:
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any
    def __init__(
        self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
    ) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    __hash__: None  # type: ignore[assignment]
    def __iter__(self) -> Iterator[Any]: ...

def encode_message(
    join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
) -> bytes: ...
def decode_message(data: Buffer | str, /) -> Message: ...
def decode_binary(data: Buffer, /) -> Message: ...
