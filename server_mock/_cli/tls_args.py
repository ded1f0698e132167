"""The TLS flags of ``clara-mock serve`` (``--tls-*``): parsed into the server's settings.

The server side (certificates, credentials) lives in :mod:`server_mock._tls`; this module only
turns the command line into those settings and into the ``NVIDIA_CLARA_TLS_*`` variables the
launched operators need.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from clara import contract
from server_mock._tls import ServerTls, TlsFileError

__all__ = [
    "ServeTls",
    "TlsUsageError",
    "add_tls_arguments",
    "operator_address",
    "serve_tls_from_args",
]

_FLAGS = {"cert": "--tls-cert", "key": "--tls-key", "client_ca": "--tls-client-ca"}
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}


class TlsUsageError(ValueError):
    """A TLS flag of the command line is wrong; the message starts with the flag."""


@dataclass(frozen=True, slots=True)
class ServeTls:
    """The TLS settings of ``clara-mock serve``.

    Attributes:
        server: The server's certificate and client CA.
        operator_env: The ``NVIDIA_CLARA_TLS_*`` variables launched operators get, so their
            drivers trust the server (and present a client certificate under mutual TLS).
    """

    server: ServerTls
    operator_env: dict[str, str]


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--tls-*`` flags of ``serve``."""
    group = parser.add_argument_group(
        "TLS", "serve over TLS (required beyond loopback); see docs/security.md"
    )
    group.add_argument("--tls-cert", type=Path, help="PEM certificate chain of the server")
    group.add_argument("--tls-key", type=Path, help="PEM private key of the server")
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        help="PEM CA of client certificates: require every client to present one (mutual TLS)",
    )
    group.add_argument(
        "--tls-operator-ca",
        type=Path,
        help="PEM CA launched operators trust (NVIDIA_CLARA_TLS_CA; default: --tls-cert, "
        "right for a self-signed certificate)",
    )
    group.add_argument(
        "--tls-operator-cert",
        type=Path,
        help="PEM client certificate launched operators present (needed with --tls-client-ca)",
    )
    group.add_argument(
        "--tls-operator-key", type=Path, help="PEM private key of --tls-operator-cert"
    )


def _file(flag: str, path: Path) -> Path:
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise TlsUsageError(f"{flag} {path}: no such file")
    return resolved


def serve_tls_from_args(args: argparse.Namespace) -> ServeTls | None:
    """The TLS settings the ``--tls-*`` flags give; ``None`` when TLS is off.

    Raises:
        TlsUsageError: A flag is missing its partner, or a file is missing or not PEM.
    """
    cert, key, client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
    operator_ca, operator_cert = args.tls_operator_ca, args.tls_operator_cert
    operator_key = args.tls_operator_key
    if cert is None and key is None:
        for flag, value in (
            ("--tls-client-ca", client_ca),
            ("--tls-operator-ca", operator_ca),
            ("--tls-operator-cert", operator_cert),
            ("--tls-operator-key", operator_key),
        ):
            if value is not None:
                raise TlsUsageError(f"{flag}: needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        given, missing = (
            ("--tls-key", "--tls-cert") if cert is None else ("--tls-cert", "--tls-key")
        )
        raise TlsUsageError(f"{missing}: required with {given}")
    if (operator_cert is None) != (operator_key is None):
        missing = "--tls-operator-key" if operator_key is None else "--tls-operator-cert"
        raise TlsUsageError(f"{missing}: --tls-operator-cert and --tls-operator-key go together")
    if client_ca is not None and operator_cert is None:
        raise TlsUsageError(
            "--tls-operator-cert: --tls-client-ca requires client certificates, so launched "
            "operators need one (--tls-operator-cert and --tls-operator-key)"
        )
    server = ServerTls(
        _file("--tls-cert", cert),
        _file("--tls-key", key),
        None if client_ca is None else _file("--tls-client-ca", client_ca),
    )
    try:
        server.credentials()  # read and check every file now, naming the flag
    except TlsFileError as error:
        raise TlsUsageError(f"{_FLAGS[error.setting]} {error.path}: {error.reason}") from None
    env = {contract.ENV_TLS_CA: str(_file("--tls-operator-ca", operator_ca or cert))}
    if operator_cert is not None and operator_key is not None:
        env[contract.ENV_TLS_CERT] = str(_file("--tls-operator-cert", operator_cert))
        env[contract.ENV_TLS_KEY] = str(_file("--tls-operator-key", operator_key))
    return ServeTls(server, env)


def operator_address(address: str) -> str:
    """The address local operators dial: a wildcard bind (``0.0.0.0``) becomes loopback."""
    host, _, port = address.rpartition(":")
    return f"{_WILDCARD_HOSTS.get(host, host)}:{port}"
