"""Extensions (PROTOCOL.md §8): the attach handshake and the built-in health, logging and geo.

Configure them with ``NervesHubLink(extensions={...})``::

    NervesHubLink(..., extensions={
        "health": True,                      # LinuxHealthProvider, or a HealthProvider/callable
        "logging": True,                     # or LoggingOptions(...)
        "geo": my_resolver,                  # a callable returning a location
        "network_identity": MyExtension(),   # any Extension instance, under its name
    })

``link.extensions`` is the :class:`ExtensionRouter`; see ``docs/extensions.md``.
"""

from __future__ import annotations

from .extension import DEFAULT_VERSION, Extension, ExtensionContext, ExtensionReply
from .geo import GeoError, GeoExtension, GeoResolver
from .health import HealthExtension, HealthProvider, build_report, sanitize_metrics
from .linux import LinuxHealthProvider
from .logs import LoggingExtension, LoggingOptions, NHLinkLogHandler, TokenBucket
from .router import ExtensionRouter

__all__ = [
    "DEFAULT_VERSION",
    "Extension",
    "ExtensionContext",
    "ExtensionReply",
    "ExtensionRouter",
    "GeoError",
    "GeoExtension",
    "GeoResolver",
    "HealthExtension",
    "HealthProvider",
    "LinuxHealthProvider",
    "LoggingExtension",
    "LoggingOptions",
    "NHLinkLogHandler",
    "TokenBucket",
    "build_report",
    "sanitize_metrics",
]
