"""``clara-mock serve``: serve the stage API and the Clara Platform API until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TextIO

from server_mock._cli.common import EXIT_OK, UsageError, is_loopback
from server_mock._cli.runner_args import launcher_from_args
from server_mock._cli.tls_args import TlsUsageError, operator_address, serve_tls_from_args
from server_mock._platform import MockPlatform

__all__ = ["serve"]

SHUTDOWN_WAIT = 60.0


def serve(args: argparse.Namespace, out: TextIO) -> int:
    """Serve until SIGINT or SIGTERM; return the exit code.

    Raises:
        UsageError: A flag is wrong (the message names it).
        server_mock._persistence.StateStoreError: The ``--state`` file cannot be used.
    """
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port}: expected 0-65535")
    try:
        tls = serve_tls_from_args(args)
    except TlsUsageError as error:
        raise UsageError(str(error)) from None
    if not is_loopback(args.host) and tls is None and not args.insecure:
        raise UsageError(
            f"--host {args.host}: TLS is required to listen beyond loopback: give --tls-cert "
            "and --tls-key (and --tls-client-ca to require client certificates), or pass "
            "--insecure to accept that anyone who can reach the port can use the platform"
        )
    if not is_loopback(args.host) and (tls is None or not tls.server.mutual):
        print(
            f"clara-mock serve: warning: anyone who can reach {args.host} can use the Clara "
            "Platform API; --tls-client-ca restricts it to holders of a client certificate",
            file=sys.stderr,
        )
    operators_dir = args.operators_dir.resolve()
    if not operators_dir.is_dir():
        raise UsageError(f"--operators-dir {args.operators_dir}: not a folder")
    launcher = launcher_from_args(
        args, operators_dir, extra_env=tls.operator_env if tls is not None else None
    )
    platform = MockPlatform(
        args.host,
        args.port,
        workspace=args.workspace,
        state_path=args.state,
        launcher=launcher,
        tls=tls.server if tls is not None else None,
        require_stage_tokens=True,
    )
    launcher.attach(lambda: operator_address(platform.address), platform.stage_tokens.issue)
    stopped = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stopped.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        address = platform.start()
        print(f"clara-mock listening on {address}", file=out, flush=True)
        while not stopped.wait(3600):
            pass
        print("clara-mock stopping", file=out, flush=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if platform.running:
            platform.call_async(launcher.stop_all, timeout=SHUTDOWN_WAIT)
        platform.stop()
    return EXIT_OK
