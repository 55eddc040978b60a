"""Firmware and archive signing keys (PROTOCOL.md §6.8).

Keys provisioned on the device (``SigningKeys(fwup=[...], archive=[...])``) are preferred. The
server can also push its organisation's keys after a join that asks for them with
``"fwup_public_keys": "on_connect"`` / ``"archive_public_keys": "on_connect"`` — trust on
connect: the server that supplies the firmware also supplies the keys. nhlink asks when it
holds no keys of that kind and a writer (or the archive feature) can use them, or when told to
(``request_fwup=True``). A pushed non-empty list replaces the held one and is saved in the
link's state (``state_dir``); an empty or missing list never clears held keys (as NHL does).

The list is not filtered by the server (Ed25519 keys as base64 of 32 bytes, and RSA keys as
PEM text, side by side): each consumer keeps what it can use — fwup takes the Ed25519 ones
(:func:`ed25519_keys`).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..update.state import StateStore

__all__ = ["KeyRing", "SigningKeys", "ed25519_keys"]

logger = logging.getLogger(__name__)

ON_CONNECT: Final = "on_connect"
KINDS: Final = ("fwup", "archive")
_MAX_KEYS: Final = 64
_MAX_KEY_LENGTH: Final = 16384


def _is_key(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_KEY_LENGTH and "\x00" not in value


def ed25519_keys(keys: Sequence[str]) -> list[str]:
    """The keys that are Ed25519 public keys in fwup's form: base64 of 32 bytes."""
    usable = []
    for key in keys:
        try:
            raw = base64.b64decode(key.strip(), validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            usable.append(key.strip())
    return usable


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """Keys provisioned on the device, and whether to ask the server for them.

    ``request_fwup``/``request_archive``: None (default) asks only when no key of that kind is
    held and something can use it; True always asks; False never does.
    """

    fwup: Sequence[str] = ()
    archive: Sequence[str] = ()
    request_fwup: bool | None = None
    request_archive: bool | None = None

    def __post_init__(self) -> None:
        for kind in KINDS:
            keys = getattr(self, kind)
            if isinstance(keys, str) or not all(_is_key(k) for k in keys):
                raise ConfigError(f"signing_keys.{kind}", "give a list of key strings")
        for flag in (self.request_fwup, self.request_archive):
            if flag is not None and not isinstance(flag, bool):
                raise ConfigError("signing_keys", "request_* must be True, False or None")


class KeyRing:
    """The keys one link holds (``link.remote.keys``): provisioned first, else pushed."""

    __slots__ = ("_held", "_store", "options", "wants_archive", "wants_fwup")

    def __init__(self, options: SigningKeys, store: StateStore) -> None:
        self.options = options
        self._store = store
        #: whether something on this device can use each kind (the writer; archives)
        self.wants_fwup = False
        self.wants_archive = False
        self._held: dict[str, list[str]] | None = None  # pushed keys (None: none held)
        for kind in KINDS:
            saved = store.state.extra.get(f"{kind}_public_keys")
            if isinstance(saved, list) and saved and all(_is_key(k) for k in saved):
                if self._held is None:
                    self._held = {}
                self._held[kind] = list(saved)

    def keys(self, kind: str) -> list[str]:
        """The keys of ``kind`` ("fwup" or "archive"): the provisioned ones if any, else the
        last non-empty list the server pushed (kept across restarts)."""
        provisioned = list(getattr(self.options, kind))
        return provisioned or list((self._held or {}).get(kind, ()))

    def join_params(self) -> dict[str, str]:
        """``"<kind>_public_keys": "on_connect"`` for each kind to ask for (§6.8)."""
        params = {}
        for kind in KINDS:
            request = getattr(self.options, f"request_{kind}")
            if request is None:
                wants = self.wants_fwup if kind == "fwup" else self.wants_archive
                request = wants and not self.keys(kind)
            if request:
                params[f"{kind}_public_keys"] = ON_CONNECT
        return params

    def pushed(self, kind: str, payload: Any) -> bool:
        """A ``<kind>_public_keys`` push; True when the held keys changed (the caller saves
        the link's state)."""
        keys = payload.get("keys") if isinstance(payload, dict) else None
        if not isinstance(keys, list) or not keys:
            logger.info("%s_public_keys without keys: the held keys stay", kind)
            return False
        usable = [k for k in keys[:_MAX_KEYS] if _is_key(k)]
        if not usable:
            logger.warning("%s_public_keys: no usable key in the push", kind)
            return False
        if self._held is None:
            self._held = {}
        if usable == self._held.get(kind):
            return False
        self._held[kind] = usable
        self._store.state.extra[f"{kind}_public_keys"] = usable
        logger.info("%s: %d signing key(s) from the server (trust on connect)", kind, len(usable))
        return True
