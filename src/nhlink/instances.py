"""Named instances: several device identities in one process, reachable by name.

The only module-level state in nhlink. Two running instances may not share a name, nor a device
identity: the server would knock them off each other forever (close 1001, PROTOCOL.md §3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .link import NervesHubLink

__all__ = ["confirm_update", "get", "names", "reconnect", "register", "start_link", "unregister"]

_by_name: dict[str, NervesHubLink] = {}
# (host, identity) -> the running instance with it, and each name's key: a clash is found with
# one lookup (a fleet of 10,000 links registered in O(n), not O(n²)), and a certificate's CN is
# read once per start, not once per other running link.
_by_identity: dict[tuple[str, str], NervesHubLink] = {}
_identity_of: dict[str, tuple[str, str]] = {}


def register(link: NervesHubLink) -> None:
    """Called by ``NervesHubLink.start``. Raises ConfigError on a name or identity clash."""
    current = _by_name.get(link.name)
    if current is link:
        return
    if current is not None:
        raise ConfigError("name", f"an instance named {link.name!r} is already running")
    key = (link.config.host, link.config.identity)
    other = _by_identity.get(key)
    if other is not None:
        raise ConfigError(
            "identifier",
            f"{link.name!r} and {other.name!r} use the same device identity {key[1]!r}; "
            "the server would disconnect them from each other in a loop",
        )
    _by_name[link.name] = link
    _by_identity[key] = link
    _identity_of[link.name] = key


def unregister(link: NervesHubLink) -> None:
    if _by_name.get(link.name) is link:
        del _by_name[link.name]
        key = _identity_of.pop(link.name, None)
        if key is not None and _by_identity.get(key) is link:
            del _by_identity[key]


def get(name: str = "NervesHubLink") -> NervesHubLink:
    """The running instance called ``name``; KeyError if there is none."""
    try:
        return _by_name[name]
    except KeyError:
        raise KeyError(f"no running nhlink instance named {name!r}") from None


def names() -> list[str]:
    return sorted(_by_name)


async def start_link(**options: Any) -> NervesHubLink:
    """Create and start an instance (AVM's ``start_link``); returns it."""
    from .link import NervesHubLink

    link = NervesHubLink(**options)
    await link.start()
    return link


def reconnect(name: str = "NervesHubLink") -> None:
    get(name).reconnect()


async def confirm_update(name: str = "NervesHubLink") -> None:
    await get(name).confirm_update()
