"""Support scripts and the connecting code (PROTOCOL.md §6.6): ``scripts/run``.

The server sends ``{"text", "ref"}``; the device answers ``{"ref", "result", "output",
"return"[, "reason"]}`` and the person who ran the script sees ``output + "\\n" + return``.
Nothing runs unless configured:

* by default every request is answered at once, ``result: "error"``, with the reason in
  ``output`` (the only thing the UI shows), so nobody waits 30 s for "did not respond";
* ``ScriptOptions(commands={"uptime": ["uptime"], ...})``: an allow-list — a script whose
  text (trimmed) is a listed name runs that argv (no shell), output (stdout and stderr,
  bounded) in ``output``, the exit status in ``return``;
* ``ScriptOptions(handler=fn)`` or a ``run_script(text)`` method on the link's client: any
  text goes to it (plain or ``async``); it returns a str (the output), a
  :class:`ScriptResult`, or raises (``output`` carries the error, ``return`` is ``"nil"``).

Every script runs in its own task with a deadline (``timeout``, 10 s: the server forgets a
``ref`` after 15 s) and at most ``max_running`` at once; the connecting code (ref
``"connecting_code"``, after every join) goes the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["CONNECTING_CODE", "ScriptOptions", "ScriptResult", "run_script"]

logger = logging.getLogger(__name__)

#: the ``ref`` of the connecting code (§6.6)
CONNECTING_CODE = "connecting_code"
_TRUNCATED = "\n[output truncated by nhlink]"


@dataclass(frozen=True, slots=True)
class ScriptResult:
    """What a script handler returns: ``output`` and ``value`` (shown after a newline as
    ``return``); ``ok=False`` answers ``result: "error"`` with ``reason``."""

    output: str = ""
    value: str = ""
    ok: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ScriptOptions:
    """How ``scripts/run`` is served (see the module doc). ``timeout`` < 15 s."""

    handler: Callable[[str], Any] | None = None
    commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    timeout: float = 10.0
    max_output: int = 64 * 1024
    max_running: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.timeout < 15:
            raise ConfigError("scripts.timeout", "must be within (0, 15) s: the server waits 15")
        if self.max_output < 256:
            raise ConfigError("scripts.max_output", "must be at least 256 characters")
        if self.max_running < 1:
            raise ConfigError("scripts.max_running", "must be at least 1")
        if self.handler is not None and not callable(self.handler):
            raise ConfigError("scripts.handler", "must be callable")
        for name, argv in self.commands.items():
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise ConfigError("scripts.commands", f"bad script name {name!r}")
            if (
                isinstance(argv, str)
                or not argv
                or not all(isinstance(a, str) and "\x00" not in a for a in argv)
            ):
                raise ConfigError(
                    "scripts.commands", f"{name!r}: give a non-empty list of arguments"
                )

    @property
    def enabled(self) -> bool:
        return self.handler is not None or bool(self.commands)


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def _answer(ref: Any, result: ScriptResult, limit: int) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "ref": ref,
        "result": "completed" if result.ok else "error",
        "output": _bounded(result.output, limit),
        "return": _bounded(result.value, limit),
    }
    if not result.ok:
        payload["reason"] = result.reason or "error"
    return payload


async def _run_command(argv: Sequence[str], options: ScriptOptions) -> ScriptResult:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await proc.stdout.read(65536):
            if size < options.max_output * 4:  # keep reading (the command must not block)
                chunks.append(chunk)
                size += len(chunk)
        status = await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    output = b"".join(chunks).decode("utf-8", "replace")
    return ScriptResult(output=output, value=str(status if status >= 0 else 128 - status))


async def _call_handler(handler: Callable[[str], Any], text: str) -> ScriptResult:
    try:
        value = handler(text)
        if inspect.isawaitable(value):
            value = await value
    except Exception as exc:
        return ScriptResult(output=f"{type(exc).__name__}: {exc}", value="nil")
    if isinstance(value, ScriptResult):
        return value
    return ScriptResult(output="" if value is None else str(value))


async def run_script(
    text: Any, options: ScriptOptions, handler: Callable[[str], Any] | None = None
) -> ScriptResult:
    """What answers script ``text`` under ``options`` (``handler`` overrides its handler)."""
    handler = handler or options.handler
    if not isinstance(text, str):
        return ScriptResult(output="script text is not a string", ok=False, reason="invalid")
    argv = options.commands.get(text.strip())
    if argv is None and handler is None:
        if not options.commands:
            return ScriptResult(
                output="scripts are not supported on this device "
                "(nhlink: no script handler or command list configured)",
                ok=False,
                reason="unsupported",
            )
        allowed = ", ".join(sorted(options.commands))
        return ScriptResult(
            output=f"{text.strip()[:100]!r} is not one of this device's scripts ({allowed})",
            ok=False,
            reason="not allowed",
        )
    try:
        async with asyncio.timeout(options.timeout):
            if argv is not None:
                return await _run_command(argv, options)
            assert handler is not None
            return await _call_handler(handler, text)
    except TimeoutError:
        return ScriptResult(
            output="Error running script: timeout exceeded", ok=False, reason="timeout"
        )
    except OSError as exc:
        return ScriptResult(
            output=f"Error running script: {exc.strerror or exc}", ok=False, reason="crash"
        )


class ScriptRunner:
    """Serves one link's ``scripts/run`` requests (each in its own task, bounded)."""

    __slots__ = ("_running", "_send", "handler", "options")

    def __init__(
        self,
        options: ScriptOptions,
        handler: Callable[[str], Any] | None,
        send: Callable[[dict[str, Any]], Any],
    ) -> None:
        self.options = options
        self.handler = handler
        self._send = send
        self._running: dict[asyncio.Task[None], None] = {}

    def request(self, payload: Any) -> None:
        ref = payload.get("ref") if isinstance(payload, dict) else None
        text = payload.get("text") if isinstance(payload, dict) else None
        if len(self._running) >= self.options.max_running:
            result = ScriptResult(
                output=f"the device is already running {len(self._running)} scripts; try again",
                ok=False,
                reason="busy",
            )
            task = asyncio.get_running_loop().create_task(self._reply(ref, result))
        else:
            task = asyncio.get_running_loop().create_task(self._run(ref, text))
        self._running[task] = None
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)

    async def _run(self, ref: Any, text: Any) -> None:
        kind = "connecting code" if ref == CONNECTING_CODE else "support script"
        logger.info("running %s (ref %r, %d characters)", kind, ref, len(str(text or "")))
        result = await run_script(text, self.options, self.handler)
        logger.info("%s %r: %s", kind, ref, "completed" if result.ok else result.reason)
        await self._reply(ref, result)

    async def _reply(self, ref: Any, result: ScriptResult) -> None:
        await self._send(_answer(ref, result, self.options.max_output))

    async def cancel(self) -> None:
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
