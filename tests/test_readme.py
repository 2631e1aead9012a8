"""The README's code runs as written.

Every ```python block runs in a fresh interpreter; lines marked ``# prints: X`` say what it must
print, in order. Every ```bash block runs under ``bash -euo pipefail``, with ``p2pfast-server``
being this checkout's (a wrapper for ``python -m p2pfast`` on PATH) and the example ports
(9300, 9100) replaced by free ones, so parallel runs cannot collide. Blocks that install
packages, run the test suite or the benchmark are only checked to exist. The README and the docs
must stand alone: no reference outside the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
NOT_RUN = ("pip install", "pytest", "p2pfast-bench")
EXAMPLE_PORTS = ("9300", "9100")


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def checkout_env(tmp_path: Path) -> dict[str, str]:
    """PATH with a ``p2pfast-server`` that runs this checkout; PYTHONPATH to this checkout."""
    env = dict(os.environ)
    if sys.platform != "win32":  # (Windows: the installed p2pfast-server.exe, no sh, no symlinks)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "p2pfast-server"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m p2pfast "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        python = bin_dir / "python"
        if not python.exists():
            python.symlink_to(sys.executable)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_readme_has_the_blocks_this_test_runs() -> None:
    assert len(blocks("python")) >= 1
    runnable = [b for b in blocks("bash") if not any(skip in b for skip in NOT_RUN)]
    assert len(runnable) >= 3
    assert any("pip install" in b for b in blocks("bash"))


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    code = blocks("python")[index]
    expected = re.findall(r"#\s*prints:\s*(.*)$", code, re.M)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=checkout_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines() == expected


@pytest.mark.parametrize(
    "index", [i for i, b in enumerate(blocks("bash")) if not any(skip in b for skip in NOT_RUN)]
)
@pytest.mark.skipif(sys.platform == "win32", reason="the README's shell blocks are bash")
def test_readme_shell_block_runs(index: int, tmp_path: Path) -> None:
    script = blocks("bash")[index]
    if "curl" in script and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    for port, kind in zip(EXAMPLE_PORTS, (socket.SOCK_DGRAM, socket.SOCK_STREAM), strict=True):
        script = script.replace(f":{port}", f":{free_port(kind)}")
    assert "127.0.0.1:8080" not in script  # a fixed port the machine may be using
    # Whatever happens, the servers the block started in the background are stopped.
    guarded = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", guarded],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=checkout_env(tmp_path),
    )
    assert result.returncode == 0, (script, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr


def test_readme_error_examples_are_what_the_command_prints(tmp_path: Path) -> None:
    """The ``$ p2pfast-server ...`` transcripts show the real output."""
    text = README.read_text()
    transcripts = re.findall(r"^\$ (p2pfast-server .*)\n(p2pfast-server: error: .*)$", text, re.M)
    assert len(transcripts) >= 2
    for command, shown in transcripts:
        args = command.split()[1:]
        result = subprocess.run(
            [sys.executable, "-m", "p2pfast", *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            env=checkout_env(tmp_path),
        )
        assert result.returncode == 2
        assert result.stderr.strip() == shown


def test_readme_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if target.startswith("http"):
            continue
        assert (ROOT / target).exists() or target in (
            "docs/api.md",
            "docs/scale.md",
            "docs/reliability.md",
        ), target


@pytest.mark.parametrize("path", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_documents_stand_alone(path: Path) -> None:
    text = path.read_text()
    assert "../" + "shared" not in text  # spelled apart so this file does not match itself
    assert not re.search(r"\bSPEC\b", text), "refers to a specification outside the repository"
