"""Extensions (PROTOCOL.md §8): the attach handshake and the built-in health, logging, geo and
network identity.

Configure them with ``NervesHubLink(extensions={...})``::

    NervesHubLink(..., extensions={
        "health": True,                      # LinuxHealthProvider, or a HealthProvider/callable
        "logging": True,                     # or LoggingOptions(...)
        "geo": my_resolver,                  # a callable returning a location
        "network_identity": NetworkIdentityExtension(),  # or any Extension, under its name
    })

``link.extensions`` is the :class:`ExtensionRouter`; see ``docs/extensions.md``.
"""

from __future__ import annotations

from .extension import DEFAULT_VERSION, Extension, ExtensionContext, ExtensionReply
from .geo import GeoError, GeoExtension, GeoResolver
from .health import HealthExtension, HealthProvider, build_report, sanitize_metrics
from .linux import LinuxHealthProvider
from .logs import LoggingExtension, LoggingOptions, NHLinkLogHandler, TokenBucket
from .network_identity import (
    CallableProvider,
    CommandProvider,
    IdentityProvider,
    IdentityProviderError,
    IdentityUnavailable,
    NetBirdProvider,
    NetworkIdentityExtension,
    NetworkIdentityOptions,
    TailscaleProvider,
    WireGuardProvider,
    nodekey_to_base64,
)
from .router import ExtensionRouter

__all__ = [
    "DEFAULT_VERSION",
    "CallableProvider",
    "CommandProvider",
    "Extension",
    "ExtensionContext",
    "ExtensionReply",
    "ExtensionRouter",
    "GeoError",
    "GeoExtension",
    "GeoResolver",
    "HealthExtension",
    "HealthProvider",
    "IdentityProvider",
    "IdentityProviderError",
    "IdentityUnavailable",
    "LinuxHealthProvider",
    "LoggingExtension",
    "LoggingOptions",
    "NHLinkLogHandler",
    "NetBirdProvider",
    "NetworkIdentityExtension",
    "NetworkIdentityOptions",
    "TailscaleProvider",
    "TokenBucket",
    "WireGuardProvider",
    "build_report",
    "nodekey_to_base64",
    "sanitize_metrics",
]
