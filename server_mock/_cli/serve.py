"""``clara-mock serve``: serve the stage API and the Clara Platform API until interrupted.

It listens on ``--host``/``--port``, else on ``$CLARA_MOCK_ADDRESS`` (where the client
commands connect by default), else on ``127.0.0.1:50051``. A port another process listens on
is refused with one line naming it: gRPC's ``SO_REUSEPORT`` is off (see
:mod:`server_mock._platform`), and the port is tried first with a plain socket, whose error is
clearer than gRPC's.

Stopping it (SIGTERM, the documented way, or SIGINT) never throws work away:

* with ``--state`` it stops serving and leaves its operators running: their launch records
  are in the state file, and the next ``serve --state`` adopts them (see
  :meth:`~server_mock._runner.LocalProcessLauncher.resume`); their drivers reconnect to it.
* without (in memory, where nothing would survive) it cancels every running job first, so
  each driver hears the cancel, runs its cleanup and reports; it waits up to
  :data:`STOP_GRACE` seconds for the operators to exit, kills those still running, and exits.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import threading
from typing import TextIO

from server_mock._cli.capacity_flags import capacity_from_args
from server_mock._cli.common import EXIT_OK, UsageError, is_loopback
from server_mock._cli.connection import ADDRESS_VARIABLE
from server_mock._cli.runner_args import launcher_from_args
from server_mock._cli.runner_flags import service_data_folder
from server_mock._cli.tls_args import TlsUsageError, operator_address, serve_tls_from_args
from server_mock._jobs import JobState
from server_mock._platform import MockPlatform
from server_mock._runner import LocalProcessLauncher

__all__ = ["serve"]

_log = logging.getLogger("server_mock.serve")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
SHUTDOWN_WAIT = 60.0
STOP_GRACE = 15.0  # the platform's grace period for an operator whose termination started


def _listen_address(args: argparse.Namespace) -> tuple[str, int]:
    """``--host``/``--port``, completed from ``$CLARA_MOCK_ADDRESS`` or the defaults."""
    host, port = DEFAULT_HOST, DEFAULT_PORT
    variable = os.environ.get(ADDRESS_VARIABLE, "").strip()
    if variable:
        env_host, sep, env_port = variable.rpartition(":")
        if not sep or not env_host or not env_port.isdigit():
            raise UsageError(f"${ADDRESS_VARIABLE} {variable!r}: expected HOST:PORT")
        host, port = env_host, int(env_port)
    host = args.host if args.host is not None else host
    port = args.port if args.port is not None else port
    if not 0 <= port < 65536:
        flag = "--port" if args.port is not None else f"${ADDRESS_VARIABLE}"
        raise UsageError(f"{flag} {port}: expected 0-65535")
    return host, port


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port that is taken, naming it (a bind with SO_REUSEADDR, as gRPC's).

    Raises:
        UsageError: Something listens there, or the address cannot be bound.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"--host {host}: {error.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise UsageError(
                        f"port {port} on {host} is already in use (another `clara-mock serve`, "
                        "or another program): stop it, or choose another --port"
                    ) from None
                raise UsageError(f"--host {host} --port {port}: {error.strerror}") from None


def serve(args: argparse.Namespace, out: TextIO) -> int:
    """Serve until SIGINT or SIGTERM; return the exit code.

    Raises:
        UsageError: A flag is wrong (the message names it).
        server_mock._persistence.StateStoreError: The ``--state`` file cannot be used.
    """
    host, port = _listen_address(args)
    try:
        tls = serve_tls_from_args(args)
    except TlsUsageError as error:
        raise UsageError(str(error)) from None
    if not is_loopback(host) and (tls is None or not tls.server.mutual) and not args.insecure:
        raise UsageError(
            f"--host {host}: mutual TLS is required to listen beyond loopback (whoever "
            "can call Jobs.Start can run code): give --tls-cert, --tls-key and --tls-client-ca, "
            "or pass --insecure to accept that anyone who can reach the port can use the platform"
        )
    if not is_loopback(host) and (tls is None or not tls.server.mutual):
        print(
            f"clara-mock serve: warning: anyone who can reach {host} can use the Clara "
            "Platform API; --tls-client-ca restricts it to holders of a client certificate",
            file=sys.stderr,
        )
    operators_dir = args.operators_dir.resolve()
    if not operators_dir.is_dir():
        raise UsageError(f"--operators-dir {args.operators_dir}: not a folder")
    launcher = launcher_from_args(
        args, operators_dir, extra_env=tls.operator_env if tls is not None else None
    )
    _check_port_free(host, port)
    capacity = capacity_from_args(args)
    platform = MockPlatform(
        host,
        port,
        workspace=args.workspace,
        state_path=args.state,
        launcher=launcher,
        tls=tls.server if tls is not None else None,
        require_stage_tokens=True,
        capacity=capacity,
    )
    launcher.attach(
        lambda: operator_address(platform.address),
        platform.stage_tokens.issue,
        platform.state.launches,
        platform.state.record_service_ports,
        service_data_folder(args, platform.state.workspace),
    )
    stopped = threading.Event()
    received: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        received.append(signum)
        stopped.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            address = platform.start()
        except RuntimeError as error:  # the bind failed after all (e.g. a race for the port)
            raise UsageError(f"port {port} on {host}: {error}") from None
        print(f"clara-mock listening on {address}", file=out, flush=True)
        _log.info("capacity: %s (--cpus, --memory, --gpus)", capacity.describe())
        while not stopped.wait(3600):
            pass
        name = signal.Signals(received[0]).name
        print(f"clara-mock stopping ({name})", file=out, flush=True)
        if args.state is not None:
            platform.call_async(launcher.release_all, timeout=SHUTDOWN_WAIT)
            print(
                "clara-mock: operators left running; the next `serve --state` adopts them",
                file=out,
                flush=True,
            )
        else:
            _cancel_running_jobs(platform, launcher, f"the platform stopped ({name})", out)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if platform.running:
            platform.call_async(launcher.stop_all, timeout=SHUTDOWN_WAIT)
        platform.stop()
    return EXIT_OK


def _cancel_running_jobs(
    platform: MockPlatform, launcher: LocalProcessLauncher, reason: str, out: TextIO
) -> None:
    """Cancel every running job; give its operators :data:`STOP_GRACE` s to exit, then kill."""

    def cancel() -> int:
        running = [job for job in platform.jobs.all() if job.state is JobState.RUNNING]
        return sum(job.cancel(reason) for job in running)

    cancelled = platform.call(cancel)
    if not cancelled:
        return
    print(f"clara-mock: cancelled {cancelled} running job(s)", file=out, flush=True)
    if not platform.call_async(lambda: launcher.wait_idle(STOP_GRACE), STOP_GRACE + 5):
        print(
            f"clara-mock: operators still running {STOP_GRACE:g} s after the cancel: killing them",
            file=out,
            flush=True,
        )
