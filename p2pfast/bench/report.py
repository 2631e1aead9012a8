"""The report of ``p2pfast-bench``: the table, the ratios between runs, and the context a
JSON result needs to be read later (the command line, the machine, the commit measured)."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
from typing import Any


def compute_ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """compiled/pure and p2pfast/baseline ratios between the runs of one round."""
    by_label = {r["label"]: r for r in runs}
    ratios: dict[str, Any] = {}
    c, p, base = by_label.get("compiled"), by_label.get("pure"), by_label.get("baseline")

    def div(x: Any, y: Any) -> float | None:
        return round(x / y, 3) if x is not None and y else None

    if c and p:
        ratios["compiled_over_pure"] = {
            "msgs_per_s": div(c["msgs_per_s"], p["msgs_per_s"]),
            "server_cpu_us_per_msg": div(
                c.get("server_cpu_us_per_msg"), p.get("server_cpu_us_per_msg")
            ),
            "handshakes_per_s": div(c.get("handshakes_per_s"), p.get("handshakes_per_s")),
        }
    if base:
        ratios["p2pfast_over_baseline"] = {
            label: {
                "server_cpu_us_per_msg": div(
                    r.get("server_cpu_us_per_msg"), base.get("server_cpu_us_per_msg")
                ),
                "msgs_per_s": div(r["msgs_per_s"], base["msgs_per_s"]),
            }
            for label, r in by_label.items()
            if r["kind"] == "p2pfast"
        }
    return ratios


def median_ratios(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each ratio over rounds (each round's ratios are paired: same minute)."""

    def merge(values: list[Any]) -> Any:
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            keys = dict.fromkeys(k for v in present for k in v)
            return {k: merge([v.get(k) for v in present]) for k in keys}
        return round(statistics.median(present), 3) if present else None

    medians: dict[str, Any] = merge(per_round)
    return medians


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "n/a"
    return format(value, spec)


def format_table(runs: list[dict[str, Any]]) -> str:
    """One row per run, columns aligned (the text printed on stdout)."""
    rounds = len({r.get("round", 1) for r in runs}) > 1
    headers = [
        "impl", "workload", "peers", "hs/s", "msgs/s", "p50 ms", "p99 ms",
        "srv us/msg", "srv CPU", "srv peak MB", "RSS@hs MB", "msgs/ack", "retx", "lost",
    ]  # fmt: skip
    rows = []
    for r in runs:
        lat = r.get("latency_ms") or {}
        impl = r["label"]
        if r["kind"] == "p2pfast" and r.get("extensions") and r["extensions"] != r["impl"]:
            impl += f"({r['extensions']}!)"
        if rounds:
            impl += f" #{r['round']}"
        rows.append(
            [
                impl,
                r["workload"]
                if r.get("acks") in (None, "plain")
                else f"{r['workload']}/{r['acks']}",
                str(r["peers"]),
                _fmt(r.get("handshakes_per_s")),
                _fmt(r.get("msgs_per_s")),
                _fmt(lat.get("p50"), ".2f"),
                _fmt(lat.get("p99"), ".2f"),
                _fmt(r.get("server_cpu_us_per_msg"), ".1f"),
                _fmt(r.get("server_cpu_util"), ".2f"),
                _fmt(r.get("server_peak_rss_mb"), ".1f"),
                _fmt(r.get("server_rss_after_handshake_mb"), ".1f"),
                _fmt(r.get("msgs_per_ack"), ".2f"),
                str(r.get("retransmits", "n/a")),
                str(r.get("lost", "n/a")),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.rjust(w) if i > 1 else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                c.rjust(w) if i > 1 else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def format_ratios(ratios: dict[str, Any], rounds: int = 1) -> str:
    """The ratios as the lines printed under the table ("" when there are none)."""
    lines = (
        [f"ratios: median over {rounds} rounds, each taken within its round"] if rounds > 1 else []
    )
    cp = ratios.get("compiled_over_pure")
    if cp:
        lines.append(
            f"compiled/pure: msgs/s x{_fmt(cp['msgs_per_s'], '.2f')}, "
            f"server CPU per message x{_fmt(cp['server_cpu_us_per_msg'], '.2f')}, "
            f"handshakes/s x{_fmt(cp['handshakes_per_s'], '.2f')}"
        )
    for label, r in (ratios.get("p2pfast_over_baseline") or {}).items():
        lines.append(
            f"p2pfast({label})/baseline: "
            f"server CPU per message x{_fmt(r['server_cpu_us_per_msg'], '.2f')}, "
            f"msgs/s x{_fmt(r['msgs_per_s'], '.2f')}"
        )
    return "\n".join(lines)


def command_line() -> str:
    """The command as typed: ``python -m p2pfast.bench ...`` or ``p2pfast-bench ...``."""
    argv = list(sys.argv) or ["p2pfast-bench"]
    if argv[0].endswith(("__main__.py", "bench.py", "-m")):
        head = [os.path.basename(sys.executable), "-m", "p2pfast.bench"]
    else:
        head = [os.path.basename(argv[0])]
    return shlex.join(head + argv[1:])


def machine_info() -> dict[str, Any]:
    """The machine, the Python, uvloop's version and the git commit (in a checkout)."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }
    try:
        from importlib.metadata import version

        info["uvloop"] = version("uvloop")
    except Exception:  # pragma: no cover
        pass
    try:  # which code was measured (read-only git query; absent outside a checkout)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
        if head.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5, check=False,
            )  # fmt: skip
            info["git"] = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info
