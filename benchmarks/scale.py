"""Figure 3: 1,000 stages waiting for inputs at once, then released together.

Each round starts a fresh MockPlatform in a subprocess (so its threads and memory are its
own) with one job: a ``root`` stage and 1,000 stages reading from it. Two client processes
(grpc.aio) open one channel per stage, each on its own TCP connection as a driver in its own
process would, and a WatchStage stream on each; every stream's first message is WAITING.

Reported:

* the server's thread count with 0 and with 1,000 waiting streams (``threading.active_count()``
  in the server process and ``Threads`` of ``/proc/<pid>/status``);
* memory per waiting stage: the server's VmRSS growth from before the clients connect to all
  1,000 streams waiting, divided by 1,000 (target < 50 KB);
* stage completions per second, end to end: the benchmark calls CompleteStage(root); every
  client stage then receives INPUTS_READY and calls CompleteStage itself; throughput is the
  completions over the time from CompleteStage(root) to the last completion (target >=
  1,000/s on 2 cores). The release is bounded in time: when the window closes first, the
  completions done within it are counted over the window.

Baseline for throughput: raw unary round trips per second (GetStageContext), 1,000 at once over
the same 1,000 connections, against the same server with the streams waiting.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import time
import uuid
from typing import Any

from benchmarks._common import (
    OWN_CONNECTION,
    Row,
    ServerProcess,
    complete_request,
    open_stub,
    row,
)

TITLE = "Figure 3 - scale: 1,000 stages waiting on one upstream, then released"
FIGURE = "3 scale"
STAGES = 1000
CLIENTS = 2
TARGET_KB_PER_STAGE = 50.0
TARGET_COMPLETIONS = 1000.0


# -- the client processes ---------------------------------------------------------------------


async def _client(conn: multiprocessing.connection.Connection, address: str) -> None:
    import grpc  # noqa: PLC0415 - the client process imports what it needs

    from clara.stage_api import (  # noqa: PLC0415
        stage_service_pb2 as pb,
    )
    from clara.stage_api import (  # noqa: PLC0415
        stage_service_pb2_grpc as pb_grpc,
    )

    loop = asyncio.get_running_loop()

    async def recv() -> Any:
        return await loop.run_in_executor(None, conn.recv)

    job_id, names = await recv()
    channels = [grpc.aio.insecure_channel(address, options=OWN_CONNECTION) for _ in names]
    stubs = [pb_grpc.StageServiceStub(c) for c in channels]
    refs = [pb.StageRef(job_id=job_id, stage_name=n) for n in names]
    calls: list[Any] = []
    try:
        # Open the streams: one per stage, each on its own connection, WAITING first.
        started = time.monotonic()
        calls += [
            s.WatchStage(pb.WatchStageRequest(stage=r)) for s, r in zip(stubs, refs, strict=True)
        ]
        firsts = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 60)
        waiting = sum(f.signal == pb.STAGE_SIGNAL_WAITING for f in firsts)
        conn.send(("waiting", waiting, time.monotonic() - started))

        while True:
            command, *args = await recv()
            if command == "unary":  # the baseline burst: every connection, one call, at once
                (go_at,) = args
                await asyncio.sleep(max(go_at - time.monotonic(), 0))
                begun = time.monotonic()
                await asyncio.gather(
                    *(
                        s.GetStageContext(pb.GetStageContextRequest(stage=r), timeout=60)
                        for s, r in zip(stubs, refs, strict=True)
                    )
                )
                conn.send(("unary", begun, time.monotonic()))
            elif command == "release":  # wait for INPUTS_READY, then complete, until deadline
                (deadline,) = args
                done: list[float] = []

                async def one(call: Any, stub: Any, ref: Any, done: list[float] = done) -> None:
                    message = await call.read()
                    if message.signal != pb.STAGE_SIGNAL_INPUTS_READY:
                        raise RuntimeError(f"expected INPUTS_READY, got {message}")
                    await stub.CompleteStage(
                        pb.CompleteStageRequest(
                            stage=ref,
                            report_id=uuid.uuid4().hex,
                            outcome=pb.STAGE_OUTCOME_SUCCEEDED,
                        ),
                        timeout=60,
                    )
                    done.append(time.monotonic())

                tasks = [
                    asyncio.ensure_future(one(c, s, r))
                    for c, s, r in zip(calls, stubs, refs, strict=True)
                ]
                await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0))
                errors = [repr(t.exception()) for t in tasks if t.done() and t.exception()]
                for task in tasks:
                    task.cancel()
                conn.send(("released", done, errors[:3]))
                return
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*(c.close(grace=None) for c in channels), return_exceptions=True)


def _client_main(conn: multiprocessing.connection.Connection, address: str) -> None:
    asyncio.run(_client(conn, address))


# -- one round --------------------------------------------------------------------------------


class _Clients:
    def __init__(self, address: str, job_id: uuid.UUID, names: list[str]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.processes: list[Any] = []
        for index in range(CLIENTS):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_client_main, args=(child, address), daemon=True)
            process.start()
            child.close()
            parent.send((str(job_id), names[index::CLIENTS]))
            self.conns.append(parent)
            self.processes.append(process)

    def send(self, *message: object) -> None:
        for conn in self.conns:
            conn.send(message)

    def gather(self, timeout: float) -> list[Any]:
        answers = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise TimeoutError(f"a client process did not answer within {timeout} s")
            answers.append(conn.recv())
        return answers

    def close(self) -> None:
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        for conn in self.conns:
            conn.close()


def _round(window: float, bursts: int) -> dict[str, Any]:
    server = ServerProcess()
    clients: _Clients | None = None
    try:
        job_id = server.ask("fan_out", STAGES)
        names = [f"s{i}" for i in range(STAGES)]
        idle = server.status()
        idle_threads = server.ask("threads")
        clients = _Clients(server.address, job_id, names)
        answers = clients.gather(120)
        if sum(a[1] for a in answers) != STAGES:
            raise RuntimeError(f"not every stream started WAITING: {answers}")
        time.sleep(0.5)  # let the server settle before reading its memory
        loaded = server.status()
        loaded_threads = server.ask("threads")

        unary_rates = []
        for _ in range(bursts):
            clients.send("unary", time.monotonic() + 0.2)
            spans = clients.gather(60)
            begun, ended = min(s[1] for s in spans), max(s[2] for s in spans)
            unary_rates.append(STAGES / (ended - begun))

        channel, stub = open_stub(server.address)
        try:
            released = time.monotonic()
            clients.send("release", released + window)
            stub.CompleteStage(complete_request(job_id, "root"), timeout=30)
        finally:
            channel.close()
        results = clients.gather(window + 60)
        done = sorted(t for r in results for t in r[1])
        errors = [e for r in results for e in r[2]]
        if errors:
            raise RuntimeError(f"client errors: {errors}")
        finished = len(done) == STAGES
        span = (done[-1] - released) if finished else window
        return {
            "idle_threads": idle["Threads"],
            "idle_py_threads": idle_threads,
            "loaded_threads": loaded["Threads"],
            "loaded_py_threads": loaded_threads,
            "kb_per_stage": (loaded["VmRSS"] - idle["VmRSS"]) / STAGES,
            "idle_rss_mb": idle["VmRSS"] / 1024,
            "completions": len(done),
            "rate": len(done) / span,
            "unary_rates": unary_rates,
            "finished": finished,
        }
    finally:
        server.kill()  # the server may still be busy with a backlog: no graceful stop
        if clients is not None:
            clients.close()


def run(quick: bool) -> list[Row]:
    rounds = 1 if quick else 3
    window = 6.0 if quick else 15.0
    bursts = 2 if quick else 3
    results = [_round(window, bursts) for _ in range(rounds)]
    unary = [rate for r in results for rate in r["unary_rates"]]
    rates = [r["rate"] for r in results]
    unfinished = [r["completions"] for r in results if not r["finished"]]
    note = (
        f"the release window ({window:g} s) closed first in {len(unfinished)}/{rounds} round(s): "
        f"{', '.join(map(str, unfinished))} of {STAGES} stages completed"
        if unfinished
        else ""
    )
    return [
        row(
            FIGURE,
            "server threads, 0 waiting",
            "threads",
            [r["idle_threads"] for r in results],
            note="/proc Threads; threading.active_count() in the server: "
            + ", ".join(str(r["idle_py_threads"]) for r in results),
        ),
        row(
            FIGURE,
            f"server threads, {STAGES} waiting",
            "threads",
            [r["loaded_threads"] for r in results],
            baseline="0 waiting",
            base_samples=[r["idle_threads"] for r in results],
            target="ratio <= 1.5x",
            check=lambda r: r.ratio <= 1.5,
            note="threading.active_count() in the server: "
            + ", ".join(str(r["loaded_py_threads"]) for r in results),
        ),
        row(
            FIGURE,
            "server memory per waiting stage",
            "KiB",
            [r["kb_per_stage"] for r in results],
            target=f"< {TARGET_KB_PER_STAGE:g} KiB",
            check=lambda r: r.median < TARGET_KB_PER_STAGE,
            note="VmRSS growth / 1000 (stream + its own connection); idle server "
            + ", ".join(f"{r['idle_rss_mb']:.0f}" for r in results)
            + " MB",
        ),
        row(
            FIGURE,
            "stage completions end to end",
            "1/s",
            rates,
            baseline="raw unary RTT/s",
            base_samples=unary,
            target=f">= {TARGET_COMPLETIONS:,.0f}/s",
            check=lambda r: r.median >= TARGET_COMPLETIONS,
            note=note,
        ),
    ]
