"""Fixtures for the micro-benchmarks: each runs against the compiled ([c]) and pure ([py]) twin."""

from __future__ import annotations

import importlib
import os

import pytest

NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")


def load(name: str, impl: str):
    """``p2pfast.<name>`` compiled (impl "c") or its pure twin ``<name>_py`` (impl "py")."""
    if impl == "py":
        return importlib.import_module(f"p2pfast.{name}_py")
    if NO_EXTENSIONS:
        pytest.skip("compiled extensions disabled by P2PFAST_NO_EXTENSIONS")
    return importlib.import_module(f"p2pfast.{name}")


@pytest.fixture(params=["c", "py"])
def codec(request):
    """The codec module, compiled ([c]) and pure ([py])."""
    return load("_codec", request.param)
