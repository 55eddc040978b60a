"""Calling application callbacks: plain or ``async def``, never allowed to break nhlink."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["call_callback"]

logger = logging.getLogger("nhlink.link")  # where callback failures have always been logged


async def call_callback(name: str, fn: Callable[..., Any] | None, *args: Any) -> Any:
    """Call a user callback, plain or async; log and swallow its exceptions."""
    if fn is None:
        return None
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        return result
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("callback %s raised; ignored", name)
        return None
