"""Shared fixtures: every codec/window test runs against both implementations ([c] and [py])."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Real datagrams captured from the Rust server and client (kept in the repository, so the
#: suite is self-contained).
WIRE_EXAMPLES = ROOT / "tests" / "data" / "wire-examples.jsonl"

NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")


def _load(name: str, impl: str):
    if impl == "py":
        return importlib.import_module(f"p2pfast.{name}_py")
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    try:
        return importlib.import_module(f"p2pfast.{name}")
    except ImportError as exc:  # a missing build is a failure, not a skip
        pytest.fail(f"compiled module p2pfast.{name} not importable: {exc}")


@pytest.fixture(params=["c", "py"])
def codec(request):
    """The codec module, compiled ([c]) and pure ([py])."""
    return _load("_codec", request.param)


@pytest.fixture(params=["c", "py"])
def window(request):
    """The window module, compiled ([c]) and pure ([py])."""
    return _load("_window", request.param)


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable
