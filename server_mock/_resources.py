"""An operator's ``requests`` (memory, CPUs, GPUs) as limits on its local process.

The Clara docs (Deploy SDK 0.8.1, pipeline reference, *Requests*) define ``cpu`` (logical CPU
cores), ``gpu`` (GPU devices, exclusive) and ``memory`` (megabytes; "if a pipeline-job operator
exceeds its system memory limit, it will be terminated"). The mock applies them so:

* ``memory``: ``RLIMIT_DATA`` (set by util-linux ``prlimit`` before the operator starts), the
  operator's private writable virtual memory (heap, anonymous mappings, thread stacks), not its
  resident memory: an allocation past the limit fails (``MemoryError`` in Python) instead of
  the kernel killing the process. A Python driver process idles at about 95 MB of it (40 MB
  resident). cgroup v2 would measure resident memory and kill, but it needs a delegated
  memory controller, which neither this project's VM nor a typical CI container has.
* ``cpu``: CPU affinity (``taskset``) to that many of the CPUs the mock may use, rotating so
  that operators spread out; a request of all CPUs or more sets no affinity.
* ``gpu``: ``CUDA_VISIBLE_DEVICES``: that many devices of the mock's own
  ``CUDA_VISIBLE_DEVICES`` (or of the ``/dev/nvidiaN`` devices), rotating; no request means no
  GPU (``CUDA_VISIBLE_DEVICES=""``), as on the platform. Under a platform that counts its
  capacity (``serve``, ``run``), the stage's own reserved GPU ids are used instead
  (:mod:`server_mock._scheduler`); otherwise GPUs are not reserved exclusively.

The values are whole numbers, as the Requests page defines them, validated once by the
definition parser (:class:`~server_mock._definition.ResourceRequests`); memory in MB is read
as MiB, as the docs' "1024 (1GB)" does. An operator without ``requests`` runs unlimited (the
platform's defaults, 1024 MB and 2 CPUs, are not applied: a virtual-memory limit of 1024 MB
would stop ordinary operators).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server_mock._definition import OperatorSpec

__all__ = [
    "MIB",
    "ResourceAllocator",
    "ResourceLimits",
    "ResourceRequestError",
    "host_gpus",
    "memory_exhaustion",
    "parse_requests",
]

MIB = 1024 * 1024
# What a process that ran out of memory typically leaves at the end of its log.
_EXHAUSTION_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
_LOG_TAIL_BYTES = 64 * 1024
_SIGNALS_OF_EXHAUSTION = {6, 7, 9, 11}  # SIGABRT, SIGBUS, SIGKILL, SIGSEGV


class ResourceRequestError(ValueError):
    """An operator's ``requests`` entry is not a valid quantity; the message names it."""


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """The limits of one operator, parsed from its ``requests``.

    Attributes:
        memory_bytes: The memory limit in bytes; ``None`` for none.
        cpus: How many CPUs it may run on; ``None`` for no limit.
        gpus: How many GPUs it gets (0: none).
    """

    memory_bytes: int | None = None
    cpus: int | None = None
    gpus: int = 0

    def describe_memory(self) -> str:
        """The memory limit for messages, e.g. ``64 MiB``."""
        if self.memory_bytes is None:
            return "unlimited"
        mib = self.memory_bytes / MIB
        return f"{mib:g} MiB" if mib >= 1 else f"{self.memory_bytes} bytes"


def parse_requests(operator: OperatorSpec) -> ResourceLimits:
    """The limits of ``operator``'s ``requests`` (already validated by the parser)."""
    requests = operator.requests
    return ResourceLimits(
        memory_bytes=None if requests.memory is None else requests.memory * MIB,
        cpus=requests.cpu,
        gpus=requests.gpu or 0,
    )


class ResourceAllocator:
    """Turns limits into a command prefix and variables, spreading CPUs and GPUs over operators.

    Args:
        cpus: The CPUs operators may use (default: this process's affinity).
        gpus: The GPU ids to hand out (default: the mock's ``CUDA_VISIBLE_DEVICES``, else the
            ``/dev/nvidiaN`` devices).
    """

    def __init__(self, cpus: Sequence[int] | None = None, gpus: Sequence[str] | None = None):
        self.cpus = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
        self.gpus = host_gpus() if gpus is None else list(gpus)
        self._next_cpu = 0
        self._next_gpu = 0

    def prefix(self, limits: ResourceLimits) -> list[str]:
        """The argv that runs the operator's command (or its sandbox) under ``limits``.

        Raises:
            ResourceRequestError: A limit needs ``prlimit``/``taskset`` and it is missing.
        """
        argv: list[str] = []
        if limits.memory_bytes is not None:
            data = str(limits.memory_bytes)
            argv += [_tool("prlimit", "requests.memory"), f"--data={data}:{data}", "--"]
        if limits.cpus is not None and limits.cpus < len(self.cpus):
            chosen = [self.cpus[(self._next_cpu + i) % len(self.cpus)] for i in range(limits.cpus)]
            self._next_cpu = (self._next_cpu + limits.cpus) % len(self.cpus)
            argv += [_tool("taskset", "requests.cpu"), "-c", ",".join(map(str, sorted(chosen)))]
        return argv

    def gpu_devices(self, limits: ResourceLimits) -> list[str]:
        """The GPU ids for ``CUDA_VISIBLE_DEVICES`` (all of them when fewer than requested)."""
        if limits.gpus == 0 or not self.gpus:
            return []
        if limits.gpus >= len(self.gpus):
            return list(self.gpus)
        chosen = [self.gpus[(self._next_gpu + i) % len(self.gpus)] for i in range(limits.gpus)]
        self._next_gpu = (self._next_gpu + limits.gpus) % len(self.gpus)
        return chosen


def _tool(name: str, field: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ResourceRequestError(
            f"{field} needs the {name} command (util-linux), which is not on PATH"
        )
    return path


def host_gpus() -> list[str]:
    """The host's GPU ids: the mock's own ``CUDA_VISIBLE_DEVICES``, else ``/dev/nvidiaN``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    devices = [p.name.removeprefix("nvidia") for p in Path("/dev").glob("nvidia[0-9]*")]
    return sorted((d for d in devices if d.isdigit()), key=int)


def memory_exhaustion(log_path: Path, log_offset: int, exit_signal: int | None) -> str | None:
    """Why an operator with a memory limit seems to have run out of memory, or ``None``.

    Looks for the usual messages (``MemoryError``, ``Cannot allocate memory``, ...) in what the
    process wrote to its log since ``log_offset``, and at death by a signal that failed
    allocations cause (SIGSEGV, SIGABRT, SIGBUS, SIGKILL).
    """
    try:
        with log_path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(log_offset, size - _LOG_TAIL_BYTES))
            tail = log.read().decode("utf-8", "replace")
    except OSError:
        tail = ""
    for marker in _EXHAUSTION_MARKERS:
        if marker in tail:
            return f"its log shows {marker!r}"
    if exit_signal in _SIGNALS_OF_EXHAUSTION:
        return f"it was killed by signal {exit_signal}"
    return None
