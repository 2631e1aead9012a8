"""Proves which implementation is loaded; CI sets P2PFAST_REQUIRE_EXTENSIONS=1 so a missing
or unloaded compiled build fails the run instead of silently testing pure Python twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = (
    "import json, p2pfast, p2pfast._speedups as s;"
    "print(json.dumps({'use': p2pfast.USE_EXTENSIONS, 'codec': s.codec.__file__,"
    " 'window': s.window.__file__, 'receive': s.receive.__file__,"
    " 'sendbatch': s.sendbatch.__file__, 'congestion': s.congestion.__file__,"
    " 'fragment': s.fragment.__file__, 'bulk': s.bulk.__file__}))"
)


def _probe(env_overrides: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "P2PFAST_NO_EXTENSIONS"}
    env.update(env_overrides)
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        return {"use": False, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout)


@pytest.mark.skipif(
    os.environ.get("P2PFAST_REQUIRE_EXTENSIONS") != "1",
    reason="only enforced when P2PFAST_REQUIRE_EXTENSIONS=1 (as in CI)",
)
def test_compiled_modules_are_built_and_loaded():
    info = _probe({})
    assert info["use"] is True, f"compiled extensions not loaded: {info}"
    for key in (
        "codec",
        "window",
        "receive",
        "sendbatch",
        "congestion",
        "fragment",
        "bulk",
    ):
        assert info[key].endswith((".so", ".pyd")), f"{key} loaded from {info[key]}"


def test_no_extensions_env_selects_pure_twins():
    info = _probe({"P2PFAST_NO_EXTENSIONS": "1"})
    assert info["use"] is False
    assert info["codec"].endswith("_codec_py.py")
    assert info["window"].endswith("_window_py.py")
    assert info["receive"].endswith("_receive_py.py")
    assert info["sendbatch"].endswith("_sendbatch_py.py")
    assert os.path.basename(info["congestion"]) == "congestion.py"
    assert info["fragment"].endswith("_fragment_py.py")
    assert info["bulk"].endswith("_bulk_py.py")
