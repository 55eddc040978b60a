"""Run the benchmark suites in one process run and print side-by-side ratio tables.

Usage::

    python benchmarks/compare.py                      # every bench_*.py
    python benchmarks/compare.py frames codec         # only bench_frames.py, bench_codec.py
    python benchmarks/compare.py --json out.json      # keep pytest-benchmark's JSON
    python benchmarks/compare.py --from out.json      # print tables from an earlier run

Each benchmark declares ``benchmark.group`` (one table per group) and ``extra_info`` with
``impl`` (a row), ``items`` and ``unit`` (what one round processes). Rows are compared with the
first baseline present in the group (``BASELINES`` order), so every ratio comes from one run on
one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Which row a group's ratios are relative to: the rival to beat, first match wins.
BASELINES = (
    "aiohttp",
    "json",
    "msgpack",
    "hashlib",
    "raw-socket",
    "memcpy",
    "websockets",
    "nhlink-python",
)


def _rate(bench: dict[str, Any]) -> tuple[float, str]:
    info = bench.get("extra_info", {})
    items = float(info.get("items", 1))
    unit = str(info.get("unit", "ops"))
    median = float(bench["stats"]["median"])
    return items / median, unit


def _fmt_rate(rate: float, unit: str) -> str:
    if unit == "bytes":
        return f"{rate / 2**20:10.1f} MiB/s"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if rate >= scale:
            return f"{rate / scale:9.2f} {suffix} {unit}/s"
    return f"{rate:9.1f}  {unit}/s"


def tables(data: dict[str, Any]) -> str:
    groups: dict[str, list[dict[str, Any]]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench.get("group") or bench["name"], []).append(bench)
    out: list[str] = []
    machine = data.get("machine_info", {})
    out.append(
        f"# {machine.get('python_implementation', '')} {machine.get('python_version', '')} on "
        f"{machine.get('cpu', {}).get('brand_raw', machine.get('machine', '?'))}"
    )
    for group in sorted(groups):
        rows = groups[group]
        impls = {b.get("extra_info", {}).get("impl", b["name"]): b for b in rows}
        baseline = next((name for name in BASELINES if name in impls), None)
        base_rate = _rate(impls[baseline])[0] if baseline else None
        out.append("")
        out.append(f"## {group}" + (f"   (ratio vs {baseline})" if baseline else ""))
        ordered = sorted(impls.items(), key=lambda kv: -_rate(kv[1])[0])
        for name, bench in ordered:
            rate, unit = _rate(bench)
            ratio = f"{rate / base_rate:6.2f}x" if base_rate else ""
            extra = bench.get("extra_info", {}).get("note", "")
            out.append(f"  {name:<22} {_fmt_rate(rate, unit):>22}  {ratio}  {extra}".rstrip())
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="*", help="suite names: frames, codec, digest, client, ...")
    parser.add_argument("--json", help="write pytest-benchmark JSON here")
    parser.add_argument("--from", dest="from_json", help="print tables from an earlier JSON")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args, pytest_args = parser.parse_known_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        files = (
            [str(HERE / f"bench_{name}.py") for name in args.suites]
            if args.suites
            else sorted(str(p) for p in HERE.glob("bench_*.py"))
        )
        with tempfile.TemporaryDirectory() as tmp:
            target = args.json or os.path.join(tmp, "bench.json")
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                *files,
                "-p",
                "no:cacheprovider",
                "-q",
                "--benchmark-only",
                f"--benchmark-json={target}",
                "--benchmark-columns=median,ops",
                "--rootdir",
                str(HERE.parent),
                "-o",
                "testpaths=benchmarks",
                *pytest_args,
            ]
            result = subprocess.run(cmd, check=False)
            if result.returncode not in (0, 5) or not Path(target).exists():
                return result.returncode or 1
            data = json.loads(Path(target).read_text())
    text = tables(data)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text("```\n" + text + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
