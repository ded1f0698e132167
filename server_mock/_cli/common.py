"""What the ``clara-mock`` commands share: exit codes and the usage error."""

from __future__ import annotations

import ipaddress

__all__ = [
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "is_loopback",
]

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line argument is wrong; the message names it."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 possibly in brackets) is loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
