"""Remote access to a device (PROTOCOL.md §6.6, §6.9, §8.6, §9): all off by default.

* :class:`LocalShellExtension` — the ``local_shell`` extension (a shell on a PTY);
* :class:`ConsoleOptions` — the ``console`` channel: a shell and file transfer;
* :class:`ScriptOptions` / :class:`ScriptResult` — support scripts and the connecting code;
* :class:`ShellOptions` — how remote shells start, run as whom, and are bounded;
* :class:`PtyShell` — the PTY machinery the shells use.

See docs/remote.md for what each feature does, how to enable it and the security model.
Names load on first use: a device without remote access never imports the PTY machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .archives import ArchiveInfo, ArchiveOptions
    from .console import ConsoleOptions, safe_upload_name
    from .keys import SigningKeys
    from .pty import PtyShell, ShellOptions, exit_status
    from .scripts import ScriptOptions, ScriptResult
    from .shell import LocalShellExtension

__all__ = [
    "ArchiveInfo",
    "ArchiveOptions",
    "ConsoleOptions",
    "LocalShellExtension",
    "PtyShell",
    "ScriptOptions",
    "ScriptResult",
    "ShellOptions",
    "SigningKeys",
    "exit_status",
    "safe_upload_name",
]

_WHERE = {
    "ArchiveInfo": "archives",
    "ArchiveOptions": "archives",
    "ConsoleOptions": "console",
    "safe_upload_name": "console",
    "PtyShell": "pty",
    "ShellOptions": "pty",
    "exit_status": "pty",
    "ScriptOptions": "scripts",
    "ScriptResult": "scripts",
    "SigningKeys": "keys",
    "LocalShellExtension": "shell",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
