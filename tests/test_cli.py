"""``p2pfast-server`` as a person meets it: one-line errors, warnings for settings that clash or
variables it does not read, log levels, ``--version``, ``python -m p2pfast``, Ctrl-C.

Every test runs the real command in a subprocess (``python -m p2pfast``), on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import p2pfast
from p2pfast.config import Config, unknown_env_vars
from p2pfast.errors import ConfigError
from p2pfast.protocol import MessageType as T

from .helpers import envelope, handshake
from .netutil import SeedClient, ServerProcess, needs_posix_signals

ERROR = re.compile(r"^p2pfast-server: error: \S.*$")


def run_module(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("P2PFAST_") or k.endswith("EXTENSIONS")
    }
    return subprocess.run(
        [sys.executable, "-m", "p2pfast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line ``p2pfast-server: error: ...``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert ERROR.match(lines[0]), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["-m", "abc"], ["--max-connections", "'abc' is not a valid integer"]),
        (["-m"], ["-m", "requires an argument"]),
        (["-c", str(Path(__file__).parent)], ["--config", "is a directory"]),  # any platform
        (["--log-level", "verbose"], ["--log-level", "'verbose'"]),
        (["--no-such-option"], ["No such option", "--no-such-option"]),
        (["-x"], ["No such option", "-x"]),
        (["--heartbeat-interval", "often"], ["--heartbeat-interval", "'often'"]),
        (["--discovery-port-range", "9000"], ["--discovery-port-range", "LOW-HIGH"]),
        (["--echo=yes"], ["--echo"]),
        (["extra-argument"], ["unexpected extra argument"]),
        (["-m", "0"], ["max_connections"]),
        (["--node-id", "nope"], ["node_id", "not a UUID"]),
        (["-a", "::1:9301"], ["listen_address", "[::1]:9301"]),
        (["-a", "[::1]9301"], ["listen_address"]),
        (["-a", "127.0.0.1"], ["listen_address", "ip:port"]),
        (["-a", "127.0.0.1:99999"], ["listen_address", "port"]),
        (["--metrics", "::1:9100"], ["metrics_address", "[::1]:9100"]),
        (["--metrics", "nowhere"], ["metrics_address"]),
        (
            ["--heartbeat-interval", "30", "--connection-timeout", "10"],
            ["connection_timeout", "heartbeat_interval"],
        ),
        (
            ["--heartbeat-interval", "5", "--connection-timeout", "5"],
            ["connection_timeout", "must exceed"],
        ),
    ],
)
def test_every_command_line_mistake_is_one_line_and_exit_2(
    args: list[str], fragments: list[str]
) -> None:
    line = assert_one_line_error(run_module(*args), *fragments)
    assert "Usage:" not in line and "Try " not in line


def test_click_errors_are_not_shown_in_the_three_line_usage_form() -> None:
    result = run_module("-m", "abc")
    assert "Usage:" not in result.stderr and "--help" not in result.stderr


def test_environment_mistakes_are_one_line() -> None:
    assert_one_line_error(
        run_module(env={"P2PFAST_LOG_LEVEL": "verbose"}), "P2PFAST_LOG_LEVEL", "'verbose'"
    )
    assert_one_line_error(
        run_module(env={"P2PFAST_MAX_CONNECTIONS": "many"}), "P2PFAST_MAX_CONNECTIONS"
    )
    assert_one_line_error(run_module(env={"P2PFAST_LISTEN_ADDRESS": "::1:9301"}), "[::1]:9301")


def test_config_file_value_that_clashes_is_refused(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"heartbeat_interval": 60, "connection_timeout": 30}')
    assert_one_line_error(
        run_module("-c", str(path)), "connection_timeout (30s) must exceed heartbeat_interval (60s)"
    )


def test_config_refuses_a_timeout_not_above_the_heartbeat() -> None:
    with pytest.raises(ConfigError, match="must exceed heartbeat_interval"):
        Config(heartbeat_interval=10, connection_timeout=10)
    Config(heartbeat_interval=10, connection_timeout=10.5)  # allowed, with an advisory


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"heartbeat_interval": 10, "connection_timeout": 15}, "under twice heartbeat_interval"),
        ({"rto_initial": 0.1, "rto_min": 0.2}, "rto_initial (0.1s) is outside"),
        ({"rto_initial": 90.0, "rto_max": 60.0}, "60s is used"),
        ({"gap_delay": 2.0, "rto_initial": 1.0}, "gap_delay (2s) is not below rto_initial"),
    ],
)
def test_config_advisories_name_both_settings(settings: dict[str, float], fragment: str) -> None:
    notes = Config(**settings).advisories()
    assert len(notes) == 1 and fragment in notes[0], notes
    assert "\n" not in notes[0]


def test_default_config_has_no_advisories() -> None:
    assert Config().advisories() == []


def test_unknown_environment_variables_are_named_with_a_guess() -> None:
    notes = unknown_env_vars(
        {
            "P2PFAST_MAX_CONECTIONS": "5",
            "P2PFAST_ZZZ": "1",
            "P2PFAST_NETWORK_ID": "x",
            "P2PFAST_NO_EXTENSIONS": "1",
            "P2PFAST_LOG_LEVEL": "debug",
            "PATH": "/bin",
        }
    )
    assert notes == [
        "unknown environment variable P2PFAST_MAX_CONECTIONS is ignored "
        "(did you mean P2PFAST_MAX_CONNECTIONS?)",
        "unknown environment variable P2PFAST_ZZZ is ignored",
    ]


def test_server_warns_once_per_unknown_variable_and_clashing_setting_then_runs() -> None:
    env = {"P2PFAST_HEARTBEAT_INTERVL": "1"}
    with ServerProcess("--heartbeat-interval", "10", "--connection-timeout", "15", env=env) as proc:
        head = "".join(proc.stderr_lines)
        assert proc.proc.poll() is None
    warnings = [line for line in head.splitlines() if line.startswith("p2pfast-server: warning: ")]
    assert len(warnings) == 2, head
    assert (
        "P2PFAST_HEARTBEAT_INTERVL is ignored (did you mean P2PFAST_HEARTBEAT_INTERVAL?)"
        in warnings[0]
    )
    assert "under twice heartbeat_interval" in warnings[1]


def test_version_flag() -> None:
    result = run_module("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(f"p2pfast-server {p2pfast.__version__} (")
    kind = "compiled" if p2pfast.USE_EXTENSIONS else "pure-Python"
    assert f"({kind} extensions, Python " in result.stdout
    assert result.stderr == ""


def test_help_exits_zero_and_lists_the_new_options() -> None:
    result = run_module("--help")
    assert result.returncode == 0
    for option in ("--metrics", "--version", "--log-level", "P2PFAST_LOG_LEVEL"):
        assert option in result.stdout


@needs_posix_signals
def test_python_dash_m_p2pfast_runs_the_server() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "p2pfast",
            "-a",
            "127.0.0.1:0",
            "--disable-discovery",
            "--network-id",
            "test",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        match = None
        deadline = time.monotonic() + 20
        while match is None and time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                break
            match = re.search(r"listening on 127\.0\.0\.1:(\d+) node_id=(\S+)", line)
        assert match, "no ready line"
        client = SeedClient(("127.0.0.1", int(match.group(1))))
        try:
            data, _, _ = handshake("m", network_id="test")
            client.send(data)
            response = client.recv_type(T.HandshakeResponse)
            assert response.payload["node_info"]["id"] == match.group(2)
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()  # type: ignore[union-attr]


def test_host_name_listen_address_is_resolved() -> None:
    with ServerProcess("-a", "localhost:0") as proc:
        assert proc.addr[0] in ("127.0.0.1", "::1")


def test_occupied_metrics_port_is_one_line() -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        result = run_module(
            "-a", "127.0.0.1:0", "--disable-discovery", "--metrics", f"127.0.0.1:{port}"
        )
        assert_one_line_error(
            result, "cannot serve metrics", f"127.0.0.1:{port}", "address already in use"
        )
    finally:
        busy.close()


# -- logging ---------------------------------------------------------------------------------


def _rest_of_stderr(proc: ServerProcess) -> str:
    """Everything the server wrote to stderr, once it has stopped (SIGTERM)."""
    assert proc.terminate() == 0
    return "".join(proc.stderr_lines) + proc.proc.stderr.read()  # type: ignore[union-attr]


def _busy_session(proc: ServerProcess, datagrams: int) -> None:
    """A handshake, ``datagrams`` Pings and Data, a refused handshake and some junk."""
    client, stranger = SeedClient(proc.addr), SeedClient(proc.addr)
    try:
        data, _, _ = handshake("chatty", network_id="test")
        client.send(data)
        client.recv_type(T.HandshakeResponse)
        for i in range(datagrams // 2):
            client.send(envelope("Ping"))
            client.send(envelope("Data", {"n": i}))
            if i % 50 == 0:
                client.drain(0.01)
        client.drain(0.3)
        wrong, _, _ = handshake("intruder", network_id="other")
        stranger.send(wrong)
        stranger.recv_type(T.Error)
        for _ in range(20):
            stranger.send(b"not json")
        time.sleep(0.2)
    finally:
        client.close()
        stranger.close()


@needs_posix_signals
def test_info_log_has_nothing_per_datagram() -> None:
    with ServerProcess("--network-id", "test", "--stats-interval", "0") as proc:
        _busy_session(proc, 400)
        text = _rest_of_stderr(proc)
    after_start = text.split("listening on", 2)[-1].splitlines()[1:]
    # connected, one refusal, one rate-limited junk line, stopped: a handful, not 400+.
    assert 2 <= len(after_start) <= 8, text
    assert any("connected from" in line for line in after_start)
    assert not any(" DEBUG " in line for line in text.splitlines())


@needs_posix_signals
def test_log_level_from_environment_works_like_the_flag() -> None:
    with ServerProcess("--network-id", "test", env={"P2PFAST_LOG_LEVEL": "warning"}) as proc:
        _busy_session(proc, 10)
        quiet = _rest_of_stderr(proc)
    assert " INFO " not in quiet and "connected from" not in quiet
    assert "handshake from" in quiet  # the refusal is a warning
    with ServerProcess(
        "--network-id", "test", "--log-level", "info", env={"P2PFAST_LOG_LEVEL": "error"}
    ) as proc:
        _busy_session(proc, 10)
        flag_wins = _rest_of_stderr(proc)
    assert "connected from" in flag_wins


@needs_posix_signals
def test_debug_log_shows_per_peer_events_present_in_the_engine() -> None:
    """What the engine logs today at debug level and above, per peer: the handshake result,
    refusals, evictions (at info/warning, so also visible at debug)."""
    with ServerProcess(
        "--network-id",
        "test",
        "--log-level",
        "debug",
        "--heartbeat-interval",
        "0.3",
        "--connection-timeout",
        "0.9",
    ) as proc:
        _busy_session(proc, 10)
        time.sleep(1.5)  # the silent peer is evicted
        text = _rest_of_stderr(proc)
    assert re.search(r"peer \S+ \(chatty\) connected from 127\.0\.0\.1:\d+", text), text
    assert "handshake from" in text and "refused" in text
    assert re.search(r"peer \S+ at 127\.0\.0\.1:\d+ removed: timeout", text), text


def _discovery_run(level: str, silent_port: int) -> str:
    """A server whose discovery probes one silent port: it starts handshakes that never finish."""
    with ServerProcess(
        "--enable-discovery",
        "--discovery-port-range",
        f"{silent_port}-{silent_port}",
        "--log-level",
        level,
        "--stats-interval",
        "0",
    ) as proc:
        time.sleep(2.5)  # request, retry after 1 s, retry after 2 s
        return _rest_of_stderr(proc)


@needs_posix_signals
def test_debug_log_shows_outgoing_handshake_steps_and_info_does_not() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    try:
        debug = _discovery_run("debug", port)
        info = _discovery_run("info", port)
    finally:
        silent.close()
    target = f"handshake with 127.0.0.1:{port}"
    steps = [line for line in debug.splitlines() if " DEBUG p2pfast: " in line and target in line]
    assert any("request sent" in line for line in steps), debug
    assert any("attempt 2" in line for line in steps), debug
    assert target not in info and " DEBUG " not in info


def test_debug_log_shows_retransmissions_and_refusals(caplog: pytest.LogCaptureFixture) -> None:
    """A library node sends reliable Data to a p2pfast peer that never acknowledges it."""
    import asyncio

    from p2pfast import Config, P2PServer

    from .netutil import on_uvloop

    config = Config(
        listen_address="127.0.0.1:0",
        enable_discovery=False,
        network_id="test",
        rto_initial=0.2,
        rto_min=0.2,
        max_retries=2,
    )

    @on_uvloop
    async def scenario() -> None:
        async with P2PServer(config) as alice:
            mute = SeedClient(alice.local_address[:2])
            try:
                caps = ["handshake", "discovery", "data_transfer", "reliable", "p2pfast"]
                data, info, _ = handshake("mute", network_id="test", caps=caps, port=mute.port)
                mute.send(data)  # the blocking client waits in a thread, the node on the loop
                response = await asyncio.to_thread(mute.recv_type, T.HandshakeResponse)
                mute.prove(response)
                await asyncio.sleep(0.1)
                mute.send(envelope("P2PConnect", {"peer_id": info["id"]}))  # refused: itself
                with pytest.raises(Exception):  # noqa: B017 (SendError; its API is changing)
                    await alice.send(info["id"], {"n": 1}, timeout=10)
            finally:
                mute.close()

    with caplog.at_level(logging.DEBUG, logger="p2pfast"):
        scenario()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("retransmit" in line.lower() for line in debug), debug
    assert any("refused" in line.lower() or "refuse" in line.lower() for line in debug), debug


# -- Ctrl-C ------------------------------------------------------------------------------------


@needs_posix_signals
def test_ctrl_c_during_start_up_exits_quietly() -> None:
    """SIGINT as soon as the command runs (its first output is the warning about an unknown
    variable), i.e. while it loads its config, imports the server and binds."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("P2PFAST_") or k.endswith("EXTENSIONS")
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pfast", "-a", "127.0.0.1:0", "--disable-discovery"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "P2PFAST_UNKNOWN_SETTING": "1"},
    )
    try:
        first = proc.stderr.readline()  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert first.startswith("p2pfast-server: warning: unknown environment variable"), first
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode in (0, 130), (proc.returncode, err)


