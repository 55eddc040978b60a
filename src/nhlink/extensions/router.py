"""Placeholder router until the extensions channel lands: joins nothing, drops logs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..link import NervesHubLink

logger = logging.getLogger(__name__)


class ExtensionRouter:
    def __init__(self, link: NervesHubLink, config: Mapping[str, Any]) -> None:
        self.link = link
        self.config = dict(config)

    async def on_extensions_get(self, payload: Any) -> None:
        logger.debug("%s: extensions:get received; extensions not available", self.link.name)

    async def connection_lost(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def log(self, level: str | int, message: str, **meta: str) -> None:
        pass
