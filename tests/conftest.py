"""Shared fixtures. ``core`` runs a test once per available implementation of ``nhlink._core``."""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator
from types import ModuleType

import pytest

from nhlink._core import extensions_disabled
from nhlink.testing import FakeHub
from nhlink.testing.firmware import FirmwareServer
from tests.support import new_hub


def _require_extensions() -> bool:
    return os.environ.get("NHLINK_REQUIRE_EXTENSIONS", "").strip() not in ("", "0")


def core_implementations() -> list[str]:
    """``["python", "cython"]`` normally; only ``["python"]`` under ``NHLINK_NO_EXTENSIONS=1``."""
    if extensions_disabled():
        return ["python"]
    return ["python", "cython"]


def load_core(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"nhlink._core.{name}")
    except ImportError as exc:
        if name == "cython" and not _require_extensions():
            pytest.skip(f"compiled core not built: {exc}")
        raise


@pytest.fixture(params=core_implementations())
def core(request: pytest.FixtureRequest) -> ModuleType:
    """The core implementation under test (``nhlink._core.python`` or ``nhlink._core.cython``)."""
    return load_core(request.param)


@pytest.fixture
def py_core() -> ModuleType:
    return load_core("python")


@pytest.fixture
def c_core() -> ModuleType:
    if extensions_disabled():
        pytest.skip("NHLINK_NO_EXTENSIONS=1: compiled core not in use")
    return load_core("cython")


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    """A FakeHub on 127.0.0.1 that knows the tests' product key (``tests.support``)."""
    async with new_hub() as h:
        yield h


@pytest.fixture
async def fw() -> AsyncIterator[FirmwareServer]:
    """A plain-http FirmwareServer on 127.0.0.1."""
    async with FirmwareServer() as server:
        yield server
