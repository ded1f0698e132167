"""Figure 1: life-cycle overhead of a no-op driver vs one raw unary round trip.

Measured: a :class:`clara.Driver` whose prepare, execute and cleanup return True at once,
from ``start()`` to the return of ``wait_for_completion()``, in-process against a
MockPlatform on loopback. Each repetition runs a fresh single-stage job created beforehand,
so job creation is outside the timing. The driver uses its own channel (as an operator
does), which drivers of one process share (``clara._channels``), so after the first driver
the connection is already up; a second row gives it an already-open channel opened with
``clara.CHANNEL_OPTIONS``; a third gives it an outbox (``NVIDIA_CLARA_OUTBOX``, a folder per
stage made beforehand in the system's temporary folder, where the mock's default workspace
is too), as every operator the mock launches has: the outcome record's write and its two
fsyncs overlap the report's round trip (``clara._outbox``).

Baseline: one StageService.GetStageContext round trip with a generated stub on an
already-open channel to the same server. Repetitions interleave the variants.

Informational rows: the own-channel life-cycle when the process has no open channel (a new
connection, as the first driver of a process pays); a given channel opened without
``clara.CHANNEL_OPTIONS`` (gRPC then starts a helper thread for each signal stream); the
driver alone (a standalone no-op life-cycle: its threads and bookkeeping, no platform); the
same driver life-cycle and unary round trip against a mock platform running in its own
process (as in a deployment, where the platform never shares the operator's interpreter and
its GIL); the protocol floor, the two calls a stage cannot do without (WatchStage with
``include_context`` up to its first message, which carries the context and INPUTS_READY,
then CompleteStage), made with raw stubs on the open channel, with no progress events and no
threads of a driver; and the cost of a new connection (open a channel, make one unary call,
close it), which the first driver of a process pays and the baseline does not.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

import clara
from benchmarks._common import (
    OWN_CONNECTION,
    Row,
    ServerProcess,
    complete_request,
    open_stub,
    row,
    stage_ref,
)
from clara import CHANNEL_OPTIONS
from clara._channels import retire_channels
from clara._threads import running_tasks
from clara.contract import ENV_OUTBOX
from clara.stage_api import stage_service_pb2 as pb
from clara.stage_api import stage_service_pb2_grpc as pb_grpc
from server_mock import MockPlatform, StageSpec

TITLE = "Figure 1 - life-cycle overhead (no-op driver, start() to wait_for_completion())"
FIGURE = "1 life-cycle"
TARGET_RATIO = 4.0


def _noop(driver: clara.Driver[Any], *args: Any) -> bool:
    return True


def _run_driver(
    address: str, job_id: Any, channel: Any = None, outbox: Path | None = None
) -> float:
    driver: clara.Driver[Any] = clara.Driver(
        prepare=_noop,
        execute=_noop,
        cleanup=_noop,
        target=address,
        job_id=job_id,
        stage_name="only",
        channel=channel,
        environ=None if outbox is None else {**os.environ, ENV_OUTBOX: str(outbox)},
    )
    started = time.perf_counter()
    driver.start()
    result = driver.wait_for_completion(30)
    elapsed = time.perf_counter() - started
    if not (result.succeeded and result.reported):
        raise RuntimeError(f"the no-op driver did not succeed: {result}")
    return elapsed


def _run_standalone() -> float:
    driver: clara.Driver[Any] = clara.Driver(
        prepare=_noop,
        execute=_noop,
        cleanup=_noop,
        standalone=True,
        job_id=uuid.uuid4(),
        stage_name="only",
        environ={},
    )
    started = time.perf_counter()
    driver.start()
    result = driver.wait_for_completion(30)
    elapsed = time.perf_counter() - started
    if not result.succeeded:
        raise RuntimeError(f"the standalone no-op driver did not succeed: {result}")
    return elapsed


def _protocol_floor(stub: Any, job_id: Any) -> float:
    ref = stage_ref(job_id, "only")
    started = time.perf_counter()
    stream = stub.WatchStage(pb.WatchStageRequest(stage=ref, include_context=True), timeout=10)
    try:
        first = next(stream)
    finally:
        stream.cancel()
    stub.CompleteStage(complete_request(job_id, "only"), timeout=10)
    elapsed = time.perf_counter() - started
    if first.signal != pb.STAGE_SIGNAL_INPUTS_READY or not first.HasField("context"):
        raise RuntimeError(f"expected INPUTS_READY with the context, got {first}")
    return elapsed


def _new_connection(address: str, request: pb.GetStageContextRequest) -> float:
    started = time.perf_counter()
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        pb_grpc.StageServiceStub(channel).GetStageContext(request, timeout=10)
    finally:
        channel.close()
    return time.perf_counter() - started


def _recommended_channel(address: str) -> grpc.Channel:
    """A connected channel of its own, opened with the options clara recommends."""
    channel = grpc.insecure_channel(address, options=[*CHANNEL_OPTIONS, *OWN_CONNECTION])
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel


def _against_another_process(repetitions: int, warmup: int) -> tuple[list[float], list[float]]:
    """Driver life-cycles (given channel) and unary round trips, interleaved, to a mock
    platform in a subprocess."""
    lifecycles: list[float] = []
    unary: list[float] = []
    with ServerProcess() as server:
        channel = _recommended_channel(server.address)
        stub = pb_grpc.StageServiceStub(channel)
        try:
            job_ids = server.ask("single", repetitions + warmup)
            request = pb.GetStageContextRequest(stage=stage_ref(job_ids[0], "only"))
            for rep, job_id in enumerate(job_ids):
                lifecycle = _run_driver(server.address, job_id, channel)
                started = time.perf_counter()
                stub.GetStageContext(request, timeout=10)
                rtt = time.perf_counter() - started
                if rep >= warmup:
                    lifecycles.append(lifecycle * 1e3)
                    unary.append(rtt * 1e3)
        finally:
            channel.close()
    return lifecycles, unary


def run(quick: bool) -> list[Row]:
    repetitions = 40 if quick else 300
    warmup = 5
    variants = 9
    samples: dict[str, list[float]] = {}
    with MockPlatform() as platform, tempfile.TemporaryDirectory() as outboxes:
        channel, stub = open_stub(platform.address)
        recommended = _recommended_channel(platform.address)
        try:
            job_ids = iter(
                [
                    platform.create_job([StageSpec("only")], name=f"noop-{i}")
                    for i in range(6 * (repetitions + warmup) + 1)
                ]
            )
            # Each stage's outbox folder exists before it runs, as the mock creates it.
            folders = [Path(outboxes, str(i)) for i in range(repetitions + warmup)]
            for folder in folders:
                folder.mkdir()
            outbox_folders = iter(folders)
            request = pb.GetStageContextRequest(stage=stage_ref(next(job_ids), "only"))

            def unary() -> float:
                started = time.perf_counter()
                stub.GetStageContext(request, timeout=10)
                return time.perf_counter() - started

            def new_connection_lifecycle() -> float:
                retire_channels()  # outside the timing: the driver must connect afresh
                return _run_driver(platform.address, next(job_ids))

            measured: dict[str, Any] = {
                "own": lambda: _run_driver(platform.address, next(job_ids)),
                "given": lambda: _run_driver(platform.address, next(job_ids), recommended),
                "outbox": lambda: _run_driver(
                    platform.address, next(job_ids), outbox=next(outbox_folders)
                ),
                "unary": unary,
                "new connection lifecycle": new_connection_lifecycle,
                "plain given": lambda: _run_driver(platform.address, next(job_ids), channel),
                "floor": lambda: _protocol_floor(stub, next(job_ids)),
                "connection": lambda: _new_connection(platform.address, request),
                "alone": _run_standalone,
            }
            assert len(measured) == variants
            names = list(measured)
            for rep in range(repetitions + warmup):
                # Interleave, rotating the order so no variant always runs first.
                for k in range(variants):
                    name = names[(rep + k) % variants]
                    elapsed = measured[name]()
                    if rep >= warmup:
                        samples.setdefault(name, []).append(elapsed * 1e3)
            for task in running_tasks():  # the last outbox writes, before the folder goes
                if task.name == "clara-outbox":
                    task.join(10)
        finally:
            recommended.close()
            channel.close()
    apart, apart_unary = _against_another_process(repetitions, warmup)
    target = f"median <= {TARGET_RATIO:g}x"
    baseline = "unary RTT (GetStageContext)"

    def targeted(name: str, label: str) -> Row:
        return row(
            FIGURE,
            label,
            "ms",
            samples[name],
            baseline=baseline,
            base_samples=samples["unary"],
            target=target,
            check=lambda r: r.ratio <= TARGET_RATIO,
        )

    def info(name: str, label: str, note: str) -> Row:
        return row(
            FIGURE,
            label,
            "ms",
            samples[name],
            baseline=baseline,
            base_samples=samples["unary"],
            note=note,
        )

    return [
        targeted("own", "driver life-cycle, own channel"),
        targeted("given", "driver life-cycle, given channel"),
        targeted("outbox", "driver life-cycle, own channel, with an outbox"),
        info(
            "new connection lifecycle",
            "own channel, new connection",
            "no open channel in the process (as for its first driver); no target",
        ),
        info(
            "plain given",
            "given channel without CHANNEL_OPTIONS",
            "gRPC starts a helper thread per signal stream; no target",
        ),
        info(
            "alone",
            "driver alone: standalone no-op life-cycle",
            "the driver's threads and bookkeeping, no platform calls; no target",
        ),
        row(
            FIGURE,
            "driver life-cycle, mock in its own process",
            "ms",
            apart,
            baseline="unary RTT to that process",
            base_samples=apart_unary,
            note="given channel; the deployment's shape: no GIL shared with the platform",
        ),
        info(
            "floor",
            "protocol floor: raw watch(+context)+complete",
            "what any driver must wait for; no target",
        ),
        info(
            "connection",
            "new connection: channel+1 call+close",
            "paid by the first driver of a process only; no target",
        ),
    ]
