"""Application callbacks: subclass :class:`Client` and override what you need.

Every callback may be a plain method or ``async def``. A callback that raises is logged and never
breaks the connection. Names follow NervesHubLinkAVM's Client behaviour (PROTOCOL.md §14.3).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .protocol.lifecycle import Apply, Decision, Ignore, Reschedule

__all__ = ["Apply", "Client", "Decision", "DefaultClient", "Ignore", "Reschedule"]

logger = logging.getLogger("nhlink.client")


class Client:
    """Default callbacks: apply every update, do nothing else. Override any of them."""

    __slots__ = ()  # subclasses without __slots__ still get a __dict__

    def update_available(self, firmware_meta: Mapping[str, Any]) -> Decision | Any:
        """An update is offered; return :class:`Apply`, :class:`Ignore` or :class:`Reschedule`."""
        return Apply()

    def fwup_progress(self, percent: int) -> Any:
        """Firmware progress rose to ``percent`` (0–100)."""

    def fwup_error(self, error: BaseException) -> Any:
        """A firmware update failed with ``error`` (already reported to the server)."""

    def update_completed(self, firmware_meta: Mapping[str, Any]) -> Any:
        """The update was verified, installed and reported ``completed`` (nhlink's addition:
        the Elixir client has no such callback; its writer reboots in ``fwup_finish``). A good
        place to reboot into the new image."""

    def reboot(self) -> Any:
        """The server asked for a reboot (``rebooting`` was already sent). Reboot here."""

    def identify(self) -> Any:
        """The server asked the device to make itself identifiable (blink an LED...)."""

    def handle_connected(self) -> Any:
        """The WebSocket opened (before the device channel join)."""

    def handle_disconnected(self) -> Any:
        """The WebSocket closed, or :meth:`~nhlink.NervesHubLink.reconnect` was called."""

    def firmware_validated(self) -> bool | None:
        """Whether the running firmware is validated, if the application knows; None: ask the
        writer and the persisted state instead."""
        return None


class DefaultClient(Client):
    """Applies updates and logs every event."""

    __slots__ = ()

    def update_available(self, firmware_meta: Mapping[str, Any]) -> Decision:
        logger.info(
            "update available: %s %s (uuid %s); applying",
            firmware_meta.get("product"),
            firmware_meta.get("version"),
            firmware_meta.get("uuid"),
        )
        return Apply()

    def fwup_progress(self, percent: int) -> None:
        logger.info("firmware update progress: %d%%", percent)

    def fwup_error(self, error: BaseException) -> None:
        logger.error("firmware update failed: %s", error)

    def reboot(self) -> None:
        logger.warning("server requested a reboot; DefaultClient does not reboot the machine")

    def identify(self) -> None:
        logger.info("server asked this device to identify itself")

    def handle_connected(self) -> None:
        logger.info("connected to NervesHub")

    def handle_disconnected(self) -> None:
        logger.info("disconnected from NervesHub")
