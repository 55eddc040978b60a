"""The ``health`` extension (PROTOCOL.md §8.3): answer ``health:check`` with ``health:report``.

A :class:`HealthProvider` supplies the report's sections. Its plain methods run together in one
worker thread (``/proc`` reads, ``statvfs`` and sensor I/O must not stall the event loop);
``async def`` methods are awaited on the loop. Whatever happens, the server gets a report with
all six keys (§8.3): a method that raises or times out is logged and noted in ``alarms`` and
``checks``, and metric values that are not numbers are coerced or dropped with a warning.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import numbers
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from ..protocol import wire
from .extension import DEFAULT_VERSION, Extension, ExtensionReply

__all__ = [
    "ALARM_CHECK_FAILED",
    "CHECK_PROVIDER",
    "HealthExtension",
    "HealthProvider",
    "MetricsCallable",
    "build_report",
    "sanitize_metrics",
]

logger = logging.getLogger(__name__)

# §8.3 — wire strings (events are relative to the "health:" prefix).
NAME: Final = wire.HEALTH_NAME
EVENT_CHECK: Final = wire.HEALTH_EVENT_CHECK
EVENT_REPORT: Final = wire.HEALTH_EVENT_REPORT
REPORT_VALUE: Final = wire.HEALTH_REPORT_VALUE
KEY_TIMESTAMP: Final = wire.HEALTH_KEY_TIMESTAMP
KEY_METRICS: Final = wire.HEALTH_KEY_METRICS
KEY_METADATA: Final = wire.HEALTH_KEY_METADATA
KEY_ALARMS: Final = wire.HEALTH_KEY_ALARMS
KEY_CHECKS: Final = wire.HEALTH_KEY_CHECKS
KEY_CONNECTIVITY: Final = wire.HEALTH_KEY_CONNECTIVITY
CHECK_PASS: Final = wire.HEALTH_CHECK_PASS
CHECK_NOTE: Final = wire.HEALTH_CHECK_NOTE
#: The report sections a provider may supply, in report order (all but ``timestamp``).
SECTIONS: Final = (KEY_METRICS, KEY_METADATA, KEY_ALARMS, KEY_CHECKS, KEY_CONNECTIVITY)

#: Alarm id and check name under which a failing provider is reported (NHL uses an alarm too).
ALARM_CHECK_FAILED: Final = wire.HEALTH_ALARM_CHECK_FAILED
CHECK_PROVIDER: Final = wire.HEALTH_CHECK_PROVIDER

Section: TypeAlias = Mapping[str, Any]
MetricsCallable: TypeAlias = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


class HealthProvider:
    """Supplies health reports. Override :meth:`metrics`, and any of the other sections.

    Each method may be plain (run in a worker thread, all plain ones of one check in the same
    thread, in the order below) or ``async def`` (awaited on the event loop). Each returns a
    mapping; return ``{}`` for nothing.
    """

    def metrics(self) -> Mapping[str, float] | Awaitable[Mapping[str, float]]:
        """``{name: number}``; each is stored by the server as a float time series (§8.3)."""
        return {}

    def metadata(self) -> Mapping[str, str] | Awaitable[Mapping[str, str]]:
        """Free-form ``{str: str}``."""
        return {}

    def alarms(self) -> Mapping[str, str] | Awaitable[Mapping[str, str]]:
        """Active alarms: ``{alarm_id: description}``."""
        return {}

    def checks(
        self,
    ) -> Mapping[str, Mapping[str, Any]] | Awaitable[Mapping[str, Mapping[str, Any]]]:
        """``{name: {"pass": bool, "note": str}}``."""
        return {}

    def connectivity(
        self,
    ) -> Mapping[str, Mapping[str, Any]] | Awaitable[Mapping[str, Mapping[str, Any]]]:
        """``{iface: {"type", "present", "state", "connection_status", "metrics", "metadata"}}``."""
        return {}


#: The Elixir client's HealthProvider callback (PROTOCOL.md §14.5): accepted as ``metrics``.
SEED_METRICS = "health_check"


def is_provider(value: object) -> bool:
    """Whether ``value`` can serve as a provider object: it has a callable ``metrics``, or the
    seed's ``health_check()``."""
    return (
        isinstance(value, HealthProvider)
        or callable(getattr(value, KEY_METRICS, None))
        or callable(getattr(value, SEED_METRICS, None))
    )


