"""Fetch, on the host, the wheels an emulated ARM root needs to install and test nhlink.

Resolving and downloading natively is many times faster than pip under emulation, and it tells
which dependencies PyPI ships as binary wheels for each architecture. Usage (run.sh calls it)::

    python deps.py --arch aarch64 --glibc 2.36 --project REPO --cache DIR --out WHEELS \\
        --report deps.json

What it does:

1. Resolves, with the host's pip (``install --dry-run --report``), the runtime dependencies and
   the ``test`` extra of ``pyproject.toml`` plus the build requirements (setuptools, Cython): the
   same Python minor version and Linux, so the same pins an ARM pip would pick.
   ``cryptography`` (and what only it pulls in) is *optional*: only the mTLS tests need it;
   so is ``msgpack`` (no armv7l wheel): only the MessagePack agreement tests need it.
2. Downloads each pin for the target with ``pip download --no-deps --only-binary=:all:`` and the
   target's tags (``manylinux_2_17`` .. ``manylinux_2_<glibc>``), into a per-architecture cache.
3. A required pin without any wheel is fetched as an sdist, to be built inside the root under
   emulation (slow; the report says so). An optional group with a missing wheel is skipped.

The report (JSON) lists every pin: name, version, group, kind (``binary``, ``pure``, ``sdist``,
``missing``), file, and whether the root installs it; ``OUT/requirements.txt`` pins the ones
to install with nhlink (the build requirements are left out).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

OPTIONAL = {"cryptography", "msgpack"}
BUILD_REQUIREMENTS_FALLBACK = ["setuptools>=77", "Cython>=3.0.10"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return proc


HOST_FILES: dict[str, str] = {}  # name -> the file pip picked for the host (x86_64)


def resolve(requirements: list[str]) -> dict[str, str]:
    """name -> version that pip would install for these requirements (host platform)."""
    proc = pip(
        "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-", *requirements
    )
    pins = {}
    for item in json.loads(proc.stdout)["install"]:
        name = norm(item["metadata"]["name"])
        pins[name] = item["metadata"]["version"]
        HOST_FILES[name] = item.get("download_info", {}).get("url", "").rsplit("/", 1)[-1]
    return pins


def platform_args(arch: str, glibc: str) -> list[str]:
    major, minor = (int(x) for x in glibc.split("."))
    assert major == 2
    args = ["--platform", f"manylinux2014_{arch}"]
    for m in range(17, minor + 1):
        args += ["--platform", f"manylinux_2_{m}_{arch}"]
    return args


def find_cached(cache: Path, name: str, version: str) -> Path | None:
    for path in sorted(cache.glob("*")):
        stem = path.name
        if not path.is_file():
            continue
        if stem.endswith(".whl"):
            dist, ver = stem.split("-")[:2]
        elif stem.endswith((".tar.gz", ".zip")):
            base = stem.removesuffix(".tar.gz").removesuffix(".zip")
            dist, _, ver = base.rpartition("-")
        else:
            continue
        if norm(dist) == name and ver == version:
            return path
    return None


def kind_of(path: Path) -> str:
    """binary, pure or sdist, from a file name."""
    if not path.name.endswith(".whl"):
        return "sdist"
    return "pure" if path.name.endswith("-none-any.whl") else "binary"


def fetch(name: str, version: str, arch: str, glibc: str, pyver: str, cache: Path) -> Path | None:
    """The cached or freshly downloaded wheel (else sdist) of name==version for the target."""
    cached = find_cached(cache, name, version)
    if cached is not None:
        return cached
    nodot = pyver.replace(".", "")
    proc = pip(
        "download",
        "--no-deps",
        "--only-binary=:all:",
        *platform_args(arch, glibc),
        "--python-version",
        pyver,
        "--implementation",
        "cp",
        "--abi",
        f"cp{nodot}",
        "--abi",
        "abi3",
        "--abi",
        "none",
        "--dest",
        str(cache),
        f"{name}=={version}",
        check=False,
    )
    if proc.returncode == 0:
        return find_cached(cache, name, version)
    sdists = cache / "sdist"
    cached = find_cached(sdists, name, version) if sdists.is_dir() else None
    if cached is not None:
        return cached
    proc = pip(
        "download",
        "--no-deps",
        "--no-binary=:all:",
        "--dest",
        str(sdists),
        f"{name}=={version}",
        check=False,
    )
    if proc.returncode == 0:
        return find_cached(sdists, name, version)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True, help="aarch64, armv7l, ... (wheel tag arch)")
    ap.add_argument("--glibc", required=True, help="the root's glibc, e.g. 2.36")
    ap.add_argument("--python", default="3.11", help="the root's Python, e.g. 3.11")
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="where to copy the wheels used")
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--resolved", type=Path, help="reuse (or save) the resolution in this file")
    args = ap.parse_args()

    meta = tomllib.loads((args.project / "pyproject.toml").read_text())
    runtime = list(meta["project"].get("dependencies", []))
    test = list(meta["project"].get("optional-dependencies", {}).get("test", []))
    build = list(meta.get("build-system", {}).get("requires", BUILD_REQUIREMENTS_FALLBACK))
    required_test = [r for r in test if norm(re.split(r"[<>=!~\[; ]", r)[0]) not in OPTIONAL]
    optional_test = [r for r in test if r not in required_test]

    groups: dict[str, dict[str, str]] = {}
    if args.resolved and args.resolved.is_file():  # the same for every architecture
        saved = json.loads(args.resolved.read_text())
        groups = saved["groups"]
        HOST_FILES.update(saved["host_files"])
    else:
        groups["required"] = resolve(runtime + required_test)
        everything = resolve(runtime + test)
        groups["optional"] = {n: v for n, v in everything.items() if n not in groups["required"]}
        build_pins = resolve(build)
        groups["build"] = {n: v for n, v in build_pins.items() if n not in everything}
        if args.resolved:
            args.resolved.write_text(json.dumps({"groups": groups, "host_files": HOST_FILES}))

    cache = args.cache / args.arch
    cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for group, pins in groups.items():
        for name, version in sorted(pins.items()):
            path = fetch(name, version, args.arch, args.glibc, args.python, cache)
            rows.append(
                {
                    "name": name,
                    "version": version,
                    "group": group,
                    "kind": kind_of(path) if path else "missing",
                    "host_kind": kind_of(Path(HOST_FILES.get(name, "") or "x.tar.gz")),
                    "file": path.name if path else None,
                    "path": str(path) if path else None,
                }
            )
    optional_ok = all(r["kind"] in ("binary", "pure") for r in rows if r["group"] == "optional")
    for row in rows:
        if row["group"] == "required":
            row["used"] = row["kind"] != "missing"
        elif row["group"] == "optional":
            row["used"] = optional_ok
        else:  # build requirements: used by a build inside the root only
            row["used"] = row["kind"] in ("binary", "pure")
        if row["used"]:
            shutil.copy2(row["path"], args.out / row["file"])
    pins = [f"{r['name']}=={r['version']}" for r in rows if r["used"] and r["group"] != "build"]
    (args.out / "requirements.txt").write_text("\n".join(pins) + "\n")
    missing = [r["name"] for r in rows if r["group"] == "required" and r["kind"] == "missing"]
    report = {
        "arch": args.arch,
        "glibc": args.glibc,
        "python": args.python,
        "optional_installed": optional_ok,
        "optional_requirements": optional_test,
        "rows": rows,
    }
    args.report.write_text(json.dumps(report, indent=2))
    for row in rows:
        print(
            f"  {row['group']:9} {row['name']:22} {row['version']:12} {row['kind']:8}"
            f" {'' if row['used'] else '(not installed)'}"
        )
    if missing:
        raise SystemExit(f"no wheel and no sdist for required {', '.join(missing)}")


if __name__ == "__main__":
    main()
