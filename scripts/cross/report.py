"""Summarise a scripts/cross/run.sh run: print it, and write summary.md and summary.json.

    python report.py OUT_DIR ARCH...

Reads what run.sh left in OUT_DIR: host.env, native-bench.json and, per architecture,
ARCH/result.env (times, wheel), ARCH/deps.json (scripts/cross/deps.py), ARCH/junit.xml (pytest)
and ARCH/bench.json (scripts/cross/bench.py). The last lines printed are the test counts.
"""

from __future__ import annotations

import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

STEPS = ["root", "extract", "deps", "build", "repair", "install", "tests", "bench"]


def read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
    return values


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def counts(junit: Path) -> dict[str, int] | None:
    if not junit.is_file():
        return None
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in total:
            total[key] += int(suite.get(key, 0))
    failed = total["failures"] + total["errors"]
    return {
        "passed": total["tests"] - failed - total["skipped"],
        "failed": failed,
        "skipped": total["skipped"],
    }


def slowdowns(native: Any, emulated: Any) -> dict[str, dict[str, float]]:
    """impl -> workload -> emulated time / native time (and the geometric mean)."""
    out: dict[str, dict[str, float]] = {}
    if not native or not emulated:
        return out
    for impl, times in emulated["seconds"].items():
        base = native["seconds"].get(impl, {})
        ratios = {w: t / base[w] for w, t in times.items() if base.get(w)}
        if ratios and impl != "-":
            ratios["geomean"] = math.exp(sum(map(math.log, ratios.values())) / len(ratios))
        out[impl] = ratios
    return out