def _metrics_method(provider: object) -> Any:
    """``metrics``, or the seed's ``health_check`` when that is what the provider defines."""
    seed = getattr(provider, SEED_METRICS, None)
    if callable(seed) and getattr(type(provider), KEY_METRICS, None) in (
        None,
        HealthProvider.metrics,
    ):
        return seed
    return getattr(provider, KEY_METRICS, None)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def sanitize_metrics(metrics: Mapping[Any, Any]) -> dict[str, int | float]:
    """Metrics with string keys and finite number values only (§8.3: values must be numbers).

    ``bool`` becomes 0/1, other real numbers (``Decimal``, ``Fraction``, numpy scalars) and
    numeric strings become ``float``; NaN, infinities and anything else are dropped. Every
    coercion and drop is logged as a warning.
    """
    clean: dict[str, int | float] = {}
    for key, value in metrics.items():
        name = key if isinstance(key, str) else str(key)
        if _is_number(value):
            clean[name] = value
            continue
        coerced: float | None = None
        if isinstance(value, bool):
            coerced = float(value)
        elif isinstance(value, numbers.Real | str):
            try:
                coerced = float(value)
            except (TypeError, ValueError):
                coerced = None
        else:
            as_float = getattr(value, "__float__", None)
            if as_float is not None:
                try:
                    coerced = float(as_float())
                except (TypeError, ValueError, OverflowError):
                    coerced = None
        if coerced is not None and math.isfinite(coerced):
            logger.warning("health metric %r: %r is not a number; sent as %r", name, value, coerced)
            clean[name] = coerced
        else:
            logger.warning("health metric %r: %r is not a finite number; dropped", name, value)
    return clean


