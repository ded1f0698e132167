"""What every client command shares: the connection flags, the connection, the error mapping.

The client commands (``jobs ...``, ``pipelines ...``, ``create``, ``start``, ``describe``,
``list``, ``logs``, ``download``) call the public Clara Platform API through
:class:`~server_mock._client.PlatformClient`, so they work against ``clara-mock serve`` or any
platform serving that API. Each takes ``--address HOST:PORT``; its default is
``$CLARA_MOCK_ADDRESS`` when set (``serve`` listens there too), else ``127.0.0.1:50051``.

Exit codes: 0 done, 1 the platform refused, could not be reached, or (``describe --wait``)
the job did not succeed, 2 a bad argument (the message names it).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import grpc

from server_mock._client import PlatformApiError, PlatformClient

__all__ = [
    "ADDRESS_VARIABLE",
    "DEFAULT_ADDRESS",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ClientHandler",
    "ClientUsageError",
    "PlatformUnreachableError",
    "address_argument",
    "connection_options",
    "default_address",
    "job_id_argument",
    "run_client",
]

ADDRESS_VARIABLE = "CLARA_MOCK_ADDRESS"
DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_CONNECT_TIMEOUT = 5.0
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

ClientHandler = Callable[[PlatformClient, argparse.Namespace, TextIO], int | None]
"""A client command: runs against the connected client, returns an exit code (None for 0)."""


class ClientUsageError(Exception):
    """An argument is wrong; the message names it."""


class PlatformUnreachableError(Exception):
    """The platform did not answer at the address; the message says where and what to check."""


# -- argument types -------------------------------------------------------------------------


def address_argument(text: str) -> str:
    """``--address``: ``HOST:PORT`` (``[v6]:PORT`` for IPv6)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (e.g. {DEFAULT_ADDRESS}, [::1]:50051)"
        )
    return text.strip()


def default_address() -> str:
    """``$CLARA_MOCK_ADDRESS`` when set, else ``127.0.0.1:50051``.

    Raises:
        ClientUsageError: The variable is set but is not ``HOST:PORT``.
    """
    value = os.environ.get(ADDRESS_VARIABLE, "").strip()
    if not value:
        return DEFAULT_ADDRESS
    try:
        return address_argument(value)
    except argparse.ArgumentTypeError as error:
        raise ClientUsageError(f"${ADDRESS_VARIABLE}: {error}") from None


def job_id_argument(text: str) -> uuid.UUID:
    """A job id: a UUID, with or without hyphens (printed with them)."""
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a job id (expected a UUID such as "
            "0c3b7f1e-1a2b-4c3d-8e9f-0a1b2c3d4e5f; `clara-mock list jobs` shows them)"
        ) from None


def _timeout_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 3600]")
    return value


def connection_options() -> argparse.ArgumentParser:
    """A parent parser with ``--address``, ``--connect-timeout`` and the ``--tls-*`` flags."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--address",
        type=address_argument,
        default=None,
        metavar="HOST:PORT",
        help=f"the platform's address (default ${ADDRESS_VARIABLE} when set, else "
        f"{DEFAULT_ADDRESS}, where `clara-mock serve` listens)",
    )
    group.add_argument(
        "--connect-timeout",
        type=_timeout_argument,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when the platform does not answer within this (default "
        f"{DEFAULT_CONNECT_TIMEOUT:g})",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="connect over TLS, trusting this CA bundle (PEM); for `serve --tls-cert`",
    )
    group.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="client certificate (PEM), for mutual TLS"
    )
    group.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="client certificate's key (PEM)"
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the server certificate must carry (default: the address's host)",
    )
    return common


# -- connecting -----------------------------------------------------------------------------


def _read(flag: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise ClientUsageError(f"{flag} {path}: {error.strerror or error}") from None


def _open_channel(args: argparse.Namespace, address: str) -> grpc.Channel:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ClientUsageError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    if args.tls_ca is None:
        if args.tls_cert is not None or args.tls_server_name:
            raise ClientUsageError("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read("--tls-ca", args.tls_ca),
        private_key=_read("--tls-key", args.tls_key),
        certificate_chain=_read("--tls-cert", args.tls_cert),
    )
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(address, credentials, options=options)


def _wait_for_connection(channel: grpc.Channel, timeout: float) -> str | None:
    """Wait until the channel is ready; return why not (refused, timed out) or None."""
    seen: list[grpc.ChannelConnectivity] = []
    changed = threading.Condition()

    def on_change(state: grpc.ChannelConnectivity) -> None:
        with changed:
            seen.append(state)
            changed.notify_all()

    channel.subscribe(on_change, try_to_connect=True)
    try:
        with changed:
            ended = changed.wait_for(lambda: bool(seen) and seen[-1] in _SETTLED, timeout=timeout)
            last = seen[-1] if seen else None
    finally:
        channel.unsubscribe(on_change)
    if ended and last is grpc.ChannelConnectivity.READY:
        return None
    if ended:
        return "the connection failed"
    return f"no platform answered within {timeout:g} s"


_SETTLED = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)


def _connect(args: argparse.Namespace) -> PlatformClient:
    address = args.address or default_address()
    args.address = address
    channel = _open_channel(args, address)
    problem = _wait_for_connection(channel, args.connect_timeout)
    if problem is not None:
        channel.close()
        hint = (
            "check --tls-ca/--tls-cert/--tls-key against the server's TLS settings"
            if args.tls_ca is not None
            else "is `clara-mock serve` running there? a TLS server also needs --tls-ca"
        )
        raise PlatformUnreachableError(f"--address {address}: {problem}; {hint}")
    return PlatformClient(address, channel=channel)


def run_client(
    args: argparse.Namespace,
    out: TextIO,
    handler: ClientHandler,
    prefix: str,
    err: TextIO | None = None,
) -> int:
    """Connect, run ``handler``; return its exit code (errors go to ``err``, named by prefix)."""
    errors = err or sys.stderr
    try:
        with _connect(args) as client:
            code = handler(client, args, out)
    except ClientUsageError as error:
        print(f"{prefix}: error: {error}", file=errors)
        return EXIT_USAGE
    except PlatformUnreachableError as error:
        print(f"{prefix}: error: {error}", file=errors)
        return EXIT_FAILED
    except PlatformApiError as error:
        print(f"{prefix}: platform error: {error}", file=errors)
        return EXIT_FAILED
    except OSError as error:  # a local file: the definition, an input, a download's target
        print(f"{prefix}: error: {error}", file=errors)
        return EXIT_FAILED
    out.flush()
    return EXIT_OK if code is None else code
