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


def register(link: NervesHubLink) -> None:
    """Called by ``NervesHubLink.start``. Raises ConfigError on a name or identity clash."""
    current = _by_name.get(link.name)
    if current is link:
        return
    if current is not None:
        raise ConfigError("name", f"an instance named {link.name!r} is already running")
    identity = link.config.identity
    for other in _by_name.values():
        if other.config.identity == identity and other.config.host == link.config.host:
            raise ConfigError(
                "identifier",
                f"{link.name!r} and {other.name!r} use the same device identity {identity!r}; "
                "the server would disconnect them from each other in a loop",
            )
    _by_name[link.name] = link


def unregister(link: NervesHubLink) -> None:
    if _by_name.get(link.name) is link:
        del _by_name[link.name]


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
