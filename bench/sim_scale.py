"""The scale study behind docs/scale.md: run ``p2pfast-sim`` over a matrix of network sizes,
loss, churn and NAT mixes, one process per run (so each run's peak RSS is its own), each
bounded by a timeout, and summarise the JSON reports as a Markdown table.

    python bench/sim_scale.py run --out /tmp/scale [--sizes 100,1000,10000] [--timeout 1800]
    python bench/sim_scale.py table --out /tmp/scale > table.md
    python bench/sim_scale.py plot --out /tmp/scale --png docs/scale.png   # needs matplotlib

matplotlib is not a dependency of p2pfast: install it ad hoc for the plot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: (label, extra flags). Churn 0.1 = 10 % of nodes restarting per hour.
VARIANTS: list[tuple[str, list[str]]] = [
    ("base", ["--loss", "0", "--churn", "0"]),
    ("loss 5%", ["--loss", "0.05", "--churn", "0"]),
    ("churn 10%/h", ["--loss", "0", "--churn", "0.1"]),
    ("NAT mix", ["--loss", "0", "--churn", "0", "--nat", "realistic"]),
    ("loss+churn+NAT", ["--loss", "0.05", "--churn", "0.1", "--nat", "realistic"]),
]
#: Virtual seconds per size (10,000 nodes: a shorter run, see docs/scale.md).
DURATION = {100: 600, 1000: 600, 10000: 60}
#: Variants run at 10,000 nodes (each takes minutes).
BIG_VARIANTS = ("base", "loss+churn+NAT")


def _name(nodes: int, label: str) -> str:
    for old, new in ((" ", "_"), ("%", "pct"), ("/", "_"), ("+", "_")):
        label = label.replace(old, new)
    return f"n{nodes}_{label}"


def run(out: Path, sizes: list[int], timeout: float, seed: int, only: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for nodes in sizes:
        for label, flags in VARIANTS:
            if (nodes >= 10000 and label not in BIG_VARIANTS) or (only and label not in only):
                continue
            name = _name(nodes, label)
            target = out / f"{name}.json"
            if target.exists():
                continue
            cmd = [sys.executable, "-m", "p2pfast.sim", "--nodes", str(nodes)]
            cmd += ["--duration", str(DURATION.get(nodes, 600)), "--seed", str(seed), *flags]
            cmd += ["--profile", "--quiet", "--json", str(target)]
            started = time.monotonic()
            try:
                proc = subprocess.run(
                    cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
                )
                status = f"exit {proc.returncode}"
            except subprocess.TimeoutExpired:
                status = f"timeout after {timeout:.0f}s"
            print(f"{name}: {status} in {time.monotonic() - started:.0f}s", flush=True)


def _load(out: Path) -> list[tuple[int, str, dict[str, Any]]]:
    rows = []
    sizes = sorted({int(p.name.split("_", 1)[0][1:]) for p in out.glob("n*_*.json")})
    for nodes in sizes:
        for label, _flags in VARIANTS:
            path = out / f"{_name(nodes, label)}.json"
            if path.exists():
                rows.append((nodes, label, json.loads(path.read_text())))
    return rows


#: Table columns, in order.
COLUMNS = (
    "nodes",
    "network",
    "virtual s",
    "wall s",
    "converged at (s)",
    "reachable pairs at end",
    "datagrams / node / min",
    "KiB / node / min",
    "peak RSS / node (KiB)",
    "peers per node at end (median / max)",
    "routes per node at end (median / max)",
    "delivered / attempted",
    "routed success",
    "other invariants broken",
    "sim µs / dgram",
    "engine µs / dgram",
)


def _median_max(r: dict[str, Any], key: str) -> str:
    final = r.get("state_final", {}).get(key)
    median = f"{final['p50']:.0f}" if final else "-"
    return f"{median} / {r['state_maxima'][key]}"


def _broken(r: dict[str, Any]) -> str:
    """Invariants other than convergence that failed, with their counts."""
    m = r["messages"]
    out = []
    for name, verdict in r["invariants"].items():
        if verdict["held"] or name == "convergence":
            continue
        if name == "exactly_once":
            out.append(f"exactly-once ({m['lost']} lost, {m['duplicates']} dup)")
        else:
            count = verdict["detail"].split(" ", 1)[0]
            out.append(f"{name.replace('_', ' ')} ({count})")
    return "; ".join(out) or "none"


def _row(nodes: int, label: str, r: dict[str, Any]) -> list[str]:
    m = r["messages"]
    wall = r["wall"]
    attempted = m["sent"] + m["no_route"] + m["window_full"]
    conv = r["convergence_seconds"]
    rss_node = max(0.0, (wall["rss_peak_mib"] - 20.0) * 1024 / nodes)
    routed = m["routed_success"]
    dgrams = r["datagrams"]
    return [
        f"{nodes:,}",
        label,
        f"{r['duration']:g}",
        f"{wall['seconds']:.0f}",
        f"{conv:.0f}" if conv is not None else "never",
        f"{r['reachable_pairs_final']:.3g}",
        f"{dgrams['per_node_per_minute']:.0f}",
        f"{dgrams['bytes_per_node_per_minute'] / 1024:.0f}",
        f"{rss_node:.0f}",
        _median_max(r, "peers"),
        _median_max(r, "routes"),
        f"{m['delivered'] / attempted if attempted else 0:.3f}",
        f"{routed:.3f}" if routed is not None else "-",
        _broken(r),
        f"{wall.get('simulator_us_per_datagram', 0):.1f}",
        f"{wall.get('engine_us_per_datagram', 0):.1f}",
    ]


def table(out: Path) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for nodes, label, r in _load(out):
        lines.append("| " + " | ".join(_row(nodes, label, r)) + " |")
    return "\n".join(lines)


def plot(out: Path, png: Path) -> None:
    import matplotlib  # optional, installed ad hoc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _load(out)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for label, _flags in VARIANTS:
        pts = [(n, r) for n, lab, r in rows if lab == label]
        if not pts:
            continue
        xs = [n for n, _ in pts]
        axes[0].plot(xs, [r["reachable_pairs_final"] for _, r in pts], marker="o", label=label)
        axes[1].plot(
            xs,
            [r["datagrams"]["bytes_per_node_per_minute"] / 1024 for _, r in pts],
            marker="o",
            label=label,
        )
        axes[2].plot(
            xs,
            [
                r["messages"]["delivered"]
                / max(1, r["messages"]["sent"] + r["messages"]["no_route"])
                for _, r in pts
            ],
            marker="o",
            label=label,
        )
    titles = (
        "pairs of live nodes that can reach each other",
        "KiB sent per node per minute",
        "messages delivered / attempted",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("nodes")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "p2pfast under p2pfast-sim, seed 1, 600 virtual s (10,000 nodes: 60 s), max_connections 100"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["run", "table", "plot"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/p2pfast-scale"))
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variants", default="", help="comma-separated labels (default: all)")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "scale.png")
    args = parser.parse_args()
    if args.command == "run":
        only = [v for v in args.variants.split(",") if v]
        run(args.out, [int(n) for n in args.sizes.split(",")], args.timeout, args.seed, only)
    elif args.command == "table":
        print(table(args.out))
    else:
        plot(args.out, args.png)


if __name__ == "__main__":
    main()
