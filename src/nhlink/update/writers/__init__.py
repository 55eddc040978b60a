"""Firmware writers that ship with nhlink: :class:`FileWriter` and :class:`CommandWriter` (simple,
dependency-free), :class:`RaucWriter` and :class:`SwupdateWriter` (Linux A/B updaters)."""

from .command import CommandWriter
from .file import FileWriter
from .rauc import RaucWriter
from .swupdate import SwupdateWriter

__all__ = ["CommandWriter", "FileWriter", "RaucWriter", "SwupdateWriter"]
