"""Firmware writers that ship with nhlink: :class:`FileWriter` and :class:`CommandWriter`."""

from .command import CommandWriter
from .file import FileWriter

__all__ = ["CommandWriter", "FileWriter"]