@needs_posix_signals
def test_ctrl_c_while_serving_disconnects_and_exits_zero() -> None:
    with ServerProcess("--network-id", "test") as proc:
        client = SeedClient(proc.addr)
        try:
            data, _, _ = handshake("c", network_id="test")
            client.send(data)
            client.prove(client.recv_type(T.HandshakeResponse))
            time.sleep(0.1)
            proc.proc.send_signal(signal.SIGINT)
            assert proc.proc.wait(10) == 0
            assert client.recv_type(T.Disconnect).payload == {"reason": "shutdown"}
        finally:
            client.close()
        err = proc.proc.stderr.read()  # type: ignore[union-attr]
    assert "Traceback" not in err
    assert "stopped: sent Disconnect to 1 peers" in err


@pytest.mark.parametrize(
    "content, fragment",
    [
        (
            '{"listen_address": "localhost:9300"}',
            "'localhost' is a host name, an IP address is needed here",
        ),
        ('{"listen_address": "::1:9301"}', "[::1]:9301"),
        ('{"metrics_address": "fe80::1:9100"}', "[fe80::1]:9100"),
    ],
)
def test_address_mistakes_in_a_config_file_say_what_to_write(
    tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    assert_one_line_error(run_module("-c", str(path)), fragment)


@needs_posix_signals
def test_host_name_in_the_environment_is_resolved() -> None:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("P2PFAST_") or k.endswith("EXTENSIONS")
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pfast", "--disable-discovery"],
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, "P2PFAST_LISTEN_ADDRESS": "localhost:0"},
    )
    try:
        match = None
        deadline = time.monotonic() + 20
        while match is None and time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                break
            match = re.search(r"listening on (\S+):(\d+) node_id=", line)
        assert match, "no ready line"
        assert match.group(1) in ("127.0.0.1", "[::1]")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()  # type: ignore[union-attr]
