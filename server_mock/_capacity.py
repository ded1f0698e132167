"""What the platform can run at once, what a job asks of it, and the queue of jobs waiting.

The Clara docs (Deploy SDK 0.8.1, pipeline reference, *Requests*) say of ``cpu`` and
``memory``: "Pipeline-jobs cannot begin processing until there are sufficient resources
available to fulfill all resource requested by a pipeline's operators"; ``gpu`` is the number
of devices "the application needs exclusive control of". The mock therefore reserves a whole
job at once, the sum of all its operators' requests (every operator of a job is launched when
the job starts), and gives each operator its share back as its stage ends. A job either gets
everything it needs or waits: no job ever holds part of what it needs while waiting for the
rest, so two jobs can never wait for each other (no deadlock).

The queue (:class:`CapacityQueue`) orders waiting jobs by priority (immediate, higher,
normal, lower: ``JobPriority`` 4 to 1), first come first served within one, and admits from
its head only: a job that does not fit blocks the ones behind it, so a large job is never
overtaken for ever by smaller ones. Everything here is plain bookkeeping, without I/O or
asyncio; :mod:`server_mock._scheduler` drives it from job changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from server_mock._definition import PipelineDefinition
from server_mock._resources import MIB, host_gpus, parse_requests

__all__ = [
    "Capacity",
    "CapacityExceededError",
    "CapacityQueue",
    "JobDemand",
    "OperatorDemand",
    "Reservation",
]

_GIB = 1024 * MIB

K = TypeVar("K", bound=Hashable)


class CapacityExceededError(ValueError):
    """A job asks for more than the whole capacity: it could never run here.

    The message names the operator(s), the request field, what they ask and what there is.
    """


def _memory_text(amount: int) -> str:
    if amount >= _GIB and amount % _GIB == 0:
        return f"{amount // _GIB} GiB"
    return f"{amount / MIB:g} MiB"


def _amount(key: str, amount: int) -> str:
    """An amount of a ``requests`` key for messages: ``2 CPU(s)``, ``512 MiB``, ``1 GPU(s)``."""
    if key == "memory":
        return _memory_text(amount)
    return f"{amount} {key.upper()}(s)"


@dataclass(frozen=True, slots=True)
class Capacity:
    """Everything the platform may hand out to operators at once.

    Attributes:
        cpus: Logical CPU cores.
        memory_bytes: Memory, in bytes.
        gpu_ids: The GPUs, by the ids operators see in ``CUDA_VISIBLE_DEVICES``.

    Raises:
        ValueError: A count below 1, or a GPU id that is empty, repeated or has a comma.
    """

    cpus: int
    memory_bytes: int
    gpu_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise ValueError(f"capacity cpus {self.cpus}: expected at least 1")
        if self.memory_bytes < 1:
            raise ValueError(f"capacity memory {self.memory_bytes} bytes: expected at least 1")
        for gpu in self.gpu_ids:
            if not gpu or "," in gpu or gpu != gpu.strip():
                raise ValueError(f"capacity GPU id {gpu!r}: expected a non-empty id without ','")
        if len(set(self.gpu_ids)) != len(self.gpu_ids):
            raise ValueError(f"capacity GPU ids {list(self.gpu_ids)}: an id is repeated")

    @classmethod
    def of_host(
        cls, *, cpus: int | None = None, memory_bytes: int | None = None, gpus: int | None = None
    ) -> Capacity:
        """This machine's capacity, each part overridable.

        Args:
            cpus: Default: the CPUs this process may run on (its affinity).
            memory_bytes: Default: the machine's physical memory.
            gpus: How many GPUs. Default: the host's (the mock's own
                ``CUDA_VISIBLE_DEVICES``, else the ``/dev/nvidiaN`` devices; none on most
                CI machines). Given: the first ``gpus`` of the host's when it has that many,
                else the ids ``0`` to ``gpus - 1`` (GPUs the mock pretends to have).

        Raises:
            ValueError: A count below 1 (0 for ``gpus``).
        """
        if gpus is not None and gpus < 0:
            raise ValueError(f"capacity gpus {gpus}: expected 0 or more")
        host = host_gpus()
        if gpus is None:
            gpu_ids = tuple(host)
        elif gpus <= len(host):
            gpu_ids = tuple(host[:gpus])
        else:
            gpu_ids = tuple(str(i) for i in range(gpus))
        return cls(
            cpus=len(os.sched_getaffinity(0)) if cpus is None else cpus,
            memory_bytes=_physical_memory() if memory_bytes is None else memory_bytes,
            gpu_ids=gpu_ids,
        )

    def describe(self) -> str:
        """For logs and messages, e.g. ``2 CPU(s), 8 GiB of memory, 1 GPU(s) (0)``."""
        gpus = f"{len(self.gpu_ids)} GPU(s)"
        if self.gpu_ids:
            gpus += f" ({','.join(self.gpu_ids)})"
        return f"{self.cpus} CPU(s), {_memory_text(self.memory_bytes)} of memory, {gpus}"


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True, slots=True)
class OperatorDemand:
    """What one operator's ``requests`` take from the capacity (0 for a key not given).

    Attributes:
        operator: The operator's name.
        cpus: CPU cores.
        memory_bytes: Memory, in bytes.
        gpus: GPU devices.
    """

    operator: str
    cpus: int = 0
    memory_bytes: int = 0
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class JobDemand:
    """What a job takes from the capacity: the sum of its operators' requests.

    An operator without a request for a resource takes none of it: the platform's documented
    defaults (1 or 2 CPUs, 512 or 1024 MB) are not counted, as the mock does not apply them
    as limits either (see :mod:`server_mock._resources`); counting them would refuse ordinary
    pipelines on small machines.
    """

    operators: tuple[OperatorDemand, ...]

    @classmethod
    def of(cls, definition: PipelineDefinition) -> JobDemand:
        """The demand of the operators of ``definition`` (services are not counted)."""
        demands = []
        for operator in definition.operators:
            limits = parse_requests(operator)
            demands.append(
                OperatorDemand(
                    operator.name, limits.cpus or 0, limits.memory_bytes or 0, limits.gpus
                )
            )
        return cls(tuple(demands))

    @property
    def cpus(self) -> int:
        """CPU cores in all."""
        return sum(o.cpus for o in self.operators)

    @property
    def memory_bytes(self) -> int:
        """Memory in all, in bytes."""
        return sum(o.memory_bytes for o in self.operators)

    @property
    def gpus(self) -> int:
        """GPU devices in all."""
        return sum(o.gpus for o in self.operators)

    def check(self, capacity: Capacity) -> None:
        """Refuse a demand that the whole capacity could never satisfy.

        Raises:
            CapacityExceededError: One operator, or all of them together, ask for more of a
                resource than the capacity has; the message names each problem.
        """
        problems: list[str] = []
        resources: tuple[tuple[str, str, int, Callable[[OperatorDemand], int]], ...] = (
            ("cpu", "--cpus", capacity.cpus, lambda o: o.cpus),
            ("memory", "--memory", capacity.memory_bytes, lambda o: o.memory_bytes),
            ("gpu", "--gpus", len(capacity.gpu_ids), lambda o: o.gpus),
        )
        for key, flag, have, ask in resources:
            asked = {o.operator: ask(o) for o in self.operators if ask(o)}
            alone = {name: amount for name, amount in asked.items() if amount > have}
            for name, amount in alone.items():
                problems.append(
                    f"operator {name!r}, field requests.{key}: it requests "
                    f"{_amount(key, amount)}; the platform has {_amount(key, have)} in all "
                    f"(clara-mock serve {flag})"
                )
            total = sum(asked.values())
            if not alone and total > have:
                parts = ", ".join(f"{n!r} {_amount(key, a)}" for n, a in asked.items())
                problems.append(
                    f"field requests.{key}: the job's operators request {_amount(key, total)} "
                    f"in all ({parts}); the platform has {_amount(key, have)} (clara-mock serve "
                    f"{flag}), and a job starts only when all of its operators' requests fit "
                    "at once"
                )
        if problems:
            raise CapacityExceededError("; ".join(problems))


@dataclass(slots=True)
class Reservation:
    """What an admitted job holds: each operator's share, until its stage ends.

    Attributes:
        demand: What the job asked for.
        gpu_ids: The GPU ids of each operator (its ``CUDA_VISIBLE_DEVICES``); empty for one
            without a GPU request.
        held: The operators whose share is still held.
    """

    demand: JobDemand
    gpu_ids: dict[str, tuple[str, ...]]
    held: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Waiting(Generic[K]):
    job_key: K
    priority: int
    ticket: int
    demand: JobDemand


class CapacityQueue(Generic[K]):
    """The capacity's free part, the admitted jobs' reservations, and the waiting jobs.

    Not thread-safe: the platform uses it on its event-loop thread only. Jobs are known by a
    hashable key ``K`` (the platform uses the job id).

    Args:
        capacity: What there is to hand out.
    """

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._free_cpus = capacity.cpus
        self._free_memory = capacity.memory_bytes
        self._free_gpus: list[str] = list(capacity.gpu_ids)
        self._reserved: dict[K, Reservation] = {}
        self._waiting: list[_Waiting[K]] = []
        self._next_ticket = 1

    # -- reading ------------------------------------------------------------------------

    def waiting(self) -> list[K]:
        """The waiting jobs' keys, in the order they will be admitted."""
        return [w.job_key for w in self._waiting]

    def free(self) -> tuple[int, int, int]:
        """What is free now: CPU cores, memory bytes, GPUs."""
        return self._free_cpus, self._free_memory, len(self._free_gpus)

    def demand_of(self, job_key: K) -> JobDemand | None:
        """The demand of a waiting job, if it waits."""
        return next((w.demand for w in self._waiting if w.job_key == job_key), None)

    def reservation(self, job_key: K) -> Reservation | None:
        """The reservation of an admitted job that still holds something, if any."""
        return self._reserved.get(job_key)

    def fits(self, demand: JobDemand) -> bool:
        """Whether ``demand`` fits in what is free now."""
        return (
            demand.cpus <= self._free_cpus
            and demand.memory_bytes <= self._free_memory
            and demand.gpus <= len(self._free_gpus)
        )

    # -- changing -----------------------------------------------------------------------

    def enqueue(
        self, job_key: K, priority: int, demand: JobDemand, ticket: int | None = None
    ) -> int:
        """Add a job to the queue, behind those of its priority; return its ticket.

        ``ticket`` restores a job's place (after a restart); new jobs get the next one.
        """
        if ticket is None:
            ticket = self._next_ticket
        self._next_ticket = max(self._next_ticket, ticket + 1)
        self._waiting.append(_Waiting(job_key, priority, ticket, demand))
        self._waiting.sort(key=lambda w: (-w.priority, w.ticket))
        return ticket

    def remove(self, job_key: K) -> bool:
        """Take a job out of the queue (cancelled while waiting); False if it was not there."""
        before = len(self._waiting)
        self._waiting = [w for w in self._waiting if w.job_key != job_key]
        return len(self._waiting) != before

    def reserve(
        self,
        job_key: K,
        demand: JobDemand,
        gpu_ids: Mapping[str, Sequence[str]] | None = None,
    ) -> Reservation:
        """Take ``demand`` from the free capacity for a job; pick each operator's GPUs.

        ``gpu_ids`` restores the GPUs a job was given before a restart; those ids are taken
        even when the capacity changed meanwhile (the free counts may then go below zero,
        and nothing more is admitted until enough is released).
        """
        if job_key in self._reserved:
            raise ValueError(f"job {job_key} already holds a reservation")
        chosen: dict[str, tuple[str, ...]] = {}
        for operator in demand.operators:
            if gpu_ids is not None:
                ids = tuple(gpu_ids.get(operator.operator, ()))
                self._free_gpus = [g for g in self._free_gpus if g not in ids]
            else:
                ids, self._free_gpus = (
                    tuple(self._free_gpus[: operator.gpus]),
                    self._free_gpus[operator.gpus :],
                )
            chosen[operator.operator] = ids
        self._free_cpus -= demand.cpus
        self._free_memory -= demand.memory_bytes
        reservation = Reservation(demand, chosen, {o.operator for o in demand.operators})
        self._reserved[job_key] = reservation
        return reservation

    def release(self, job_key: K, operators: Iterable[str]) -> None:
        """Give back the share of these operators of an admitted job (their stages ended)."""
        reservation = self._reserved.get(job_key)
        if reservation is None:
            return
        by_name = {o.operator: o for o in reservation.demand.operators}
        for name in operators:
            if name not in reservation.held:
                continue
            reservation.held.discard(name)
            share = by_name[name]
            self._free_cpus += share.cpus
            self._free_memory += share.memory_bytes
            returned = set(reservation.gpu_ids[name])
            # Keep the capacity's order, so that ids are handed out lowest first.
            free = set(self._free_gpus) | returned
            self._free_gpus = [g for g in self.capacity.gpu_ids if g in free]
        if not reservation.held:
            del self._reserved[job_key]

    def release_all(self, job_key: K) -> None:
        """Give back everything an admitted job still holds."""
        reservation = self._reserved.get(job_key)
        if reservation is not None:
            self.release(job_key, list(reservation.held))

    def admit(self) -> list[tuple[K, Reservation]]:
        """Reserve for the jobs at the head of the queue while they fit; return them in order."""
        admitted: list[tuple[K, Reservation]] = []
        while self._waiting and self.fits(self._waiting[0].demand):
            head = self._waiting.pop(0)
            admitted.append((head.job_key, self.reserve(head.job_key, head.demand)))
        return admitted
