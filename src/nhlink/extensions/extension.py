"""The :class:`Extension` base class and the :class:`ExtensionContext` it talks through (§8).

An extension is one named feature on the ``extensions`` channel. The router
(:mod:`nhlink.extensions.router`) owns the protocol; an extension only sees its own events, with
the ``"<name>:"`` prefix removed, and sends its own, which the router prefixes again (§8.2,
§14.6).

Contract, per attachment (the server may attach, detach and re-attach an extension many times
during one link's life, and every reconnect is a fresh attachment):

1. ``start(context)`` — called before ``"<name>:attached"`` is sent. Raise to refuse: the router
   then sends ``"<name>:error"`` instead, and the extension stays detached.
2. ``handle_event(event, payload)`` — zero or more times, one at a time, in arrival order.
3. ``stop()`` — called once after a successful ``start`` when the server detaches the extension,
   the channel or the connection is lost, or the link stops. ``context.send`` returns False from
   the moment the extension is detached.

Every call of one extension runs in that extension's own task, so a slow or failing extension
never delays another one or the connection; exceptions are logged and do not detach it. Plain
(non-``async``) methods run on the event loop: do blocking I/O in a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from ..protocol import wire

if TYPE_CHECKING:
    from ..link import NervesHubLink
    from .router import ExtensionRouter

__all__ = ["DEFAULT_VERSION", "Extension", "ExtensionContext", "ExtensionReply"]

logger = logging.getLogger(__name__)

#: §8.1: the server accepts ``~> 0.0.1`` (>= 0.0.1, < 0.1.0) for the five extensions it knows.
DEFAULT_VERSION: Final = wire.EXT_DEFAULT_VERSION

#: What ``handle_event`` may return to answer: ``(event, payload)``, sent as ``"<name>:<event>"``.
ExtensionReply: TypeAlias = tuple[str, Any]


class ExtensionContext:
    """An extension's handle on the link, given to :meth:`Extension.start`.

    Valid for the extension's whole life (across attachments); :attr:`attached` says whether
    sending is possible right now.
    """

    def __init__(self, router: ExtensionRouter, name: str) -> None:
        self._router = router
        self._name = name

    @property
    def name(self) -> str:
        """The extension's name, i.e. its event prefix."""
        return self._name

    @property
    def link(self) -> NervesHubLink:
        """The link this extension belongs to (for its name, status, config)."""
        return self._router.link

    @property
    def attached(self) -> bool:
        """True while the server considers this extension attached on the current connection."""
        return self._router.is_attached(self._name)

    async def send(self, event: str, payload: Any = None) -> bool:
        """Push ``"<name>:<event>"`` with ``payload`` (``{}`` when None) on ``extensions``.

        Returns False, sending nothing, while the extension is not attached or the connection is
        down: extension traffic is best-effort and never raises for that. Raises
        :class:`~nhlink.errors.EncodeError` if ``payload`` has no JSON form.
        Call it from the link's event loop.
        """
        return await self._router.send_for(self._name, event, {} if payload is None else payload)

    def __repr__(self) -> str:
        return f"<ExtensionContext {self._name!r} attached={self.attached}>"


class Extension:
    """Base class for extensions: built-in (health, logging, geo) and your own.

    Subclasses set :attr:`name` (or leave it empty: the key in the link's ``extensions=``
    mapping names it) and :attr:`version`, and override what they need. The default
    ``handle_event`` ignores every event.

    ``handle_event`` may be plain or ``async``. Return ``(event, payload)`` to answer with
    ``"<name>:<event>"``, or None to send nothing. To send at other times, use
    ``await self.send(event, payload)`` (or :attr:`context`).

    One instance serves one link.
    """

    #: The extension's name: the join-payload key and the ``"<name>:"`` event prefix (§8.1).
    name: str = ""
    #: The version advertised in the ``extensions`` join (§8.1).
    version: str = DEFAULT_VERSION
    #: Set by the router before the first :meth:`start`.
    context: ExtensionContext | None = None

    async def start(self, context: ExtensionContext) -> None:
        """The server asked for this extension; prepare it. Raise to refuse (see module doc)."""

    async def stop(self) -> None:
        """The extension was detached; release what :meth:`start` acquired."""

    def handle_event(
        self, event: str, payload: Any
    ) -> ExtensionReply | Awaitable[ExtensionReply | None] | None:
        """Handle ``event`` (prefix removed). Return ``(event, payload)`` to answer, or None."""
        logger.debug("extension %r: no handler for event %r", self.name, event)
        return None

    async def send(self, event: str, payload: Any = None) -> bool:
        """``self.context.send(event, payload)``; False before the first start."""
        if self.context is None:
            return False
        return await self.context.send(event, payload)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.version}>"
