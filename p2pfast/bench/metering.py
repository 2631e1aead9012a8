"""Server processes for ``p2pfast-bench``, and the meter reading their CPU time and memory.

A benchmarked server runs as a subprocess of its own, so what it costs can be read for that
process alone: its utime + stime and its resident memory (current and peak) come from
``/proc/PID/stat`` and ``/proc/PID/status`` (Linux), or from psutil where ``/proc`` is absent.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque

from .common import NETWORK_ID, BenchError

#: Servers: seconds to become ready, seconds between SIGTERM and SIGKILL.
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_READY_RE = re.compile(r"listening on (\S+):(\d+)")


def proc_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of ``pid`` (its own, not its children's), in seconds."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except Exception:
        return None


def proc_status_kb(pid: int | None, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmHWM``: peak RSS, ``VmRSS``: current)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    if key == "VmRSS":
        try:
            import psutil

            return int(psutil.Process(pid).memory_info().rss) // 1024
        except Exception:
            return None
    return None


def to_mb(kb: int | None) -> float | None:
    """kB (as ``/proc`` reports them) to MB with one decimal; None stays None."""
    return None if kb is None else round(kb / 1024.0, 1)


# ---------------------------------------------------------------------------------------
# Server subprocesses


class ServerProcess:
    """A server subprocess that prints ``... listening on IP:PORT ...`` on stderr when ready.

    stderr is drained by a thread for the whole life of the process (a full pipe would block
    the server); the last lines are kept for error messages.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = ""
        self.port = 0
        self.ready_line = ""
        self.tail: deque[str] = deque(maxlen=20)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=self.env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the bench only
            )
        except OSError as exc:
            raise BenchError(f"cannot start {self.name}: {exc}") from None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(1.0)
                if self._ready.is_set():
                    break
                last = self._last_line() or "no output"
                raise BenchError(
                    f"{self.name} exited with code {self.proc.returncode} "
                    f"before it was ready: {last}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BenchError(f"{self.name} did not report ready within {timeout:.0f} s")
        match = _READY_RE.search(self.ready_line)
        assert match is not None
        self.host = match.group(1).strip("[]")
        self.port = int(match.group(2))

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if not self._ready.is_set() and _READY_RE.search(line):
                self.ready_line = line
                self._ready.set()

    def _last_line(self) -> str:
        for line in reversed(self.tail):
            if line.strip():
                return line.strip()
        return ""

    def terminate(self) -> None:
        """Send SIGTERM (non-blocking)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                self.proc.kill()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.returncode = self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(1.0)
        return self.returncode


def p2pfast_server(peers: int, impl: str, network_id: str = NETWORK_ID) -> ServerProcess:
    """``p2pfast-server`` on an ephemeral loopback port, sized for ``peers``, running the
    ``impl`` ("compiled" or "pure") implementation, with no echo, discovery or heartbeats."""
    env = dict(os.environ)
    env.pop("P2PFAST_NO_EXTENSIONS", None)
    if impl == "pure":
        env["P2PFAST_NO_EXTENSIONS"] = "1"
    env.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    argv = [
        sys.executable, "-m", "p2pfast.cli",
        "-a", "127.0.0.1:0",
        "--network-id", network_id,
        "-m", str(peers + 16),
        "--no-echo",
        "--disable-discovery",
        "--heartbeat-interval", "3600",
        "--connection-timeout", "7200",
        "--stats-interval", "0",
        "--log-level", "warning",
    ]  # fmt: skip
    return ServerProcess(f"p2pfast-server ({impl})", argv, env)


def baseline_server() -> ServerProcess:
    """The do-nothing uvloop echo of :mod:`p2pfast.bench.baseline` on an ephemeral port."""
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    argv = [sys.executable, "-m", "p2pfast.bench.baseline", "--address", "127.0.0.1:0"]
    return ServerProcess("baseline echo server", argv, env)


# ---------------------------------------------------------------------------------------
# Message templates
