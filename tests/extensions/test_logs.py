"""The logging extension (PROTOCOL.md §8.4): shipping, rate limit, drops, no recursion."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from nhlink.extensions import LoggingExtension, LoggingOptions, NHLinkLogHandler, TokenBucket
from nhlink.testing import FakeHub

from ._support import DEVICE, FakeClock, make_hub, running_link, wait_ext


@contextlib.contextmanager
def app_logger(name: str, handler: logging.Handler) -> Iterator[logging.Logger]:
    """A logger that sends only to ``handler`` (not to pytest's capture)."""
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield log
    finally:
        log.removeHandler(handler)
        log.propagate = True


def logs(hub: FakeHub) -> list[Any]:
    return hub.devices[DEVICE].logs


def messages(hub: FakeHub) -> list[str]:
    return [payload["message"] for payload in logs(hub)]


async def wait_logs(hub: FakeHub, count: int) -> list[Any]:
    return await hub.wait_for(
        lambda: logs(hub) if len(logs(hub)) >= count else None, what=f"{count} log lines"
    )


def extension_of(link: Any) -> LoggingExtension:
    extension = link.extensions.get("logging")
    assert isinstance(extension, LoggingExtension)
    return extension


async def test_records_and_link_log_are_shipped() -> None:
    async with make_hub({"logging"}) as hub, running_link(hub, {"logging": True}) as link:
        extension = extension_of(link)
        link.log("info", "before attach: dropped silently")
        await wait_ext(hub, "logging:attached")
        handler = link.extensions.log_handler()
        assert handler.level == logging.INFO
        with app_logger("app.shipping", handler) as log:
            before = time.time()
            log.debug("below the handler level")
            log.warning("pump %s at %d%%", "P1", 97, extra={"sensor": "door", "count": 3})
            link.log("notice", "from link.log", sensor="door")
            link.log(logging.ERROR, "numeric level")
            shipped = await wait_logs(hub, 3)
        first = shipped[0]
        assert first["level"] == "warning"
        assert first["message"] == "pump P1 at 97%"
        meta = first["meta"]
        assert all(isinstance(v, str) for v in meta.values())
        assert meta["logger"] == "app.shipping"
        assert meta["sensor"] == "door" and meta["count"] == "3"
        assert meta["function"] == "test_records_and_link_log_are_shipped"
        assert meta["time"].isdigit()
        assert before * 1e6 - 1 <= int(meta["time"]) <= time.time() * 1e6 + 1
        assert shipped[1]["level"] == "notice"
        assert shipped[1]["meta"]["sensor"] == "door"
        assert shipped[2]["level"] == "error"
        assert messages(hub) == ["pump P1 at 97%", "from link.log", "numeric level"]
        assert extension.sent == 3 and extension.dropped == 0
        assert hub.devices[DEVICE].warnings == []


async def test_rate_limited_burst_then_five_per_second() -> None:
    clock = FakeClock()
    options = LoggingOptions(clock=clock, sleep=clock.sleep, queue_size=100)
    async with make_hub({"logging"}) as hub, running_link(hub, {"logging": options}) as link:
        await wait_ext(hub, "logging:attached")
        extension = extension_of(link)
        with app_logger("app.rate", link.extensions.log_handler()) as log:
            for i in range(30):
                log.info("line %d", i)
            # The bucket starts full: a burst of 10, then the drainer waits for tokens.
            await wait_logs(hub, 10)
            await clock.wait_sleeping()
            assert extension.sent == 10 and len(logs(hub)) == 10
            assert extension.queued == 19  # one more is held by the waiting drainer
            # One second: five more.
            clock.advance(1.0)
            await wait_logs(hub, 15)
            await clock.wait_sleeping()
            assert extension.sent == 15
            # Three idle seconds save up only a burst (10), not 15.
            clock.advance(3.0)
            await wait_logs(hub, 25)
            await clock.wait_sleeping()
            assert extension.sent == 25
            clock.advance(1.0)
            await wait_logs(hub, 30)
        assert messages(hub) == [f"line {i}" for i in range(30)]
        assert extension.dropped == 0


async def test_full_queue_drops_and_says_so() -> None:
    clock = FakeClock()
    options = LoggingOptions(
        clock=clock, sleep=clock.sleep, queue_size=5, dropped_report_interval=60
    )
    async with make_hub({"logging"}) as hub, running_link(hub, {"logging": options}) as link:
        await wait_ext(hub, "logging:attached")
        extension = extension_of(link)
        with app_logger("app.drops", link.extensions.log_handler()) as log:
            # Emitted on the loop thread: the drainer cannot run in between, so 5 fit.
            for i in range(30):
                log.info("line %d", i)
            assert extension.queued == 5 and extension.dropped == 25
            await wait_logs(hub, 6)
            assert messages(hub)[0].startswith("nhlink: dropped 25 log lines")
            assert logs(hub)[0]["level"] == "warning"
            assert messages(hub)[1:] == [f"line {i}" for i in range(5)]
            # 4 tokens left; the next report is not due for 60 s.
            for i in range(30, 60):
                log.info("line %d", i)
            await wait_logs(hub, 10)
            await clock.wait_sleeping()
            assert messages(hub)[6:] == [f"line {i}" for i in range(30, 34)]
            clock.advance(60)
            await wait_logs(hub, 12)
            assert messages(hub)[10] == "line 34"
            assert messages(hub)[11].startswith("nhlink: dropped 25 log lines")
        assert extension.dropped == 50 and extension.sent == 12


async def test_handler_never_recurses_and_skips_own_loggers() -> None:
    async with make_hub({"logging"}) as hub, running_link(hub, {"logging": True}) as link:
        await wait_ext(hub, "logging:attached")
        handler = link.extensions.log_handler()

        class LoggingFormatter(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                logging.getLogger("app.loop").error("logged by the formatter")
                return super().format(record)

        handler.setFormatter(LoggingFormatter())
        own = [logging.getLogger(n) for n in ("nhlink.anything", "asyncio", "aiohttp.client")]
        for log in own:
            log.addHandler(handler)
        try:
            with app_logger("app.loop", handler) as log:
                log.warning("outer")
                for other in own:
                    other.error("must not be shipped")
                log.warning("sentinel")
                await wait_logs(hub, 2)
        finally:
            for log in own:
                log.removeHandler(handler)
        assert messages(hub) == ["outer", "sentinel"]


async def test_emit_from_threads_never_blocks() -> None:
    options = LoggingOptions(burst=100, rate=1000)
    async with make_hub({"logging"}) as hub, running_link(hub, {"logging": options}) as link:
        await wait_ext(hub, "logging:attached")
        with app_logger("app.threads", link.extensions.log_handler()) as log:

            def worker(n: int) -> None:
                for i in range(4):
                    log.info("thread %d line %d", n, i)

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(5)]
            for thread in threads:
                thread.start()
            for thread in threads:
                await asyncio.to_thread(thread.join)
            await wait_logs(hub, 20)
        assert sorted(messages(hub)) == sorted(
            f"thread {n} line {i}" for n in range(5) for i in range(4)
        )


async def test_detach_stops_shipping_and_the_loss_is_reported() -> None:
    clock = FakeClock()
    options = LoggingOptions(clock=clock, sleep=clock.sleep, burst=1)
    async with make_hub({"logging"}) as hub, running_link(hub, {"logging": options}) as link:
        await wait_ext(hub, "logging:attached")
        extension = extension_of(link)
        link.log("info", "one")
        link.log("info", "two")  # waits for a token
        await clock.wait_sleeping()
        await wait_logs(hub, 1)
        await hub.detach_extensions(DEVICE, ["logging"])
        await wait_ext(hub, "logging:detached")
        assert not extension.accepting
        assert extension.dropped == 1  # "two" was lost with the detach
        link.log("info", "while detached")  # dropped silently, not counted
        assert extension.dropped == 1 and extension.queued == 0
        assert messages(hub) == ["one"]
        # Attached again: the loss is reported with the next line.
        await hub.attach_extensions(DEVICE, ["logging"])
        await wait_ext(hub, "logging:attached", new_only=True)
        clock.advance(1)
        link.log("info", "three")
        await wait_logs(hub, 2)
        assert messages(hub)[1].startswith("nhlink: dropped 1 log line ")


async def test_truncation_and_closed_loop() -> None:
    extension = LoggingExtension(LoggingOptions(max_message_length=20))
    assert not extension.submit("info", "not started")
    loop = asyncio.get_running_loop()
    sent: list[Any] = []

    done = asyncio.Event()

    class Context:
        attached = True

        async def send(self, event: str, payload: Any = None) -> bool:
            sent.append((event, payload))
            done.set()
            return True

    context: Any = Context()
    extension.context = context
    await extension.start(context)
    try:
        assert extension.submit("info", "x" * 50, {"n": 1}, created=1.5)
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await extension.stop()
    event, payload = sent[0]
    assert event == "send"
    assert payload == {
        "level": "info",
        "message": "xxxxxxx… [truncated]",
        "meta": {"n": "1", "time": "1500000"},
    }
    assert len(payload["message"]) == 20
    assert loop.is_running()


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=5, burst=10, clock=lambda: now[0])
    assert [bucket.try_take() for _ in range(11)] == [True] * 10 + [False]
    assert bucket.delay() == 0.2
    now[0] = 0.2
    assert bucket.try_take() and not bucket.try_take()
    now[0] = 100.0
    assert bucket.tokens == 10.0
    now[0] = 50.0  # a clock going backwards adds nothing
    assert bucket.tokens == 10.0


def test_handler_is_inert_while_not_attached() -> None:
    extension = LoggingExtension()
    handler = NHLinkLogHandler(extension)
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "hello", None, None)
    handler.emit(record)
    assert extension.queued == 0 and extension.dropped == 0
