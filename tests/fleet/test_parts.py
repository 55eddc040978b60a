"""The fleet's parts without sockets: option parsing, shards, histograms, the pacer, NH1 keys."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nhlink.errors import ConfigError
from nhlink.fleet.cli import parse_duration, parse_rate, parse_speed
from nhlink.fleet.histogram import Histogram
from nhlink.fleet.sim import identities, merge, parse_shard, shard_range
from nhlink.protocol import auth
from nhlink.protocol.backoff import Pacer


def test_rates_durations_and_speeds() -> None:
    assert parse_rate("500/s") == 500
    assert parse_rate("30/min") == 0.5
    assert parse_rate("36/h") == 0.01
    assert parse_rate("2.5") == 2.5
    assert parse_duration("90") == 90
    assert parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400
    assert parse_speed("125k") == 125_000
    assert parse_speed("1M/s") == 1_000_000
    assert parse_speed("2MiB") == 2 * 1024 * 1024
    assert parse_speed("2MiB/s") == 2 * 1024 * 1024
    assert parse_speed("1MB") == 1_000_000
    assert parse_speed("64 KiB/s") == 64 * 1024
    assert parse_speed("500") == 500
    for bad, parse in (
        ("fast", parse_rate),
        ("5/day", parse_rate),
        ("3d", parse_duration),
        ("1Q", parse_speed),
    ):
        with pytest.raises(ValueError):
            parse(bad)


def test_shard_index_from_kubernetes() -> None:
    assert parse_shard(None) == (0, 1)
    assert parse_shard("2/5") == (2, 5)
    assert parse_shard("/5", {"JOB_COMPLETION_INDEX": "4"}) == (4, 5)
    with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX"):
        parse_shard("/5", {})
    with pytest.raises(ConfigError):
        parse_shard("5/5")
    with pytest.raises(ConfigError):
        parse_shard("3")


@settings(max_examples=200, deadline=None)
@given(devices=st.integers(1, 100_000), count=st.integers(1, 64))
def test_shards_are_disjoint_and_cover_every_device(devices: int, count: int) -> None:
    count = min(count, devices)
    ranges = [shard_range(devices, i, count) for i in range(count)]
    assert [n for r in ranges for n in r] == list(range(devices))
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_identities_are_wide_enough_and_sort_in_order() -> None:
    assert identities("gw", 10, range(2)) == ["gw-00001", "gw-00002"]
    wide = identities("gw", 1_000_000, range(999_998, 1_000_000))
    assert wide == ["gw-0999999", "gw-1000000"]
    names = identities("gw", 123_456, range(123_456))
    assert names == sorted(names)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(1e-6, 500, allow_nan=False), min_size=1, max_size=300),
    q=st.sampled_from([50, 90, 99, 100]),
)
def test_percentiles_are_within_one_bucket(values: list[float], q: int) -> None:
    hist = Histogram()
    for v in values:
        hist.add(v)
    exact = sorted(values)[max(1, math.ceil(len(values) * q / 100)) - 1]
    got = hist.percentile(q)
    assert got is not None
    assert exact * 0.999 <= got <= max(exact * 2 ** (1 / 16) * 1.001, 1e-6 * 1.05)
    assert got <= hist.maximum


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(
        st.lists(st.floats(1e-5, 100, allow_nan=False), max_size=50), min_size=1, max_size=5
    )
)
def test_merged_histograms_equal_one_histogram_of_everything(parts: list[list[float]]) -> None:
    whole = Histogram()
    shards = []
    for part in parts:
        h = Histogram()
        for v in part:
            h.add(v)
            whole.add(v)
        shards.append(Histogram.from_json(h.to_json()))  # through JSON, as merge sees them
    merged = Histogram.merged(shards)
    assert merged.buckets == whole.buckets
    assert merged.count == whole.count
    for q in (50, 90, 99):
        got, want = merged.percentile(q), whole.percentile(q)
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert got == pytest.approx(want, rel=1e-3)  # max_ms is rounded to a microsecond


def test_merge_refuses_what_is_not_a_fleet_summary() -> None:
    from nhlink.fleet.sim import FleetError

    with pytest.raises(FleetError):
        merge([])
    with pytest.raises(FleetError, match="nhlink_fleet"):
        merge([{"hub": "x"}])


def test_pacer_spaces_attempts_and_allows_a_burst() -> None:
    now = [100.0]
    pacer = Pacer(10, burst=3, jitter=0.0, clock=lambda: now[0])
    delays = [pacer.reserve() for _ in range(6)]
    # Three at once (the burst), then one every 0.1 s.
    assert delays == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])
    now[0] += 10  # idle: the burst is available again
    assert pacer.reserve() == 0


def test_pacer_jitter_stays_within_one_slot() -> None:
    now = [0.0]
    rolls = iter([0.5, 0.999])
    pacer = Pacer(4, jitter=1.0, clock=lambda: now[0], rand=lambda: next(rolls))
    assert pacer.reserve() == 0  # a free slot: no jitter added
    assert pacer.reserve() == pytest.approx(0.25 + 0.5 * 0.25)
    assert pacer.reserve() == pytest.approx(0.5 + 0.999 * 0.25)
    with pytest.raises(ConfigError):
        Pacer(0)


def test_nh1_keys_are_derived_once_per_second_and_product(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, iterations: int, dklen: int) -> bytes:
        calls.append(salt)
        return real(name, password, salt, iterations, dklen)

    auth._DERIVED.clear()
    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    signed = [auth.sign("nhp_k", "secret", f"dev-{i}", 1_700_000_000) for i in range(50)]
    assert len(calls) == 1
    assert len({s["x-nh-signature"] for s in signed}) == 50  # one per device all the same
    auth.sign("nhp_k", "secret", "dev-0", 1_700_000_001)
    auth.sign("nhp_other", "secret", "dev-0", 1_700_000_001)
    assert len(calls) == 3
    # Cached or not, the headers are the same (and the cache stays small).
    monkeypatch.setattr(hashlib, "pbkdf2_hmac", real)
    for i in range(20):
        auth.sign("nhp_k", "secret", "dev-0", 1_700_000_100 + i)
    assert len(auth._DERIVED) <= auth._DERIVED_MAX
    auth._DERIVED.clear()
    assert auth.sign("nhp_k", "secret", "dev-7", 1_700_000_000) == signed[7]
