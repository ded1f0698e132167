"""Figure 1: life-cycle overhead of a no-op driver vs one raw unary round trip.

Measured: a :class:`clara.Driver` whose prepare, execute and cleanup return True at once,
from ``start()`` to the return of ``wait_for_completion()``, in-process against a
MockPlatform on loopback. Each repetition runs a fresh single-stage job created beforehand,
so job creation is outside the timing. The driver opens its own channel (as an operator
does); a second row gives it an already-open channel, isolating the connection set-up.

Baseline: one StageService.GetStageContext round trip with a generated stub on an
already-open channel to the same server. Repetitions interleave the variants.

Informational rows: the driver alone (a standalone no-op life-cycle: its threads and
bookkeeping, no platform); the same driver life-cycle and unary round trip against a mock platform
running in its own process (as in a deployment, where the platform never shares the
operator's interpreter and its GIL); the protocol floor, the two calls a stage cannot do without
(WatchStage with ``include_context`` up to its first message, which carries the context and
INPUTS_READY, then CompleteStage), made with raw stubs on the open channel, with no progress
events and no threads of a driver; and the cost of a new connection (open a channel, make
one unary call, close it), which the "own channel" row pays and the baseline does not.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc

import clara
from benchmarks._common import (
    Row,
    ServerProcess,
    complete_request,
    open_stub,
    row,
    stage_ref,
)
from clara._grpc_link import CHANNEL_OPTIONS
from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2 as pb
from clara._proto.nvidia.clara.platform.stage.v1 import stage_service_pb2_grpc as pb_grpc
from server_mock import MockPlatform, StageSpec

TITLE = "Figure 1 - life-cycle overhead (no-op driver, start() to wait_for_completion())"
FIGURE = "1 life-cycle"
TARGET_RATIO = 4.0


def _noop(driver: clara.Driver[Any], *args: Any) -> bool:
    return True


def _run_driver(address: str, job_id: Any, channel: Any = None) -> float:
    driver: clara.Driver[Any] = clara.Driver(
        prepare=_noop,
        execute=_noop,
        cleanup=_noop,
        target=address,
        job_id=job_id,
        stage_name="only",
        channel=channel,
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


def _against_another_process(repetitions: int, warmup: int) -> tuple[list[float], list[float]]:
    """Driver life-cycles (given channel) and unary round trips, interleaved, to a mock
    platform in a subprocess."""
    lifecycles: list[float] = []
    unary: list[float] = []
    with ServerProcess() as server:
        channel, stub = open_stub(server.address)
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
    own: list[float] = []
    shared: list[float] = []
    unary: list[float] = []
    floor: list[float] = []
    connection: list[float] = []
    alone: list[float] = []
    with MockPlatform() as platform:
        channel, stub = open_stub(platform.address)
        try:
            job_ids = [
                platform.create_job([StageSpec("only")], name=f"noop-{i}")
                for i in range(3 * (repetitions + warmup))
            ]
            request = pb.GetStageContextRequest(stage=stage_ref(job_ids[0], "only"))
            for rep in range(repetitions + warmup):
                # Interleave, rotating the order so no variant always runs first.
                order = [(rep + k) % 6 for k in range(6)]
                samples: dict[int, float] = {}
                for which in order:
                    if which == 0:
                        samples[0] = _run_driver(platform.address, job_ids[3 * rep])
                    elif which == 1:
                        samples[1] = _run_driver(platform.address, job_ids[3 * rep + 1], channel)
                    elif which == 3:
                        samples[3] = _protocol_floor(stub, job_ids[3 * rep + 2])
                    elif which == 4:
                        samples[4] = _new_connection(platform.address, request)
                    elif which == 5:
                        samples[5] = _run_standalone()
                    else:
                        started = time.perf_counter()
                        stub.GetStageContext(request, timeout=10)
                        samples[2] = time.perf_counter() - started
                if rep >= warmup:
                    own.append(samples[0] * 1e3)
                    shared.append(samples[1] * 1e3)
                    unary.append(samples[2] * 1e3)
                    floor.append(samples[3] * 1e3)
                    connection.append(samples[4] * 1e3)
                    alone.append(samples[5] * 1e3)
        finally:
            channel.close()
    apart, apart_unary = _against_another_process(repetitions, warmup)
    target = f"median <= {TARGET_RATIO:g}x"
    baseline = "unary RTT (GetStageContext)"
    return [
        row(
            FIGURE,
            "driver life-cycle, own channel",
            "ms",
            own,
            baseline=baseline,
            base_samples=unary,
            target=target,
            check=lambda r: r.ratio <= TARGET_RATIO,
        ),
        row(
            FIGURE,
            "driver life-cycle, given open channel",
            "ms",
            shared,
            baseline=baseline,
            base_samples=unary,
            target=target,
            check=lambda r: r.ratio <= TARGET_RATIO,
        ),
        row(
            FIGURE,
            "driver alone: standalone no-op life-cycle",
            "ms",
            alone,
            baseline=baseline,
            base_samples=unary,
            note="the driver's threads and bookkeeping, no platform calls; no target",
        ),
        row(
            FIGURE,
            "driver life-cycle, mock in its own process",
            "ms",
            apart,
            baseline="unary RTT to that process",
            base_samples=apart_unary,
            note="given open channel; the deployment's shape: no GIL shared with the platform",
        ),
        row(
            FIGURE,
            "protocol floor: raw watch(+context)+complete",
            "ms",
            floor,
            baseline=baseline,
            base_samples=unary,
            note="what any driver must wait for; no target",
        ),
        row(
            FIGURE,
            "new connection: channel+1 call+close",
            "ms",
            connection,
            baseline=baseline,
            base_samples=unary,
            note="paid by the 'own channel' row only; no target",
        ),
    ]
