"""What an idle device costs: import time and memory of ``import nhlink``, and the RSS of a
joined device with heartbeats and no update yet, against a bare-interpreter baseline.

Every figure comes from a fresh process (peak RSS ``VmHWM``, import time with
``time.perf_counter`` around the import), the rows interleaved round by round; the table shows
the median of ``--repeat`` rounds and the difference to the baseline of the same run:

* ``baseline``: ``import asyncio, ssl, json, hashlib`` (what any asyncio TLS client needs);
* ``import nhlink``: the library, and whether ``aiohttp`` got imported (it must not: a device
  needs it only when a firmware download starts);
* ``idle device``: ``import nhlink``, then a :class:`~nhlink.NervesHubLink` joined to a FakeHub
  (in another process) for ``--idle`` seconds with a 1 s heartbeat; RSS measured at the end.

Run::

    python benchmarks/footprint.py               # median of 7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

ROWS = ("baseline", "import nhlink", "idle device")

_PROBE = r"""
import json, sys, time
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
row = sys.argv[1]
t = time.perf_counter()
if row == "baseline":
    import asyncio, ssl, json, hashlib
else:
    import nhlink
took = time.perf_counter() - t
if row == "idle device":
    import asyncio
    port, seconds = int(sys.argv[2]), float(sys.argv[3])
    async def main():
        link = nhlink.NervesHubLink(
            host="127.0.0.1", port=port, ssl=False, product_key=sys.argv[4],
            product_secret=sys.argv[5], identifier=f"idle-{time.monotonic_ns()}",
            name="idle", heartbeat_interval=1.0,
            firmware_meta={"uuid": "u", "product": "p", "architecture": "a", "platform": "p",
                           "version": "1.0.0"},
        )
        async with link:
            await link.wait_joined(10)
            await asyncio.sleep(seconds)
            assert link.status.joined
    asyncio.run(main())
print(json.dumps({"row": row, "import_s": took, "rss_mib": hwm(),
                  "aiohttp": "aiohttp" in sys.modules}))
"""

KEY = "nhp_footprint000000000000000000000000000000000"
SECRET = "footprint-secret-0000000000000000000000000000"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds joined (default 5)")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    from nhlink.testing.process import HubProcess

    hub = HubProcess(KEY, SECRET).start()
    port = hub.port
    results: dict[str, list[dict[str, Any]]] = {row: [] for row in ROWS}
    # Imports as installed: from bytecode (pip compiles a wheel's modules at install), not
    # compiled from source on every start (PYTHONDONTWRITEBYTECODE would measure that).
    import compileall

    import nhlink

    compileall.compile_dir(os.path.dirname(nhlink.__file__), quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    try:
        for _ in range(args.repeat):
            for row in ROWS:  # interleaved
                argv = [sys.executable, "-c", _PROBE, row]
                if row == "idle device":
                    argv += [str(port), str(args.idle), KEY, SECRET]
                out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
                results[row].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        hub.stop()
    base = {k: _median([r[k] for r in results["baseline"]]) for k in ("import_s", "rss_mib")}
    print(
        f"footprint (median of {args.repeat} fresh processes per row; "
        f"Python {sys.version.split()[0]})\n"
    )
    print(
        f"{'row':<14} {'import ms':>9} {'vs base':>8} {'peak RSS MiB':>13} {'vs base':>8}  aiohttp"
    )
    for row in ROWS:
        med = {k: _median([r[k] for r in results[row]]) for k in ("import_s", "rss_mib")}
        loaded = "imported" if any(r["aiohttp"] for r in results[row]) else "not imported"
        print(
            f"{row:<14} {med['import_s'] * 1000:>9.1f} "
            f"{(med['import_s'] - base['import_s']) * 1000:>+8.1f} {med['rss_mib']:>13.1f} "
            f"{med['rss_mib'] - base['rss_mib']:>+8.1f}  {loaded}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
