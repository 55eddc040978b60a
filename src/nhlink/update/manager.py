"""Placeholder update manager until the OTA pipeline lands: logs offered updates."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..link import NervesHubLink

logger = logging.getLogger(__name__)


class UpdateManager:
    def __init__(self, link: NervesHubLink) -> None:
        self.link = link

    async def on_update(self, payload: Any) -> None:
        logger.warning("%s: update received; the update pipeline is not available", self.link.name)

    async def connection_lost(self) -> None:
        pass

    async def stop(self) -> None:
        pass
