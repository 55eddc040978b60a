"""Firmware updates: the writer interface, persisted state, download and the update manager."""

from .state import DeviceState, StateStore
from .writer import FwupWriter

__all__ = ["DeviceState", "FwupWriter", "StateStore"]
