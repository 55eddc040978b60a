"""The update message and the client's decision, sans-I/O (PROTOCOL.md §7).

* :class:`UpdateInfo` parses an ``update`` push (or a legacy join reply) into checked fields.
* :func:`normalize_decision` turns what ``Client.update_available`` returned — typed objects or
  the Elixir client's spellings — into one of :class:`Apply`, :class:`Ignore`, :class:`Reschedule`.
* :class:`ProgressThrottle` decides when a progress report is due: at most every 0.5 s and only
  when the integer percentage rises (§7.3, §11.1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import DecodeError

__all__ = [
    "Apply",
    "Decision",
    "Ignore",
    "ProgressThrottle",
    "Reschedule",
    "UpdateInfo",
    "normalize_decision",
]


@dataclass(frozen=True)
class Apply:
    """Install the update now."""


@dataclass(frozen=True)
class Ignore:
    """Skip this update; ``reason`` goes to the server (which may penalise the device)."""

    reason: str = "ignored by the device"


@dataclass(frozen=True)
class Reschedule:
    """Ask again in ``ms`` milliseconds (reported to the server as ``delay_for``)."""

    ms: int
    reason: str = "rescheduled by the device"


#: What :meth:`Client.update_available` may return. The AVM spellings are accepted too:
#: ``"apply"``, ``"ignore"``, ``("reschedule", ms)``.
Decision = Apply | Ignore | Reschedule | Literal["apply", "ignore"] | tuple[str, int]

_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")


def _optional_hex(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise DecodeError(f"update: {name} is not a SHA-256 hex digest: {value!r}")
    return value.upper()


@dataclass(frozen=True)
class UpdateInfo:
    """A checked ``update`` payload. ``checksum`` is upper-case hex or None when not sent."""

    firmware_url: str
    firmware_meta: Mapping[str, Any]
    size: int | None
    checksum: str | None
    partials_checksums: Sequence[str] = field(default_factory=tuple)
    deployment_id: int | None = None

    @property
    def uuid(self) -> str | None:
        uuid = self.firmware_meta.get("uuid")
        return uuid if isinstance(uuid, str) else None

    @classmethod
    def parse(cls, payload: Any) -> UpdateInfo | None:
        """None when the payload says there is nothing to do (``update_available: false``).

        Raises :class:`~nhlink.errors.DecodeError` for a payload that cannot be acted on.
        """
        if not isinstance(payload, Mapping):
            raise DecodeError(f"update payload is not an object: {payload!r}")
        if payload.get("update_available") is False:
            return None
        url = payload.get("firmware_url")
        if url is None or url == "":
            if payload.get("update_available") is True:
                raise DecodeError("update: update_available is true but there is no firmware_url")
            return None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise DecodeError("update: firmware_url is not an http(s) URL")
        meta = payload.get("firmware_meta") or {}
        if not isinstance(meta, Mapping):
            raise DecodeError("update: firmware_meta is not an object")
        # The uuid names the image (resume points, the join's currently_downloading_uuid).
        uuid = meta.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            raise DecodeError(f"update: firmware_meta.uuid is not a non-empty string: {uuid!r}")
        size = payload.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise DecodeError(f"update: size is not a byte count: {size!r}")
        # §7.1: the checksum is top-level; firmware_meta.sha256 is the Elixir client's fallback.
        checksum = _optional_hex("checksum", payload.get("checksum"))
        if checksum is None:
            checksum = _optional_hex("firmware_meta.sha256", meta.get("sha256"))
        partials = payload.get("partials_checksums") or []
        if not isinstance(partials, list):
            raise DecodeError("update: partials_checksums is not a list")
        parts = tuple(_optional_hex("partials_checksums", p) or "" for p in partials)
        if any(not p for p in parts):
            raise DecodeError("update: empty entry in partials_checksums")
        deployment = payload.get("deployment_id")
        return cls(
            firmware_url=url,
            firmware_meta=dict(meta),
            size=size,
            checksum=checksum,
            partials_checksums=parts,
            deployment_id=deployment if isinstance(deployment, int) else None,
        )


def normalize_decision(value: Any) -> Apply | Ignore | Reschedule:
    """``Apply()``/``Ignore()``/``Reschedule(ms)`` or AVM's ``"apply"``, ``"ignore"``,
    ``("reschedule", ms)``. Raises ValueError for anything else."""
    if isinstance(value, Apply | Ignore | Reschedule):
        if isinstance(value, Reschedule) and (not isinstance(value.ms, int) or value.ms < 0):
            raise ValueError(f"Reschedule needs a non-negative integer of ms, not {value.ms!r}")
        return value
    if value == "apply" or value is None:
        return Apply()
    if value == "ignore":
        return Ignore()
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and value[0] == "reschedule"
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and value[1] >= 0
    ):
        return Reschedule(value[1])
    raise ValueError(f"update_available() returned {value!r}; expected Apply, Ignore or Reschedule")


class ProgressThrottle:
    """Progress reports at most every ``interval`` seconds and only when the percentage rises —
    except that the current percentage is repeated every ``keepalive`` seconds, since the server
    expires an in-flight update after 30 minutes without progress (§7.4) and 1 % of a large
    image on a slow link can take longer than that."""

    def __init__(
        self, total: int | None, interval: float = 0.5, keepalive: float | None = 300.0
    ) -> None:
        self.total = total
        self.interval = interval
        self.keepalive = keepalive
        self.last_percent = -1
        self.last_time: float | None = None

    def percent(self, done: int) -> int | None:
        if not self.total:
            return None
        return max(0, min(100, done * 100 // self.total))

    def due(self, done: int, now: float) -> int | None:
        """The percentage to report now, or None if no report is due."""
        pct = self.percent(done)
        if pct is None:
            return None
        last = self.last_time
        if pct <= self.last_percent:
            if self.keepalive is None or last is None or now - last < self.keepalive:
                return None
        elif last is not None and now - last < self.interval and pct < 100:
            return None
        self.last_percent = pct
        self.last_time = now
        return pct
