"""FakeHub's HTTP upgrade: paths, vsn, NH1 shared secrets (§2, §3.2) — over real sockets."""

from __future__ import annotations

import email.utils
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from nhlink.errors import ConfigError
from nhlink.testing import NO_AUTH_REASON, PLATFORM_REASON, FakeHub
from tests.testing import _signer
from tests.testing.conftest import IDENT, KEY, SECRET, T0, FrozenClock, open_device

VECTOR = _signer.VECTOR_HEADERS


async def refused(url: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """Attempt an upgrade that must fail; return the HTTP response."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers, open_timeout=5, **kwargs):
            pass
    return info.value.response


def date_of(response: Any) -> float:
    parsed = email.utils.parsedate_to_datetime(response.headers["Date"])
    return parsed.timestamp()


async def test_vector_headers_accepted_at_t(hub: FakeHub) -> None:
    async with connect(hub.url, additional_headers=VECTOR, open_timeout=5) as ws:
        assert ws.response is not None
        assert ws.response.status_code == 101
        assert date_of(ws.response) == T0  # Date follows the hub clock
        record = await hub.wait_for_device(IDENT, joined=False)
    assert record.auth == "product_key"
    assert record.key == KEY
    assert hub.upgrade_counts(IDENT) == {101: 1}


async def test_vector_expired_after_91_s(hub: FakeHub, clock: FrozenClock) -> None:
    clock.now = T0 + 91
    response = await refused(hub.url, VECTOR)
    assert response.status_code == 401
    assert response.body == b""
    assert "nh-connection-error-reason" not in response.headers
    assert date_of(response) == T0 + 91
    assert hub.attempts[-1].reason == "expired"
    assert hub.attempts[-1].identifier == IDENT  # attributed from the (unverified) token
    assert hub.upgrade_counts(IDENT) == {401: 1}


async def test_token_5_s_in_the_future_is_refused_with_date(hub: FakeHub) -> None:
    headers = _signer.sign(KEY, SECRET, IDENT, T0 + 5)
    response = await refused(hub.url, headers)
    assert response.status_code == 401
    assert response.body == b""
    # §3.2.5: the client can sign its next attempt with this Date.
    assert date_of(response) == T0
    assert hub.attempts[-1].reason == "invalid"
    async with await open_device(hub, t=int(date_of(response))):
        pass


async def test_no_auth_gets_the_reason_header(hub: FakeHub) -> None:
    response = await refused(hub.url)
    assert response.status_code == 401
    assert response.headers["nh-connection-error-reason"] == NO_AUTH_REASON
    assert "Date" in response.headers
    assert hub.attempts[-1].reason == "no_auth"
    assert hub.attempts[-1].identifier is None


async def test_any_x_header_means_shared_secret(hub: FakeHub) -> None:
    response = await refused(hub.url, {"X-Whatever": "1"})
    assert response.status_code == 401
    assert "nh-connection-error-reason" not in response.headers
    assert hub.attempts[-1].reason == "missing_header"


async def test_header_names_are_case_insensitive(hub: FakeHub) -> None:
    headers = {k.upper(): v for k, v in VECTOR.items()}
    async with connect(hub.url, additional_headers=headers, open_timeout=5):
        await hub.wait_for_device(IDENT, joined=False)


@pytest.mark.parametrize("query", ["", "?vsn=1.0.0", "?vsn=3.1.0", "?vsn=2.0", "?vsn=2.1.0"])
async def test_vsn_must_match_a_serializer(hub: FakeHub, query: str) -> None:
    url = hub.base_url + "/device-socket/websocket" + query
    response = await refused(url, VECTOR)
    assert response.status_code == 403
    assert response.body == b""
    assert hub.attempts[-1].reason == "vsn"


async def test_both_socket_paths_are_served(hub: FakeHub) -> None:
    async with connect(hub.url_for("/socket/websocket"), additional_headers=VECTOR):
        await hub.wait_for_device(IDENT, joined=False)
    assert [a.path for a in hub.attempts] == ["/socket/websocket"]


async def test_other_paths_redirect_to_docs(hub: FakeHub) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/websocket", "/device-socket", "/api/devices?vsn=2.0.0"):
            async with session.get(hub.http_url + path, allow_redirects=False) as response:
                assert response.status == 301
                assert response.headers["Location"] == "https://docs.nerves-hub.org/"
                assert "Date" in response.headers
    assert hub.attempts == []


async def test_plain_get_on_the_socket_path_is_400(hub: FakeHub) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(hub.url.replace("ws://", "http://"), headers=VECTOR) as response,
    ):
        assert response.status == 400
    assert hub.attempts[-1].status == 400


async def test_unknown_key(hub: FakeHub) -> None:
    headers = _signer.sign("nhp_other", SECRET, IDENT, T0)
    assert (await refused(hub.url, headers)).status_code == 401
    assert hub.attempts[-1].reason == "unknown_key"


async def test_revoked_key(hub: FakeHub) -> None:
    hub.revoke_key(KEY)
    assert (await refused(hub.url, VECTOR)).status_code == 401
    assert hub.attempts[-1].reason == "unknown_key"


async def test_product_key_creates_any_device(hub: FakeHub) -> None:
    for identifier in ("alpha", "beta"):
        async with await open_device(hub, identifier):
            await hub.wait_for_device(identifier, joined=False)
    assert set(hub.devices) == {"alpha", "beta"}


async def test_device_key_is_bound_to_its_identifier(clock: FrozenClock) -> None:
    async with FakeHub(device_keys={"nhd_k": ("dsecret", "dev-7")}, clock=clock) as hub:
        async with await open_device(hub, "dev-7", key="nhd_k", secret="dsecret"):
            record = await hub.wait_for_device("dev-7", joined=False)
            assert record.auth == "device_key"
        headers = _signer.sign("nhd_k", "dsecret", "dev-8", T0)
        assert (await refused(hub.url, headers)).status_code == 401
        assert hub.attempts[-1].reason == "identifier_mismatch"
        assert hub.upgrade_counts("dev-8") == {401: 1}


async def test_shared_secrets_disabled(clock: FrozenClock) -> None:
    async with FakeHub(
        shared_secrets={KEY: SECRET}, shared_secrets_enabled=False, clock=clock
    ) as hub:
        assert (await refused(hub.url, VECTOR)).status_code == 401
        assert hub.attempts[-1].reason == "shared_secrets_disabled"


async def test_unavailable_answers_503_with_reason(hub: FakeHub) -> None:
    hub.unavailable = True
    response = await refused(hub.url, VECTOR)
    assert response.status_code == 503
    assert response.headers["nh-connection-error-reason"] == PLATFORM_REASON
    hub.unavailable = False
    async with connect(hub.url, additional_headers=VECTOR):
        pass
    assert [a.status for a in hub.attempts] == [503, 101]


async def test_wait_for_attempts_counts_retries(hub: FakeHub, clock: FrozenClock) -> None:
    clock.now = T0 + 1000
    for _ in range(3):
        await refused(hub.url, VECTOR)
    attempts = await hub.wait_for_attempts(IDENT, 3, status=401, timeout=1)
    assert [a.reason for a in attempts] == ["expired"] * 3
    assert attempts[0].monotonic <= attempts[1].monotonic <= attempts[2].monotonic
    with pytest.raises(TimeoutError, match="4 attempts"):
        await hub.wait_for_attempts(IDENT, 4, timeout=0.05)


async def test_binds_loopback_only(hub: FakeHub) -> None:
    assert hub.host == "127.0.0.1"
    assert hub.url == f"ws://127.0.0.1:{hub.port}/device-socket/websocket?vsn=2.0.0"


def test_config_errors() -> None:
    with pytest.raises(ConfigError):
        FakeHub(shared_secrets={"nhd_not_a_product_key": "x"})
    with pytest.raises(ConfigError):
        FakeHub(device_keys={"nhp_x": ("s", "id")})
    with pytest.raises(ConfigError):
        FakeHub(extensions=["telepathy"])
    with pytest.raises(ConfigError):
        FakeHub(idle_timeout=0)
