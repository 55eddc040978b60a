"""Update payload parsing, decisions and progress throttling (PROTOCOL.md §7)."""

from __future__ import annotations

from typing import Any

import pytest

from nhlink import Apply, Ignore, Reschedule
from nhlink.errors import DecodeError
from nhlink.protocol.lifecycle import ProgressThrottle, UpdateInfo, normalize_decision

SUM = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"


def payload(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "update_available": True,
        "firmware_url": "https://bucket.example/fw.bin?X-Amz-Signature=abc",
        "firmware_meta": {"uuid": "u-1", "version": "1.2.0", "product": "p"},
        "size": 1234,
        "checksum": SUM,
        "partials_checksums": [SUM.lower()],
        "deployment_id": 42,
    }
    base.update(changes)
    return base


def test_parse_current_server_payload() -> None:
    info = UpdateInfo.parse(payload())
    assert info is not None
    assert info.uuid == "u-1"
    assert info.size == 1234
    assert info.checksum == SUM
    assert info.partials_checksums == (SUM,)
    assert info.deployment_id == 42


def test_no_update() -> None:
    nothing = {
        "update_available": False,
        "firmware_url": None,
        "firmware_meta": None,
        "size": None,
        "checksum": None,
        "partials_checksums": None,
        "deployment_id": None,
    }
    assert UpdateInfo.parse(nothing) is None


def test_checksum_fallback_to_meta_sha256_and_null() -> None:
    info = UpdateInfo.parse(
        payload(checksum=None, firmware_meta={"uuid": "u", "sha256": SUM.lower()})
    )
    assert info is not None and info.checksum == SUM
    info = UpdateInfo.parse(payload(checksum=None, partials_checksums=None, size=None))
    assert info is not None and info.checksum is None and info.size is None


@pytest.mark.parametrize(
    "bad",
    [
        payload(checksum="xyz"),
        payload(size=-1),
        payload(size="12"),
        payload(firmware_url="ftp://x"),
        payload(firmware_meta=[1]),
        payload(partials_checksums="abc"),
        "not an object",
    ],
)
def test_unusable_payloads(bad: Any) -> None:
    with pytest.raises(DecodeError):
        UpdateInfo.parse(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Apply(), Apply()),
        ("apply", Apply()),
        (None, Apply()),
        ("ignore", Ignore()),
        (Ignore("nope"), Ignore("nope")),
        (("reschedule", 5000), Reschedule(5000)),
        (Reschedule(10, "later"), Reschedule(10, "later")),
    ],
)
def test_decisions(value: Any, expected: Any) -> None:
    assert normalize_decision(value) == expected


@pytest.mark.parametrize("value", ["later", ("reschedule", -1), ("reschedule", "5"), 3])
def test_bad_decisions(value: Any) -> None:
    with pytest.raises(ValueError):
        normalize_decision(value)


def test_progress_throttle() -> None:
    t = ProgressThrottle(total=1000, interval=0.5)
    assert t.due(10, now=0.0) == 1
    assert t.due(20, now=0.1) is None  # too soon
    assert t.due(25, now=0.6) == 2
    assert t.due(25, now=2.0) is None  # not rising
    assert t.due(1000, now=2.1) == 100  # completion is never held back
    assert ProgressThrottle(total=None).due(10, 0) is None


def test_progress_keepalive() -> None:
    t = ProgressThrottle(total=10**9, interval=0.5, keepalive=300)
    assert t.due(10**7, now=0.0) == 1
    assert t.due(10**7 + 5, now=299.0) is None
    assert t.due(10**7 + 5, now=300.0) == 1  # same percentage, repeated to keep the update alive
    assert t.due(10**7 + 9, now=301.0) is None
