"""``p2pfast-server``: run a node from the command line (flags > environment > config file)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import click

from .config import Config
from .errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class _CLIError(click.ClickException):
    """One line on stderr, no traceback, non-zero exit."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"p2pfast-server: error: {self.format_message()}", err=True)


def _port_range(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        low, high = value.replace(",", "-").split("-")
        return (int(low), int(high))
    except ValueError:
        raise click.BadParameter("expected LOW-HIGH, e.g. 8081-8090") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-a", "--address", "listen_address", metavar="IP:PORT", help="Listen address [default: 127.0.0.1:8080].")
@click.option("-m", "--max-connections", type=int, help="Maximum handshaken peers [default: 100].")
@click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False), help="JSON config file (the seed's format).")
@click.option("--network-id", help="Network id peers must present [default: p2p_default].")
@click.option("--heartbeat-interval", type=float, help="Seconds between heartbeats [default: 30].")
@click.option("--connection-timeout", type=float, help="Seconds of silence before eviction [default: 60].")
@click.option("--enable-discovery/--disable-discovery", default=None, help="Probe the discovery port range and connect to learned peers [default: on].")
@click.option("--discovery-port-range", callback=_port_range, metavar="LOW-HIGH", help="Ports probed on this host [default: 8081-8090].")
@click.option("--echo/--no-echo", default=None, help="Echo plain Data back as the Rust server does [default: on].")
@click.option("--node-name", help="Name in our NodeInfo [default: p2p_node_<port>].")
@click.option("--node-id", help="Fixed node id (UUID) [default: random].")
@click.option("--stats-interval", type=float, help="Seconds between stats log lines, 0 = off [default: 60].")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info", help="Log level.")
def main(config_file: str | None, log_level: str, **flags: Any) -> None:
    """Run a p2pfast node: UDP handshake, heartbeat, discovery, routing and reliable delivery,
    wire-compatible with p2p_handshake_server. SIGINT/SIGTERM disconnect every peer and exit 0."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = Config.load(config_file, overrides=flags)
    except ConfigError as exc:
        raise _CLIError(str(exc)) from None
    from .server import BindError, run

    try:
        run(_serve(config))
    except BindError as exc:
        raise _CLIError(str(exc)) from None


async def _serve(config: Config) -> None:
    from .server import P2PServer

    server = P2PServer(config, echo=config.echo, queue_data=False)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = server.node
    assert node is not None
    click.echo(
        f"p2pfast-server listening on {node.local_addr_str} node_id={node.node_id} "
        f"network_id={config.network_id} extensions={'compiled' if _compiled() else 'pure'}",
        err=True,
    )
    await stop.wait()
    peers = len(node.peers_by_id)
    await server.stop()
    logging.getLogger("p2pfast").info("stopped: sent Disconnect to %d peers", peers)


def _compiled() -> bool:
    from . import USE_EXTENSIONS

    return USE_EXTENSIONS


if __name__ == "__main__":  # pragma: no cover
    main()
