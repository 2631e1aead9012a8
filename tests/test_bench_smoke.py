"""Smoke tests of ``p2pfast-bench`` as a real subprocess (no timing assertions: the numbers
depend on the machine; only that a run completes and reports everything)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .netutil import ServerProcess

pytestmark = pytest.mark.skipif(
    sys.platform == "win32",
    reason="p2pfast-bench stops its servers with SIGTERM and meters them through /proc (POSIX)",
)

ROOT = Path(__file__).resolve().parent.parent
NO_EXTENSIONS = os.environ.get("P2PFAST_NO_EXTENSIONS", "") not in ("", "0")


def _bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "p2pfast.bench", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_small_run_with_baseline_writes_complete_json(tmp_path: Path) -> None:
    impl = "pure" if NO_EXTENSIONS else "compiled"
    out = tmp_path / "bench.json"
    proc = _bench(
        "--peers", "4", "--duration", "1", "--window", "2", "--impl", impl,
        "--baseline", "--json", str(out), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(out.read_text())

    runs = doc["runs"]
    p2p = [r for r in runs if r["kind"] == "p2pfast"]
    base = [r for r in runs if r["kind"] == "baseline"]
    assert len(p2p) == 1 and len(base) == 1
    run = p2p[0]
    assert run["impl"] == impl
    assert run["handshakes"] == 4
    assert run["completions"] > 0
    assert run["server_cpu_us_per_msg"] is not None and run["server_cpu_us_per_msg"] > 0
    assert run["server_peak_rss_mb"] > 0
    assert run["server_exit_code"] == 0
    assert run["acks"] == "plain" and run["ack_datagrams"] > 0  # one Ack per Data
    assert base[0]["completions"] > 0
    assert base[0]["acks"] is None and base[0]["ack_datagrams"] is None  # echoes, no Acks
    assert base[0]["server_cpu_us_per_msg"] is not None

    ratio = doc["ratios"]["p2pfast_over_baseline"][impl]
    assert ratio["server_cpu_us_per_msg"] > 0
    assert doc["machine"]["cpu_count"] >= 1
    assert "--peers 4" in doc["command"]
    # The table reaches stdout, one row per run.
    assert impl in proc.stdout and "baseline" in proc.stdout


def test_unreachable_target_fails_with_one_line_error() -> None:
    port = _unused_udp_port()
    proc = _bench(
        "--target", f"127.0.0.1:{port}", "--peers", "2", "--duration", "1", "--no-progress",
        timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("p2pfast-bench: error:")
    assert "handshake" in lines[0]


def test_target_on_another_network_needs_its_network_id(tmp_path: Path) -> None:
    """``--target`` against a server that is not on the bench's default network ("bench"):
    refused without ``--network-id`` (the server says why, on one line), served with it."""
    out = tmp_path / "target.json"
    with ServerProcess("--network-id", "lab-7", "--no-echo", "-m", "16") as server:
        target = f"{server.addr[0]}:{server.addr[1]}"
        args = ("--target", target, "--peers", "2", "--duration", "0.3", "--window", "1",
                "--workload", "ping", "--no-progress")  # fmt: skip
        refused = _bench(*args, timeout=30)
        served = _bench(*args, "--network-id", "lab-7", "--json", str(out), timeout=30)
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("p2pfast-bench: error: handshake failed"), lines[0]
    assert "0/2 peers connected" in lines[0]

    assert served.returncode == 0, served.stderr
    doc = json.loads(out.read_text())
    assert doc["options"]["network_id"] == "lab-7"
    (run,) = doc["runs"]
    assert run["target"] is True and run["server"] == target
    assert run["handshakes"] == 2 and run["completions"] > 0


def test_empty_network_id_is_refused() -> None:
    proc = _bench("--network-id", "", "--peers", "1", "--no-progress", timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "non-empty network id" in proc.stderr


@pytest.mark.parametrize("workload", ["ping", "routed"])
def test_other_workloads_complete(workload: str) -> None:
    impl = "pure" if NO_EXTENSIONS else "compiled"
    proc = _bench(
        "--peers", "4", "--duration", "0.5", "--window", "2", "--impl", impl,
        "--workload", workload, "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert workload in proc.stdout


def test_coalesced_acks_run_reports_ack_fields(tmp_path: Path) -> None:
    impl = "pure" if NO_EXTENSIONS else "compiled"
    out = tmp_path / "coalesced.json"
    proc = _bench(
        "--peers", "4", "--duration", "1", "--window", "4", "--impl", impl,
        "--acks", "coalesced", "--json", str(out), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(out.read_text())
    assert doc["options"]["acks"] == "coalesced"
    (run,) = doc["runs"]
    assert run["kind"] == "p2pfast" and run["impl"] == impl
    assert run["workload"] == "data" and run["acks"] == "coalesced"
    assert run["completions"] > 0
    # Every completion came from some Ack datagram; how many each covered depends on load.
    assert run["ack_datagrams"] > 0
    assert run["msgs_per_ack"] is not None and run["msgs_per_ack"] > 0
    assert run["reacked_seqs"] is not None and run["reacked_seqs"] >= 0
    assert "data/coalesced" in proc.stdout and "msgs/ack" in proc.stdout


def test_acks_only_for_the_data_workload() -> None:
    proc = _bench(
        "--workload", "ping", "--acks", "coalesced", "--peers", "2", "--no-progress", timeout=30
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "--acks coalesced applies to the data workload only" in proc.stderr


def test_rounds_interleave_runs_and_report_median_ratios(tmp_path: Path) -> None:
    impl = "pure" if NO_EXTENSIONS else "compiled"
    out = tmp_path / "rounds.json"
    proc = _bench(
        "--peers", "2", "--duration", "0.3", "--window", "1", "--impl", impl, "--workload", "ping",
        "--baseline", "--rounds", "2", "--json", str(out), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert [(r["round"], r["kind"]) for r in doc["runs"]] == [
        (1, "p2pfast"),
        (1, "baseline"),
        (2, "p2pfast"),
        (2, "baseline"),
    ]
    per_round = [
        r["p2pfast_over_baseline"][impl]["server_cpu_us_per_msg"] for r in doc["ratios_per_round"]
    ]
    assert len(per_round) == 2 and all(x is not None and x > 0 for x in per_round)
    median = doc["ratios"]["p2pfast_over_baseline"][impl]["server_cpu_us_per_msg"]
    assert median == pytest.approx(sum(per_round) / 2, abs=0.002)  # median of two = their mean
    assert "median over 2 rounds" in proc.stdout and " #2 " in proc.stdout


def test_median_ratios_skips_missing_values() -> None:
    from p2pfast.bench import median_ratios

    rounds = [{"a": {"x": 1.0, "y": None}}, {"a": {"x": 3.0, "y": 2.0}}, {"a": {"x": 2.0}}]
    assert median_ratios(rounds) == {"a": {"x": 2.0, "y": 2.0}}
    assert median_ratios([{}]) == {}
