"""``python -m nhlink.testing`` as a process of its own, for benchmarks and tests that want the
server outside their process (its own CPU time and memory, like a real NervesHub)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Self

__all__ = ["HubProcess"]


class HubProcess:
    """Start with :meth:`start` (returns once it listens; ``port`` is then set), end with
    :meth:`stop`. The hub listens on 127.0.0.1 and knows one product key; its HTTP control API
    (``/_fakehub/...``, see :mod:`nhlink.testing._control`) is on the same port."""

    def __init__(
        self,
        product_key: str,
        product_secret: str,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "nhlink.testing",
            "--port",
            "0",
            "--product-key",
            product_key,
            "--product-secret",
            product_secret,
            *args,
        ]
        self.env = dict(env) if env is not None else dict(os.environ)
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> Self:
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("control API:"):  # http://127.0.0.1:PORT/_fakehub/devices
                self.port = int(line.split()[-1].split(":")[2].split("/")[0])
                return self
        self.proc.wait(10)
        raise RuntimeError(f"python -m nhlink.testing did not start (exit {self.proc.returncode})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
