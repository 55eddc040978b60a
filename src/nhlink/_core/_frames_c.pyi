"""Type stub of the compiled :mod:`nhlink._core._frames_c`.

Same API as :mod:`nhlink._core._frames_py`, from which it is compiled.
"""

from typing import Final

Buffer = bytes | bytearray | memoryview

OP_CONT: Final[int]
OP_TEXT: Final[int]
OP_BINARY: Final[int]
OP_CLOSE: Final[int]
OP_PING: Final[int]
OP_PONG: Final[int]
CLOSE_NO_STATUS: Final[int]

class Utf8Validator:
    def __init__(self) -> None: ...
    def reset(self) -> None: ...
    def feed(self, data: Buffer, final: bool = False) -> None: ...

class Frame:
    opcode: int
    fin: bool
    rsv1: bool
    payload: bytes
    def __init__(
        self, opcode: int, payload: Buffer, fin: bool = True, rsv1: bool = False
    ) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    __hash__: None  # type: ignore[assignment]

def build_frame(
    opcode: int, payload: Buffer, mask_key: Buffer, fin: bool = True, rsv1: bool = False
) -> bytes: ...
def build_close_payload(code: int | None, reason: str = "") -> bytes: ...
def parse_close_payload(payload: Buffer) -> tuple[int, str]: ...

class FrameParser:
    def __init__(
        self,
        max_frame_size: int = ...,
        max_message_size: int = ...,
        allow_rsv1: bool = False,
        validate_utf8: bool = True,
    ) -> None: ...
    @property
    def message_in_progress(self) -> bool: ...
    def feed(self, data: Buffer) -> list[Frame]: ...
    def payload_buffer(self) -> memoryview | None: ...
    def payload_received(self, nbytes: int) -> list[Frame]: ...
