"""The capacity flags of ``clara-mock serve`` and ``run``: ``--cpus``, ``--memory``, ``--gpus``.

Each defaults to the host's (see :meth:`server_mock._capacity.Capacity.of_host`). ``--memory``
takes megabytes, as ``requests.memory`` does (``4096``), or a size with a unit: ``B``, ``K``,
``M``, ``G`` or ``T`` (powers of 1024, with or without ``i``/``B``: ``8G``, ``512MiB``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server_mock._capacity import Capacity

__all__ = ["add_capacity_flags", "capacity_from_args", "parse_memory"]

_SIZE = re.compile(r"(?P<amount>[0-9]+)\s*(?P<unit>[bkmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1024**2, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_memory(text: str) -> int:
    """Bytes of a ``--memory`` value: megabytes, or a size with a unit (``8G``, ``512MiB``).

    Raises:
        argparse.ArgumentTypeError: Not a size, or zero.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected megabytes (4096) or a size with a unit (8G, 512MiB, 1048576B)"
        )
    unit = match["unit"].lower()
    if unit == "" and text.strip().lower().endswith("b"):
        unit = "b"  # a bare "B" suffix: bytes
    amount = int(match["amount"]) * _UNITS[unit]
    if amount < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size above zero")
    return amount


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected at least {minimum}")
        return value

    return parse


def add_capacity_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--cpus``, ``--memory`` and ``--gpus``."""
    parser.add_argument(
        "--cpus",
        type=_at_least(1),
        metavar="N",
        help="CPU cores the operators' requests.cpu may take at once (default: this host's)",
    )
    parser.add_argument(
        "--memory",
        type=parse_memory,
        metavar="SIZE",
        help="memory the operators' requests.memory may take at once: megabytes, or a size "
        "with a unit such as 8G (default: this host's physical memory)",
    )
    parser.add_argument(
        "--gpus",
        type=_at_least(0),
        metavar="N",
        help="GPUs the operators' requests.gpu may take at once, given as CUDA_VISIBLE_DEVICES "
        "(default: this host's CUDA_VISIBLE_DEVICES or /dev/nvidiaN devices)",
    )


def capacity_from_args(args: argparse.Namespace) -> Capacity:
    """The :class:`~server_mock._capacity.Capacity` the flags describe (host defaults)."""
    # Imported here: the parser must work where the mock's extra is missing (see runner_flags).
    from server_mock._capacity import Capacity  # noqa: PLC0415

    return Capacity.of_host(cpus=args.cpus, memory_bytes=args.memory, gpus=args.gpus)
