"""Coverage-guided fuzzing with atheris: ``python -m tests.fuzz TARGET [SECONDS] [CORPUS...]``.

Runs one target of tests/fuzz/targets.py (default 60 s) over the pure-Python code, instrumented,
with the corpus in tests/fuzz/corpus/TARGET (new interesting inputs are added there; keep the
small ones). A crash is written as ``crash-*`` in the current directory: turn it into a
regression test (tests/fuzz/test_fuzz.py replays tests/fuzz/regressions/)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    name = sys.argv[1]
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    # The first corpus directory receives new inputs; the others are only read.
    corpora = [Path(a) for a in sys.argv[3:]] or [HERE / "corpus" / name]
    corpora[0].mkdir(parents=True, exist_ok=True)
    import atheris

    with atheris.instrument_imports(include=["nhlink"]):
        from tests.fuzz.targets import TARGETS

    target = TARGETS[name]
    atheris.Setup(
        [
            sys.argv[0],
            *map(str, corpora),
            f"-max_total_time={seconds}",
            "-rss_limit_mb=2048",
            "-timeout=10",
        ],
        target,
    )
    atheris.Fuzz()


if __name__ == "__main__":
    main()
