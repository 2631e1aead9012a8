"""Packaging: one version everywhere, a lean ``p2pfast.bench`` import, and, when the suite
runs against an installed wheel (``.ci/wheel-roundtrip`` sets ``WHEEL_TEST_INSTALLED_FROM``),
proof that the wheel, not a source tree, is what is being tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

import p2pfast

INSTALLED_FROM = os.environ.get("WHEEL_TEST_INSTALLED_FROM")
EXPECT_EXTENSIONS = os.environ.get("WHEEL_TEST_EXPECT_EXTENSIONS")
ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, **env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "P2PFAST_NO_EXTENSIONS"}
    full_env.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_version_is_defined_once_and_is_the_distributions() -> None:
    from p2pfast._version import __version__

    assert p2pfast.__version__ == __version__
    assert __version__.count(".") >= 2 and __version__.split(".")[0].isdigit()
    try:
        dist = distribution("p2pfast")
    except PackageNotFoundError:
        pytest.skip("p2pfast is not installed (source tree only)")
    # The installed metadata must belong to the p2pfast being tested to say anything.
    location = Path(str(dist.locate_file("p2pfast"))).resolve()
    if location != Path(p2pfast.__file__).resolve().parent:
        pytest.skip(f"the installed distribution is another copy ({location})")
    assert dist.version == __version__


def test_importing_the_bench_package_loads_none_of_its_modules() -> None:
    """``python -m p2pfast.bench.baseline`` must stay a lean echo server: the package's
    ``__init__`` imports no submodule and no click until a name is used."""
    loaded = json.loads(
        _python(
            "import json, sys, p2pfast.bench;"
            "print(json.dumps(sorted(m for m in sys.modules"
            " if m == 'click' or m.startswith('p2pfast.bench.'))))"
        )
    )
    assert loaded == []
    names = _python(
        "import p2pfast.bench as b; print(b.main.name, b.median_ratios.__module__, "
        "b.BenchError.__module__)"
    )
    assert names.split() == ["main", "p2pfast.bench.report", "p2pfast.bench.common"]


def test_bench_reports_the_single_sourced_version() -> None:
    out = _python("import sys; sys.argv = ['p2pfast-bench', '--version'];"
                  "from p2pfast.bench import main; main()")  # fmt: skip
    assert out == f"p2pfast-bench, version {p2pfast.__version__}"


def test_unknown_bench_attribute_is_an_attribute_error() -> None:
    import p2pfast.bench

    with pytest.raises(AttributeError, match="no_such_name"):
        _ = p2pfast.bench.no_such_name


@pytest.mark.skipif(INSTALLED_FROM is None, reason="only when testing an installed wheel")
def test_the_installed_package_is_the_one_under_test() -> None:
    assert INSTALLED_FROM is not None
    site = Path(INSTALLED_FROM).resolve()
    here = Path(p2pfast.__file__).resolve()
    assert here.is_relative_to(site), f"p2pfast imported from {here}, not from {site}"
    # Subprocesses (the server, the bench) import the same copy.
    child = Path(_python("import p2pfast; print(p2pfast.__file__)")).resolve()
    assert child.is_relative_to(site), child
    package = here.parent
    stubs = (
        "_codec.pyi",
        "_window.pyi",
        "_receive.pyi",
        "_sendbatch.pyi",
        "_congestion.pyi",
        "_fragment.pyi",
        "_bulk.pyi",
    )
    for stub in (*stubs, "py.typed"):
        assert (package / stub).is_file(), f"{stub} missing from the wheel"
    compiled = sorted(p.name for p in package.iterdir() if p.suffix in (".so", ".pyd"))
    # Without P2PFAST_NO_EXTENSIONS: what the wheel provides is what gets used.
    use = _python("import p2pfast; print(int(p2pfast.USE_EXTENSIONS))")
    if EXPECT_EXTENSIONS == "1":
        assert len(compiled) == 7, compiled
        assert use == "1"
    else:
        assert compiled == []
        assert use == "0"