def _text_map(section: str, data: Mapping[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str):
            logger.debug("health %s %r: %r sent as text", section, key, value)
            value = str(value)
        out[key if isinstance(key, str) else str(key)] = value
    return out


def _object_map(data: Mapping[Any, Any]) -> dict[str, Any]:
    return {key if isinstance(key, str) else str(key): value for key, value in data.items()}


def utc_timestamp(unix: float) -> str:
    """ISO-8601 UTC with microseconds and ``Z`` (NHL's form, §8.3)."""
    moment = datetime.fromtimestamp(unix, UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_report(
    sections: Mapping[str, Mapping[Any, Any]],
    errors: Mapping[str, str] | None = None,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """The §8.3 report object, all six keys present, from raw provider ``sections``.

    ``errors`` maps a section name to what went wrong collecting it; they are added as the
    alarm :data:`ALARM_CHECK_FAILED` and the failed check :data:`CHECK_PROVIDER`.
    """
    report: dict[str, Any] = {
        KEY_TIMESTAMP: utc_timestamp(time.time() if now is None else now),
        KEY_METRICS: sanitize_metrics(sections.get(KEY_METRICS, {})),
        KEY_METADATA: _text_map(KEY_METADATA, sections.get(KEY_METADATA, {})),
        KEY_ALARMS: _text_map(KEY_ALARMS, sections.get(KEY_ALARMS, {})),
        KEY_CHECKS: _object_map(sections.get(KEY_CHECKS, {})),
        KEY_CONNECTIVITY: _object_map(sections.get(KEY_CONNECTIVITY, {})),
    }
    if errors:
        note = "; ".join(f"{section}: {error}" for section, error in errors.items())
        report[KEY_ALARMS][ALARM_CHECK_FAILED] = note
        report[KEY_CHECKS][CHECK_PROVIDER] = {CHECK_PASS: False, CHECK_NOTE: note}
    return report


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class HealthExtension(Extension):
    """``health``: answers every ``health:check`` with a ``health:report`` from ``provider``.

    ``provider`` is a :class:`HealthProvider` (or any object with a ``metrics`` method and
    optionally the other section methods), or a callable returning the metrics mapping.
    ``timeout`` bounds one check's plain methods (the thread is left to finish on its own) and
    each ``async`` one; ``clock`` gives the report timestamp (Unix seconds).
    """

    name = NAME
    version = DEFAULT_VERSION

    def __init__(
        self,
        provider: HealthProvider | MetricsCallable | Any,
        *,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if is_provider(provider):
            self._methods: list[tuple[str, Callable[[], Any]]] = [
                (section, method)
                for section in SECTIONS
                if callable(
                    method := _metrics_method(provider)
                    if section == KEY_METRICS
                    else getattr(provider, section, None)
                )
            ]
        elif callable(provider):
            self._methods = [(KEY_METRICS, provider)]
        else:
            raise TypeError(f"not a health provider: {provider!r}")
        self.provider = provider
        self.timeout = timeout
        self._clock = clock

    async def collect(self) -> dict[str, Any]:
        """Run the provider once and build the report (never raises, except cancellation)."""
        sections: dict[str, Mapping[Any, Any]] = {}
        errors: dict[str, str] = {}
        outcomes: dict[str, tuple[Any, BaseException | None]] = {}
        plain = [(s, m) for s, m in self._methods if not inspect.iscoroutinefunction(m)]
        if plain:
            try:
                done = await asyncio.wait_for(asyncio.to_thread(_call_all, plain), self.timeout)
            except TimeoutError:
                for section, _ in plain:
                    errors[section] = f"timed out after {self.timeout:g} s"
            else:
                outcomes = {section: (value, error) for section, value, error in done}
        for section, method in self._methods:
            if inspect.iscoroutinefunction(method):
                value, error = method(), None
            elif section in outcomes:
                value, error = outcomes[section]
            else:
                continue  # timed out above
            if error is None and inspect.isawaitable(value):
                try:
                    value = await asyncio.wait_for(value, self.timeout)
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    errors[section] = f"timed out after {self.timeout:g} s"
                    continue
                except Exception as exc:
                    error = exc
            if error is not None:
                logger.error("health provider %s() failed", section, exc_info=error)
                errors[section] = _describe(error)
            elif isinstance(value, Mapping):
                sections[section] = value
            elif value is not None:
                logger.error("health provider %s() returned %r, not a mapping", section, value)
                errors[section] = f"returned {type(value).__name__}, not a mapping"
        for section, message in errors.items():
            if message.startswith("timed out"):
                logger.error("health provider %s() %s", section, message)
        self._mark_hub_interface(sections)
        return build_report(sections, errors, now=self._clock())

    def _mark_hub_interface(self, sections: dict[str, Mapping[Any, Any]]) -> None:
        """The interface the link reported for its hub connection (§6.9) reaches the hub:
        ``connection_status`` ``internet``, as nerves_hub_link reports a connected interface."""
        context = self.context
        connectivity = sections.get(KEY_CONNECTIVITY)
        if context is None or not isinstance(connectivity, Mapping):
            return
        name = context.link.remote.reported_interface
        entry = connectivity.get(name) if name is not None else None
        if isinstance(entry, Mapping):
            sections[KEY_CONNECTIVITY] = {
                **connectivity,
                name: {**entry, "connection_status": "internet"},
            }

    async def handle_event(self, event: str, payload: Any) -> ExtensionReply | None:
        if event == EVENT_CHECK:
            return EVENT_REPORT, {REPORT_VALUE: await self.collect()}
        logger.debug("health: ignoring event %r", event)
        return None

    async def send_report(self) -> bool:
        """Collect and send a report now, unasked; False if health is not attached."""
        if self.context is None or not self.context.attached:
            return False
        return await self.send(EVENT_REPORT, {REPORT_VALUE: await self.collect()})


def _call_all(
    methods: list[tuple[str, Callable[[], Any]]],
) -> list[tuple[str, Any, BaseException | None]]:
    """Run the provider's plain methods in the worker thread, each failure kept separately."""
    out: list[tuple[str, Any, BaseException | None]] = []
    for section, method in methods:
        try:
            out.append((section, method(), None))
        except Exception as exc:
            out.append((section, None, exc))
    return out
