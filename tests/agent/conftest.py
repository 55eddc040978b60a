from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nhlink.testing import FakeHub

from .support import Agent, Setup


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short directory for the control socket (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="nh-", dir="/tmp")) / "run"
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture
def setup(hub: FakeHub, tmp_path: Path, run_dir: Path) -> Setup:
    return Setup(tmp_path, run_dir, hub.port)


@pytest.fixture
def agents(setup: Setup) -> Iterator[Callable[..., Agent]]:
    """``agents(env=..., name=...)`` → an Agent (not started); all are killed at the end."""
    made: list[Agent] = []

    def make(**kwargs: Any) -> Agent:
        agent = Agent(setup, **kwargs)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.kill()
