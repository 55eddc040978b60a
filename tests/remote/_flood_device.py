"""A device in its own process for the flood test: a link with the local shell, whose shell
waits for one line of input and then prints 100 MiB. Prints ``ready <VmRSS KiB>`` once joined
and ``peak <VmHWM KiB>`` after stdin closes and the link stopped.

Usage: python _flood_device.py PORT KEY SECRET IDENTIFIER BYTES
"""

from __future__ import annotations

import asyncio
import sys

from nhlink import NervesHubLink
from nhlink.remote import ShellOptions


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


async def main() -> None:
    port, key, secret, identifier, size = sys.argv[1:6]
    script = f"read go; head -c {int(size)} /dev/zero | tr '\\000' x; echo; echo FLOOD-DONE"
    link = NervesHubLink(
        host="127.0.0.1",
        port=int(port),
        ssl=False,
        product_key=key,
        product_secret=secret,
        identifier=identifier,
        heartbeat_interval=0.1,
        firmware_meta={
            "uuid": "5b4a6a0e-7e8e-4f7e-9d3c-000000000001",
            "product": "flood",
            "architecture": "x86_64",
            "version": "1.0.0",
            "platform": "test",
        },
        extensions={"local_shell": ShellOptions(command=["/bin/sh", "-c", script])},
    )
    await link.start()
    await link.wait_joined(30)
    print("ready", status("VmRSS"), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await link.stop()
    print("peak", status("VmHWM"), flush=True)


asyncio.run(main())
