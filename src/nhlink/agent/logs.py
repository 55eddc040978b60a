"""Log lines for a service: one line per event on stderr, journald's priority prefixes
(``<3>`` error ... ``<7>`` debug) when stderr is connected to the journal (``JOURNAL_STREAM``),
time stamps otherwise. Secrets never reach a log line: nhlink logs none (LinkConfig and the
agent's settings hide them in their ``repr``)."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

__all__ = ["JournalFormatter", "configure", "priority"]

_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    """syslog priority of a logging level."""
    for level, prio in _PRIORITIES:
        if levelno >= level:
            return prio
    return 7


class JournalFormatter(logging.Formatter):
    """``<6>nhlink.link: message`` — every line of a multi-line record (a traceback) carries
    the prefix, so journald keeps them at the record's priority."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def _journal_attached(stream: TextIO, environ: dict[str, str] | os._Environ[str]) -> bool:
    value = environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        device, inode = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return True  # set but unverifiable: trust it
    return (st.st_dev, st.st_ino) == (device, inode)


def configure(level: str | int = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Route the ``nhlink`` loggers to ``stream`` (stderr) for the command line. Called by the
    ``nhlink`` command only: the library never configures handlers."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    if _journal_attached(out, os.environ):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
