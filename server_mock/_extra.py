"""The mock's own dependencies (the ``mock`` extra), checked once with a clear message.

The driver (``pip install clara-stage-driver``) needs only grpcio and protobuf. The mock also
needs the modules below; an operator image that installed the driver alone still has the
``server_mock`` package on disk, so importing it there must say what to install instead of
failing deep inside with a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib.util

__all__ = ["MOCK_EXTRA_MODULES", "MockExtraMissingError", "missing_mock_modules", "require"]

MOCK_EXTRA_MODULES = {
    "yaml": "PyYAML",
    "grpc_health": "grpcio-health-checking",
    "grpc_reflection": "grpcio-reflection",
    "rich": "rich",
}
"""Module imported by the mock -> the distribution of the ``mock`` extra that provides it."""


class MockExtraMissingError(ImportError):
    """The mock was imported without its extra: ``pip install 'clara-stage-driver[mock]'``."""


def missing_mock_modules() -> list[str]:
    """The distributions of the ``mock`` extra whose modules cannot be found."""
    return [dist for module, dist in MOCK_EXTRA_MODULES.items() if not _importable(module)]


def require() -> None:
    """Raise :class:`MockExtraMissingError` naming what is missing, if anything is.

    Raises:
        MockExtraMissingError: A module of the ``mock`` extra is not installed.
    """
    missing = missing_mock_modules()
    if missing:
        raise MockExtraMissingError(
            "server_mock needs the 'mock' extra, which is not installed (missing: "
            f"{', '.join(missing)}): pip install 'clara-stage-driver[mock]'. "
            "An operator image needs only 'clara-stage-driver'."
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
