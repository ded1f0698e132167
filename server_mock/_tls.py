"""TLS and mutual TLS for the mock platform's server (``MockPlatform(tls=...)``, ``serve``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["ServerTls", "TlsFileError"]

MAX_PEM_BYTES = 1024 * 1024


class TlsFileError(ValueError):
    """A certificate or key file is missing, unreadable or not PEM.

    Attributes:
        setting: Which file (``cert``, ``key`` or ``client_ca``).
        path: The path given.
        reason: What is wrong with it.
    """

    def __init__(self, setting: str, path: Path, reason: str) -> None:
        self.setting = setting
        self.path = path
        self.reason = reason
        super().__init__(f"{setting} {path}: {reason}")


def _read_pem(setting: str, path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except OSError as error:
        raise TlsFileError(setting, path, error.strerror or type(error).__name__) from None
    if len(data) > MAX_PEM_BYTES:
        raise TlsFileError(setting, path, f"larger than {MAX_PEM_BYTES} bytes")
    if b"-----BEGIN " not in data:
        raise TlsFileError(setting, path, "not a PEM file")
    return data


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The server's certificate, and optionally the CA its clients' certificates must chain to.

    Attributes:
        cert: PEM file of the server's certificate chain (its names must match the address
            clients dial, e.g. a SAN for ``127.0.0.1``).
        key: PEM file of the server's private key.
        client_ca: PEM file of the CA(s) of client certificates; when set, every client must
            present a certificate it issued (mutual TLS).
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate."""
        return self.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        """Read the files and build the server credentials.

        Raises:
            TlsFileError: A file is missing, unreadable or not PEM.
        """
        chain = _read_pem("cert", Path(self.cert))
        key = _read_pem("key", Path(self.key))
        roots = None if self.client_ca is None else _read_pem("client_ca", Path(self.client_ca))
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=roots, require_client_auth=roots is not None
        )