def main() -> None:
    out_dir = Path(sys.argv[1])
    arches = sys.argv[2:]
    host = read_env(out_dir / "host.env")
    native = read_json(out_dir / "native-bench.json")
    summary: dict[str, Any] = {"host": host, "native_bench": native, "arches": {}}
    for arch in arches:
        d = out_dir / arch
        summary["arches"][arch] = {
            "result": read_env(d / "result.env"),
            "tests": counts(d / "junit.xml"),
            "deps": read_json(d / "deps.json"),
            "bench": read_json(d / "bench.json"),
            "slowdown": slowdowns(native, read_json(d / "bench.json")),
            "fpu": read_json(d / "fpu.json"),
        }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    md: list[str] = []
    md.append("| arch | wheel | bytes | " + " | ".join(STEPS) + " | total |")
    md.append("|" + " --- |" * (len(STEPS) + 4))
    for arch, info in summary["arches"].items():
        r = info["result"]
        cells = []
        for s in STEPS:
            value = r.get(f"t_{s}")
            if s == "root" and r.get("root_cached") == "yes":
                value = "cached"
            cells.append(f"{value} s" if value and value != "cached" else (value or "-"))
        md.append(
            f"| {arch} | `{r.get('wheel', '-')}` | {r.get('wheel_size', '-')} | "
            + " | ".join(cells)
            + f" | {r.get('t_total', '-')} s |"
        )
    md.append("")
    md.append("| arch | QEMU_CPU | pointer | Python | glibc | build | tests |")
    md.append("| --- | --- | --- | --- | --- | --- | --- |")
    for arch, info in summary["arches"].items():
        r, c = info["result"], info["tests"]
        tests = f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped" if c else "-"
        md.append(
            f"| {arch} | {r.get('qemu_cpu', '-')} | {r.get('pointer_bits', '-')}-bit | "
            f"{r.get('python', '-')} | {r.get('glibc', '-')} | {r.get('build_mode', '-')} | "
            f"{tests} |"
        )
    for arch, info in summary["arches"].items():
        culprits = (info["fpu"] or {}).get("flush_to_zero")
        if culprits:
            env = info["result"].get("test_env", "").strip() or "nothing"
            md.append("")
            md.append(
                f"{arch}: loading {', '.join(f'`{c}`' for c in culprits)} switches the FPU to "
                f"flush-to-zero for the whole process (a -ffast-math build); tests ran with {env}."
            )
    if native:
        md.append("")
        md.append(
            "Emulation slowdown: time emulated / time native, same benchmark"
            " (scripts/cross/bench.py; interp: a plain Python loop, no nhlink; geomean: of the"
            " four core workloads)."
        )
        md.append("")
        columns = [(a, i) for a in summary["arches"] for i in ("cython", "python")]
        columns = [(a, i) for a, i in columns if summary["arches"][a]["slowdown"].get(i)]
        names = {"cython": "compiled", "python": "pure"}
        md.append("| workload | " + " | ".join(f"{a} {names[i]}" for a, i in columns) + " |")
        md.append("|" + " --- |" * (len(columns) + 1))
        for w in ["interp", "mask", "frames", "codec", "digest", "geomean"]:
            cells = []
            for a, i in columns:
                slow = summary["arches"][a]["slowdown"]
                ratio = (slow.get("-") or {}).get(w) if w == "interp" else slow[i].get(w)
                cells.append(f"{ratio:.1f}x" if ratio else "")
            if any(cells):
                md.append(f"| {w} | " + " | ".join(cells) + " |")
        md.append("")
        md.append("The benchmark's times (ms, best of 5):")
        md.append("")
        runs = [("x86_64 native", native)] + [
            (a, i["bench"]) for a, i in summary["arches"].items() if i["bench"]
        ]
        heads = [f"{name} {names[i]}" for name, _ in runs for i in ("cython", "python")]
        md.append("| workload | " + " | ".join(heads) + " |")
        md.append("|" + " --- |" * (len(heads) + 1))
        for w in ["interp", "mask", "frames", "codec", "digest"]:
            cells = []
            for _, data in runs:
                for i in ("cython", "python"):
                    t = data["seconds"].get("-" if w == "interp" else i, {}).get(w)
                    cells.append(f"{t * 1e3:.2f}" if t else "")
            md.append(f"| {w} | " + " | ".join(cells) + " |")
    deps = {a: i["deps"] for a, i in summary["arches"].items() if i["deps"]}
    if deps:
        md.append("")
        md.append(
            "Dependencies (binary: a platform wheel from PyPI; pure: py3-none-any; sdist: built"
            " under emulation; the optional group installs only when all of it has wheels):"
        )
        md.append("")
        md.append("| package | version | group | x86_64 | " + " | ".join(deps) + " |")
        md.append("|" + " --- |" * (len(deps) + 4))
        first = next(iter(deps.values()))
        for row in first["rows"]:
            cells = []
            for report in deps.values():
                match = [x for x in report["rows"] if x["name"] == row["name"]]
                x = match[0] if match else None
                cells.append((x["kind"] + ("" if x["used"] else " (not installed)")) if x else "-")
            md.append(
                f"| {row['name']} | {row['version']} | {row['group']} | "
                f"{row.get('host_kind', '-')} | " + " | ".join(cells) + " |"
            )
    md.append("")
    if host:
        dists = {k.removeprefix("dist_"): v for k, v in host.items() if k.startswith("dist_")}
        for name, size in dists.items():
            md.append(f"Also built: `{name}` ({size} bytes).  ")
        md.append(
            "Host steps: "
            + ", ".join(
                f"{k.removeprefix('t_')} {v} s" for k, v in host.items() if k.startswith("t_")
            )
            + "."
        )
    text = "\n".join(md) + "\n"
    (out_dir / "summary.md").write_text(text)

    print(f"\n== nhlink wheels under emulation: summary (also in {out_dir / 'summary.md'})")
    print(text)
    passed = failed = 0
    for arch, info in summary["arches"].items():
        c = info["tests"]
        status = info["result"].get("status", "failed")
        if c:
            passed += c["passed"]
            failed += c["failed"]
            print(f"{arch}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
        else:
            print(f"{arch}: no tests ran ({status}, step {info['result'].get('failed_step', '?')})")
    print(f"cross: {passed} passed, {failed} failed")


if __name__ == "__main__":
    main()
