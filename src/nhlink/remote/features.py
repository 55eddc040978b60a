"""``link.remote``: the device-channel features beyond OTA (PROTOCOL.md §6.6, §6.9, §9) of one
link — support scripts, the network interface report and the console channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..errors import ConfigError, NHLinkError
from ..protocol import wire
from .keys import KeyRing, SigningKeys
from .scripts import ScriptOptions, ScriptRunner

if TYPE_CHECKING:
    from ..link import NervesHubLink
    from .archives import ArchiveOptions, Archives
    from .console import Console, ConsoleOptions

__all__ = ["RemoteFeatures"]

logger = logging.getLogger(__name__)

EVENT_REPORT_INTERFACE: Final = "report_network_interface"
INTERFACE_RETRY: Final = 60.0  # NHL retries every 60 s while the interface is unknown
_NO_SCRIPTS: Final = ScriptOptions()  # one for every link (10,000 in a fleet)
_NO_KEYS: Final = SigningKeys()


class RemoteFeatures:
    """Owns scripts, the interface report and the console for one link (``link.remote``).

    ``network_interface``: True (default) reports the interface the hub's connection uses
    after every join; a string reports that name; a callable returns the name (or None:
    unknown, asked again in 60 s); False reports nothing (a device that never reports is
    never offered a release limited to interface types, §6.9).
    """

    __slots__ = (
        "_retry",
        "archives",
        "console",
        "keys",
        "link",
        "network_interface",
        "reported_interface",
        "scripts",
    )

    def __init__(
        self,
        link: NervesHubLink,
        *,
        scripts: ScriptOptions | None,
        console: ConsoleOptions | bool | None,
        network_interface: bool | str | Callable[[], str | None],
        signing_keys: SigningKeys | None = None,
        archives: ArchiveOptions | None = None,
    ) -> None:
        self.link = link
        if signing_keys is not None and not isinstance(signing_keys, SigningKeys):
            raise ConfigError("signing_keys", f"expected SigningKeys, not {signing_keys!r}")
        #: firmware and archive signing keys (§6.8)
        self.keys = KeyRing(signing_keys or _NO_KEYS, link.store)
        writer = link.writer
        if writer is not None and writer.wants_public_keys:
            self.keys.wants_fwup = True
            writer.set_public_keys(self.keys.keys("fwup"))
        #: archive offers (§6.7), None unless configured
        self.archives: Archives | None = None
        if archives is not None:
            from .archives import ArchiveOptions, Archives

            if not isinstance(archives, ArchiveOptions):
                raise ConfigError("archives", f"expected ArchiveOptions, not {archives!r}")
            self.archives = Archives(link, archives)
            self.keys.wants_archive = archives.verify is not None
        if scripts is not None and not isinstance(scripts, ScriptOptions):
            raise ConfigError("scripts", f"expected ScriptOptions, not {scripts!r}")
        handler = getattr(link.client, "run_script", None)
        self.scripts = ScriptRunner(
            scripts or _NO_SCRIPTS, handler if callable(handler) else None, self._reply
        )
        #: the console channel, None unless configured
        self.console: Console | None = None
        if console is not None and console is not False:
            from .console import Console, ConsoleOptions  # only on a device that has one

            if console is True:
                console = ConsoleOptions()
            if not isinstance(console, ConsoleOptions):
                raise ConfigError("console", f"expected True or ConsoleOptions, not {console!r}")
            self.console = Console(link, console)
        if isinstance(network_interface, str) and not network_interface.strip():
            raise ConfigError("network_interface", "must not be empty")
        if not isinstance(network_interface, bool | str) and not callable(network_interface):
            raise ConfigError("network_interface", "True, False, a name or a callable")
        self.network_interface = network_interface
        #: the interface reported on this connection (None: not yet)
        self.reported_interface: str | None = None
        self._retry: asyncio.TimerHandle | None = None

    # -- scripts/run ----------------------------------------------------------------------------

    def on_scripts_run(self, payload: Any) -> None:
        self.scripts.request(payload)

    async def _reply(self, payload: dict[str, Any]) -> None:
        with contextlib.suppress(NHLinkError):
            await self.link.send(wire.TOPIC_DEVICE, wire.EVENT_SCRIPTS_RUN, payload)

    # -- signing keys (§6.8) ----------------------------------------------------------------------

    async def keys_pushed(self, kind: str, payload: Any) -> None:
        if not self.keys.pushed(kind, payload):
            return
        writer = self.link.writer
        if kind == "fwup" and writer is not None and writer.wants_public_keys:
            writer.set_public_keys(self.keys.keys("fwup"))
        await self.link.store.asave()

    # -- archives (§6.7) -----------------------------------------------------------------------

    def on_archive(self, payload: Any) -> None:
        if self.archives is not None:
            self.archives.offered(payload)
        else:
            logger.debug("%s: archive offered; archives are not configured", self.link.name)

    # -- joins and losses -----------------------------------------------------------------------

    async def device_joined(self) -> None:
        if self.console is not None:
            await self.console.join()
        await self.report_interface()

    async def connection_lost(self) -> None:
        self.reported_interface = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.console is not None:
            await self.console.connection_lost()

    async def stop(self) -> None:
        await self.connection_lost()
        await self.scripts.cancel()
        if self.archives is not None:
            await self.archives.stop()
        if self.console is not None:
            await self.console.stop()

    # -- report_network_interface ---------------------------------------------------------------

    def interface_name(self) -> str | None:
        setting = self.network_interface
        if setting is False:
            return None
        if isinstance(setting, str):
            return setting
        if callable(setting):
            try:
                name = setting()
            except Exception:
                logger.exception("%s: network_interface callable failed", self.link.name)
                return None
            return name if isinstance(name, str) and name else None
        from .netif import interface_for_address

        address = self.link.local_address
        return interface_for_address(address[0]) if address is not None else None

    async def report_interface(self) -> None:
        self._retry = None
        if self.network_interface is False or self.reported_interface is not None:
            return
        name = self.interface_name()
        if name is None:
            logger.info("%s: network interface unknown; asking again in 60 s", self.link.name)
            self._retry = asyncio.get_running_loop().call_later(
                INTERFACE_RETRY, lambda: asyncio.ensure_future(self.report_interface())
            )
            return
        try:
            await self.link.send(wire.TOPIC_DEVICE, EVENT_REPORT_INTERFACE, {"interface": name})
        except NHLinkError:
            return
        self.reported_interface = name
