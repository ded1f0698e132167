"""TLS and mutual TLS for the driver's channel, and the stage's secret token.

Settings come from constructor arguments first, then the environment the platform sets:

* ``NVIDIA_CLARA_TLS_CA``: PEM root certificates the platform's certificate must chain to.
* ``NVIDIA_CLARA_TLS_CERT`` and ``NVIDIA_CLARA_TLS_KEY``: the driver's own PEM certificate
  chain and private key, for a platform that requires client certificates (mutual TLS).
* ``NVIDIA_CLARA_TLS_SERVER_NAME``: the name to check the platform's certificate against,
  when it differs from the host of ``NVIDIA_CLARA_STAGE_SERVICE``.
* ``NVIDIA_CLARA_STAGE_TOKEN``: the stage's secret, sent with every stage API call.

Any of the first three turns TLS on; none of them (and no ``tls=`` argument) keeps the
plaintext channel, the local default. Files are read when the driver is constructed, so a
missing or unreadable file is a :class:`~clara.ConfigurationError` naming the setting and the
path. Secrets (the private key, the token) never appear in a repr, a log line or an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from clara._exceptions import ConfigurationError
from clara.contract import (
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TLS_SERVER_NAME,
)

__all__ = [
    "STAGE_TOKEN_METADATA",
    "TlsConfig",
    "TlsMaterial",
    "parse_stage_token",
    "resolve_tls",
]


STAGE_TOKEN_METADATA = "authorization"
"""The call metadata key carrying ``Bearer <token>`` on every stage API call."""

MAX_PEM_BYTES = 1024 * 1024
_TOKEN = re.compile(r"[\x21-\x7e]{16,1024}")
_REDACTED = "<redacted>"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """How the driver secures its channel to the platform (``Driver(tls=...)``).

    Attributes:
        ca: PEM file of the root certificates to trust; ``None`` uses the system's roots.
        cert: PEM file of the driver's certificate chain, for mutual TLS (needs ``key``).
        key: PEM file of the driver's private key, for mutual TLS (needs ``cert``).
        server_name: The name the platform's certificate must carry, when it is not the
            target's host.
    """

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The loaded certificates of a :class:`TlsConfig` (the key is kept out of the repr)."""

    root_certificates: bytes | None
    certificate_chain: bytes | None
    private_key: bytes | None = field(repr=False)
    server_name: str | None
    source: str
    """Where the settings came from, for messages (``tls`` or the variables' names)."""

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials these certificates make."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        """Channel options the certificates need (the server name override)."""
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


def _read_pem(setting: str, path: str | Path, secret: bool) -> bytes:
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigurationError(setting, str(path), f"cannot read the file: {reason}") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigurationError(setting, str(path), f"larger than {MAX_PEM_BYTES} bytes")
    if b"-----BEGIN " not in data:
        kind = "private key" if secret else "certificate"
        raise ConfigurationError(setting, str(path), f"not a PEM {kind} file")
    return data


def _blank_to_none(value: str | Path | None) -> str | Path | None:
    if isinstance(value, str) and not value.strip():
        return None
    return value


def resolve_tls(tls: TlsConfig | None, env: Mapping[str, str]) -> TlsMaterial | None:
    """Load the TLS settings: the ``tls`` argument if given, else the environment.

    Returns:
        ``None`` for a plaintext channel (no argument and none of the variables set).

    Raises:
        ConfigurationError: A file is missing, unreadable or not PEM, or only one of the
            certificate and the key is given; the error names the setting and the path.
    """
    values: tuple[str | Path | None, ...]
    if tls is not None:
        if not isinstance(tls, TlsConfig):
            raise ConfigurationError("tls", type(tls).__name__, "expected a clara.TlsConfig")
        names = ("tls.ca", "tls.cert", "tls.key", "tls.server_name")
        values = (tls.ca, tls.cert, tls.key, tls.server_name)
        source = "tls"
    else:
        names = (ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, ENV_TLS_SERVER_NAME)
        values = tuple(env.get(name) for name in names)
        source = "environment"
    ca, cert, key, server_name = (_blank_to_none(v) for v in values)
    if tls is None and ca is None and cert is None and key is None:
        return None
    ca_name, cert_name, key_name, server_name_name = names
    if (cert is None) != (key is None):
        missing, given = (key_name, cert_name) if key is None else (cert_name, key_name)
        raise ConfigurationError(missing, None, f"required for mutual TLS when {given} is set")
    if server_name is not None and not isinstance(server_name, str):
        raise ConfigurationError(server_name_name, server_name, "expected a host name")
    return TlsMaterial(
        root_certificates=None if ca is None else _read_pem(ca_name, ca, secret=False),
        certificate_chain=None if cert is None else _read_pem(cert_name, cert, secret=False),
        private_key=None if key is None else _read_pem(key_name, key, secret=True),
        server_name=str(server_name) if server_name else None,
        source=source,
    )


def parse_stage_token(setting: str, value: object) -> str:
    """Validate a stage token: 16-1024 visible ASCII characters (never shown in errors)."""
    if isinstance(value, str) and _TOKEN.fullmatch(value):
        return value
    shown = None if value is None else _REDACTED
    raise ConfigurationError(setting, shown, "expected 16-1024 visible ASCII characters")
