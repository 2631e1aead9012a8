"""``p2pfast-server``: run a node from the command line (flags > environment > config file).

Every mistake a person can make on the command line ends the same way: one line on stderr,
``p2pfast-server: error: ...``, exit status 2. Settings that work but probably not as meant
print one ``p2pfast-server: warning: ...`` line each. Ctrl-C while starting exits quietly
(status 130); once serving, SIGINT and SIGTERM disconnect every peer and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .addr import format_addr, split_host_port
from .config import Config, unknown_env_vars
from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .metrics import MetricsServer

PROG = "p2pfast-server"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_LEVEL_ENV = "P2PFAST_LOG_LEVEL"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Exit status of a program stopped by SIGINT (128 + 2), as shells report it.
EXIT_INTERRUPTED = 130


class _CLIError(click.ClickException):
    """One line on stderr, no traceback, exit 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        _error_line(self.format_message())


def _error_line(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    click.echo(f"{PROG}: error: {first}", err=True)


def _warning_line(message: str) -> None:
    click.echo(f"{PROG}: warning: {message}", err=True)


def version_text() -> str:
    """``p2pfast-server 0.1.0 (compiled extensions, Python 3.11.7)``."""
    import p2pfast

    version = getattr(p2pfast, "__version__", None)
    if version is None:  # pragma: no cover - the package defines it today
        from importlib.metadata import version as dist_version

        version = dist_version("p2pfast")
    kind = "compiled" if p2pfast.USE_EXTENSIONS else "pure-Python"
    python = ".".join(str(part) for part in sys.version_info[:3])
    return f"{PROG} {version} ({kind} extensions, Python {python})"


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit(0)


def _port_range(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        low, high = value.replace(",", "-").split("-")
        return (int(low), int(high))
    except ValueError:
        raise click.BadParameter(f"expected LOW-HIGH, e.g. 8081-8090, got {value!r}") from None


def normalize_address(key: str, text: str) -> str:
    """An ``ip:port`` the config accepts: a host name is resolved (blocking, at start-up, before
    the loop runs); a malformed address gets the hint of :func:`p2pfast.addr.split_host_port`
    (e.g. ``[::1]:9301`` for ``::1:9301``). Raises ConfigError naming ``key``."""
    try:
        host, port = split_host_port(text)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return text  # already an IP address
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{key}: cannot resolve host name {host!r}: {reason}") from None
    # Prefer IPv4 (the Rust protocol's usual family), as the Rust server binds it.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return format_addr((str(infos[0][4][0]), port))


def _normalized_env(env: Mapping[str, str]) -> dict[str, str]:
    out = dict(env)
    for key in ("listen_address", "metrics_address"):
        name = "P2PFAST_" + key.upper()
        if out.get(name):
            out[name] = normalize_address(name, out[name])
    return out


def _log_level(flag: str | None, env: Mapping[str, str]) -> str:
    if flag is not None:
        return flag
    value = env.get(LOG_LEVEL_ENV)
    if value is None or not value.strip():
        return "info"
    if value.strip().lower() not in LOG_LEVELS:
        raise ConfigError(
            f"{LOG_LEVEL_ENV}: invalid value {value!r} (expected one of {', '.join(LOG_LEVELS)})"
        )
    return value.strip().lower()


@click.command(
    name=PROG,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "-a",
    "--address",
    "listen_address",
    metavar="IP:PORT",
    help="Listen address [default: 127.0.0.1:8080].",
)
@click.option("-m", "--max-connections", type=int, help="Maximum handshaken peers [default: 100].")
@click.option(
    "-c",
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="JSON config file (the Rust server's config.json format).",
)
@click.option("--network-id", help="Network id peers must present [default: p2p_default].")
@click.option("--heartbeat-interval", type=float, help="Seconds between heartbeats [default: 30].")
@click.option(
    "--connection-timeout",
    type=float,
    help="Seconds of silence before eviction [default: 60].",
)
@click.option(
    "--enable-discovery/--disable-discovery",
    default=None,
    help="Probe the discovery port range and connect to learned peers [default: on].",
)
@click.option(
    "--discovery-port-range",
    callback=_port_range,
    metavar="LOW-HIGH",
    help="Ports probed on this host [default: 8081-8090].",
)
@click.option(
    "--echo/--no-echo",
    default=None,
    help="Echo plain Data back as the Rust server does [default: on].",
)
@click.option("--node-name", help="Name in our NodeInfo [default: p2p_node_<port>].")
@click.option("--node-id", help="Fixed node id (UUID) [default: random].")
@click.option(
    "--stats-interval",
    type=float,
    help="Seconds between stats log lines, 0 = off [default: 60].",
)
@click.option(
    "--metrics",
    "metrics_address",
    metavar="IP:PORT",
    help="Serve Prometheus metrics at http://IP:PORT/metrics [default: off].",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help=f"Log level; also {LOG_LEVEL_ENV} [default: info].",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Print the version and exit.",
)
def command(config_file: str | None, log_level: str | None, **flags: Any) -> None:
    """Run a p2pfast node: UDP handshake, heartbeat, discovery, routing and reliable delivery,
    wire-compatible with p2p_handshake_server. SIGINT/SIGTERM disconnect every peer and exit 0."""
    env = os.environ
    for note in unknown_env_vars(env):
        _warning_line(note)
    try:
        level = _log_level(log_level, env)
        for key in ("listen_address", "metrics_address"):
            if flags.get(key):
                flags[key] = normalize_address(key, flags[key])
        config = Config.load(config_file, env=_normalized_env(env), overrides=flags)
    except ConfigError as exc:
        raise _CLIError(str(exc)) from None
    for note in config.advisories():
        _warning_line(note)
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    from .server import BindError, run

    try:
        run(_serve(config))
    except (BindError, OSError) as exc:
        raise _CLIError(str(exc)) from None
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        raise SystemExit(EXIT_INTERRUPTED) from None


async def _serve(config: Config) -> None:
    from .server import P2PServer

    server = P2PServer(config, echo=config.echo, queue_data=False)
    metrics: MetricsServer | None = None
    if config.metrics_address is not None:  # bound first: a busy port stops us before we join
        from .metrics import start_metrics_server

        try:
            metrics = start_metrics_server(server, config.metrics_address)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise OSError(f"cannot serve metrics on {config.metrics_address}: {reason}") from None
    try:
        await server.start()
    except BaseException:
        if metrics is not None:
            metrics.close()
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    restore_signals = stop_on_signals(loop, stop.set)
    node = server.node
    assert node is not None
    try:
        if metrics is not None:
            click.echo(f"{PROG} metrics at {metrics.url}", err=True)
        click.echo(
            f"{PROG} listening on {node.local_addr_str} node_id={node.node_id} "
            f"network_id={config.network_id} extensions={'compiled' if _compiled() else 'pure'}",
            err=True,
        )
        await stop.wait()
    finally:
        if metrics is not None:
            metrics.close()
        peers = len(node.peers_by_id)
        try:
            await server.stop()
        finally:
            restore_signals()
    logging.getLogger("p2pfast").info("stopped: sent Disconnect to %d peers", peers)


#: The signals that stop a serving node (disconnect every peer, exit 0).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(
    loop: asyncio.AbstractEventLoop, stop: Callable[[], None]
) -> Callable[[], None]:
    """Have ``stop`` called in ``loop``'s thread on SIGINT and SIGTERM; return what undoes it.

    The loop watches the signals itself where it can (uvloop and asyncio's loops on Unix;
    those handlers go with the loop). Where ``add_signal_handler`` raises NotImplementedError
    (the event loops of Windows) a process-wide ``signal.signal`` handler, which Python runs in
    the main thread between bytecodes, hands ``stop`` to the loop with
    ``call_soon_threadsafe`` (which also wakes a loop blocked waiting for I/O); the returned
    function puts the previous handlers back."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to stop
            loop.call_soon_threadsafe(stop)

    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, stop)
        except NotImplementedError:
            previous[sig] = signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            # None: a handler not set from Python, which cannot be put back: the default then
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        previous.clear()

    return restore


def _compiled() -> bool:
    from . import USE_EXTENSIONS

    return USE_EXTENSIONS


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``p2pfast-server`` and ``python -m p2pfast``: click's usage errors become
    one line, and Ctrl-C exits quietly."""
    try:
        status = command.main(
            args=list(argv) if argv is not None else None,
            prog_name=PROG,
            standalone_mode=False,
        )
    except click.ClickException as exc:  # usage errors, bad values, ours
        _error_line(exc.format_message())
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
