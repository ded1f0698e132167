"""Shared pieces: statistics, result rows, table output, raw stubs and a server subprocess."""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from clara.stage_api import stage_service_pb2 as pb
from clara.stage_api import stage_service_pb2_grpc as pb_grpc

LOOPBACK = "127.0.0.1"
PYTHON = sys.executable
# A channel of its own per client (no subchannel shared with other channels of the process),
# as a driver in its own process would have.
OWN_CONNECTION: list[tuple[str, int | str]] = [("grpc.use_local_subchannel_pool", 1)]


# -- statistics ------------------------------------------------------------------------------


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else math.nan


def p99(samples: Sequence[float]) -> float:
    """The nearest-rank 99th percentile (the maximum when there are fewer than 100 samples)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass(slots=True)
class Row:
    """One measured figure next to its baseline.

    ``ratio`` is measured median / baseline median. ``passed`` is None for a row that is
    informational (no target).
    """

    figure: str
    metric: str
    unit: str
    median: float
    p99: float
    n: int
    baseline: str = ""
    base_median: float = math.nan
    base_p99: float = math.nan
    base_n: int = 0
    target: str = ""
    passed: bool | None = None
    note: str = ""
    ratio: float = field(init=False)

    def __post_init__(self) -> None:
        self.ratio = (
            self.median / self.base_median
            if self.base_median and not math.isnan(self.base_median)
            else math.nan
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def row(
    figure: str,
    metric: str,
    unit: str,
    samples: Sequence[float],
    *,
    baseline: str = "",
    base_samples: Sequence[float] = (),
    target: str = "",
    check: Callable[[Row], bool] | None = None,
    note: str = "",
) -> Row:
    """Summarise ``samples`` (and the baseline's) into a :class:`Row`; ``check`` decides PASS."""
    result = Row(
        figure=figure,
        metric=metric,
        unit=unit,
        median=median(samples),
        p99=p99(samples),
        n=len(samples),
        baseline=baseline,
        base_median=median(base_samples),
        base_p99=p99(base_samples),
        base_n=len(base_samples),
        target=target,
        note=note,
    )
    if check is not None:
        result.passed = bool(check(result))
    return result


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(title: str, rows: Sequence[Row]) -> str:
    """A plain-text table of one figure's rows, then their notes."""
    header = (
        "metric",
        "unit",
        "median",
        "p99",
        "n",
        "baseline",
        "b.median",
        "b.p99",
        "ratio",
        "target",
        "result",
    )
    lines = [
        (
            r.metric,
            r.unit,
            _num(r.median),
            _num(r.p99),
            str(r.n),
            r.baseline or "-",
            _num(r.base_median),
            _num(r.base_p99),
            "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}x",
            r.target or "-",
            "info" if r.passed is None else ("PASS" if r.passed else "MISS"),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    numeric = {2, 3, 4, 6, 7, 8}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [title, fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(line) for line in lines]
    out += [f"  * {r.metric}: {r.note}" for r in rows if r.note]
    return "\n".join(out)


# -- raw stage API ----------------------------------------------------------------------------


def stage_ref(job_id: uuid.UUID, stage: str) -> pb.StageRef:
    return pb.StageRef(job_id=str(job_id), stage_name=stage)


def complete_request(job_id: uuid.UUID, stage: str) -> pb.CompleteStageRequest:
    return pb.CompleteStageRequest(
        stage=stage_ref(job_id, stage),
        report_id=uuid.uuid4().hex,
        outcome=pb.STAGE_OUTCOME_SUCCEEDED,
        message="benchmark",
    )


def open_stub(address: str) -> tuple[grpc.Channel, pb_grpc.StageServiceStub]:
    """A connected channel (one round trip already made) and its stage stub."""
    channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel, pb_grpc.StageServiceStub(channel)


# -- a mock platform in a subprocess ----------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """Threads, VmRSS and VmHWM (kB) of a process, from ``/proc/<pid>/status``."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("Threads", "VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def _serve(conn: multiprocessing.connection.Connection, workspace: str) -> None:
    """The server process: a MockPlatform answering commands from the parent over ``conn``."""
    import threading  # noqa: PLC0415 - child-only

    from server_mock import InputRef, MockPlatform, StageSpec  # noqa: PLC0415

    platform = MockPlatform(LOOPBACK, workspace=Path(workspace))
    conn.send(platform.start())
    try:
        while True:
            command, *args = conn.recv()
            if command == "stop":
                return
            if command == "fan_out":  # one root stage, n stages reading from it
                (n,) = args
                specs = [StageSpec("root")] + [
                    StageSpec(f"s{i}", inputs=(InputRef("/in", "root"),)) for i in range(n)
                ]
                conn.send(platform.create_job(specs, name=f"fan-out-{n}"))
            elif command == "single":  # n jobs of one stage, "only"
                (n,) = args
                conn.send([platform.create_job([StageSpec("only")]) for _ in range(n)])
            elif command == "threads":
                conn.send(threading.active_count())
            elif command == "cancel":
                conn.send(platform.cancel_job(args[0], "benchmark over"))
            else:
                conn.send(ValueError(f"unknown command {command!r}"))
    finally:
        platform.stop(grace=0.5)


class ServerProcess:
    """A MockPlatform in a spawned subprocess, so its threads and memory can be read alone."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        # The parent owns the workspace, so it is removed even when the server is killed.
        self._workspace = tempfile.TemporaryDirectory(prefix="clara-bench-server-")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve, args=(child, self._workspace.name), name="mock-platform", daemon=True
        )
        self._process.start()
        child.close()
        if not self._conn.poll(30):
            self.kill()
            raise RuntimeError("the mock platform subprocess did not start within 30 s")
        self.address: str = self._conn.recv()

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def ask(self, *command: object, timeout: float = 60) -> Any:
        self._conn.send(command)
        if not self._conn.poll(timeout):
            raise TimeoutError(f"the mock platform did not answer {command[0]!r} in {timeout} s")
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def status(self) -> dict[str, int]:
        return proc_status(self.pid)

    def stop(self) -> None:
        try:
            self._conn.send(("stop",))
            self._process.join(10)
        except (BrokenPipeError, OSError):
            pass
        self.kill()

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)
        self._conn.close()
        self._workspace.cleanup()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
