"""`clara-mock serve` as a process: its address, its stop, and a port that is taken."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from _cli_helpers import CLI, PROCESS_WAIT, Served, cli_process, read_until, stop_process


def test_serve_prints_its_address_binds_loopback_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*CLI, "serve", "--port", "0", "--workspace", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = read_until(process, "listening on", PROCESS_WAIT)
        assert line.startswith("clara-mock listening on 127.0.0.1:")
        assert int(line.rsplit(":", 1)[1]) > 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(PROCESS_WAIT) == 0
    finally:
        stop_process(process)


def assert_one_line_naming_the_port(done: subprocess.CompletedProcess[str], port: int) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("clara-mock serve: error: port ")
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0]


def test_a_second_serve_on_the_same_port_is_refused(served: Served) -> None:
    port = int(served.address.rsplit(":", 1)[1])

    second = cli_process("serve", "--port", str(port), "--operators-dir", str(served.folder))

    assert_one_line_naming_the_port(second, port)
    assert served.process.poll() is None  # the first one is unharmed


def test_a_port_another_program_listens_on_is_refused() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]

        done = cli_process("serve", "--port", str(port))

    assert_one_line_naming_the_port(done, port)


def test_clara_mock_address_sets_where_serve_listens_and_clients_dial(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a free port, to name in the variable
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CLARA_MOCK_ADDRESS": address}
    process = subprocess.Popen(
        [*CLI, "serve", "--operators-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert read_until(process, "listening on", PROCESS_WAIT).strip().endswith(address)
        listed = cli_process("list", "pipelines", env=env)
        assert (listed.returncode, listed.stdout) == (0, "no pipelines\n"), listed.stderr
    finally:
        stop_process(process)

    bad = cli_process("list", "jobs", env={**os.environ, "CLARA_MOCK_ADDRESS": "nowhere"})
    assert bad.returncode == 2
    assert "$CLARA_MOCK_ADDRESS: 'nowhere' is not HOST:PORT" in bad.stderr
