"""`clara-mock serve --gpus N`: a real server queues what does not fit, across a kill -9."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from _cli_helpers import CLI, PROCESS_WAIT, read_until, stop_process
from _launch import DRIVER_OPERATOR, Listener, listener
from _queue_jobs import Holder, Jobs, holding_operator, next_holder

from server_mock._proto.nvidia.clara.platform import jobs_pb2

ENDED_WELL = (jobs_pb2.JOB_STATE_STOPPED, jobs_pb2.JOB_STATUS_HEALTHY)


class Serve:
    """`clara-mock serve --state` in a subprocess; restarts reuse its first (ephemeral) port."""

    def __init__(self, tmp_path: Path, *flags: str) -> None:
        self._tmp = tmp_path
        self._flags = flags
        self.port = 0
        self.address = ""
        self.process: subprocess.Popen[str] | None = None
        self._starts = 0
        (tmp_path / "ops").mkdir()
        (tmp_path / "ops" / "op.py").write_text(DRIVER_OPERATOR)

    def start(self) -> str:
        self._starts += 1
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("CLARA_MOCK_ADDRESS", None)
        with (self._tmp / f"serve-{self._starts}.log").open("w") as log:
            self.process = subprocess.Popen(
                [
                    *CLI,
                    "-v",
                    "serve",
                    "--port",
                    str(self.port),
                    "--state",
                    str(self._tmp / "state.db"),
                    "--operators-dir",
                    str(self._tmp / "ops"),
                    "--runner",
                    "process",  # operators outlive a killed server, as with a real cluster
                    *self._flags,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
        line = read_until(self.process, "listening on", PROCESS_WAIT).strip().splitlines()[-1]
        self.address = line.rsplit(" ", 1)[1]
        self.port = int(self.address.rsplit(":", 1)[1])
        return self.address

    def kill(self) -> None:
        """SIGKILL: nothing of the server's shutdown runs."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(PROCESS_WAIT)
            if process.stdout is not None:
                process.stdout.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)


@pytest.fixture
def ear() -> Iterator[Listener]:
    with listener() as server:
        yield server


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    """Operators that said who they are; killed at teardown if still alive."""
    seen: list[Holder] = []
    yield seen
    for holder in seen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder.pid, signal.SIGKILL)


def test_serve_gpus_queues_a_job_and_the_queue_survives_a_kill(
    tmp_path: Path, ear: Listener, holders: list[Holder]
) -> None:
    server = Serve(tmp_path, "--gpus", "1")
    try:
        jobs = Jobs(server.start(), tmp_path)
        pipeline_id = jobs.create_pipeline(holding_operator("seg", ear.address, "{gpu: 1}"))
        first, second = jobs.create(pipeline_id, "first"), jobs.create(pipeline_id, "second")
        assert jobs.start(first).state == jobs_pb2.JOB_STATE_RUNNING
        holders.append(next_holder(ear))
        assert (holders[0].job_id, holders[0].gpus) == (first, "0")
        assert jobs.start(second).state == jobs_pb2.JOB_STATE_PENDING
        jobs.close()

        server.kill()
        jobs = Jobs(server.start(), tmp_path)  # same port, same state file
        assert jobs.status(second).state == jobs_pb2.JOB_STATE_PENDING  # still queued
        assert jobs.status(first).state == jobs_pb2.JOB_STATE_RUNNING  # still holds the GPU

        holders[0].release()  # its driver reports to the restarted server
        holders[0].wait_exit()
        done = jobs.status(first)
        assert (done.state, done.status) == ENDED_WELL
        holders.append(next_holder(ear))  # launched by the restarted server
        assert (holders[1].job_id, holders[1].gpus) == (second, "0")
        holders[1].release()
        holders[1].wait_exit()
        last = jobs.status(second)
        assert (last.state, last.status) == ENDED_WELL
        jobs.close()
    finally:
        server.stop()


def test_serve_refuses_a_request_larger_than_its_gpus(tmp_path: Path, ear: Listener) -> None:
    server = Serve(tmp_path, "--gpus", "1", "--cpus", "2", "--memory", "1G")
    try:
        jobs = Jobs(server.start(), tmp_path)
        definition = holding_operator("seg", ear.address, "{gpu: 1, cpu: 3, memory: 2048}")
        job_id = jobs.create(jobs.create_pipeline(definition))
        refused = jobs.start(job_id)
        assert refused.header.code < 0
        (message,) = refused.header.messages
        assert "operator 'seg', field requests.cpu: it requests 3 CPU(s); the platform has 2" in (
            message
        )
        assert "field requests.memory: it requests 2 GiB; the platform has 1 GiB" in message
        assert "requests.gpu" not in message
        assert jobs.status(job_id).state == jobs_pb2.JOB_STATE_PENDING
        jobs.close()
    finally:
        server.stop()


def test_run_refuses_a_pipeline_larger_than_the_host_before_anything_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "pipeline.yaml").write_text(
        textwrap.dedent(
            """\
            api-version: 0.4.0
            name: big
            operators:
            - name: seg
              container: {image: t/seg, command: [python, seg.py]}
              requests: {gpu: 2}
              input: [{path: /input}]
            """
        )
    )
    pipeline, inputs = str(tmp_path / "pipeline.yaml"), str(tmp_path / "in")
    result = subprocess.run(
        [*CLI, "run", pipeline, "--input", inputs, "--gpus", "1"],
        capture_output=True,
        text=True,
        timeout=PROCESS_WAIT,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "operator 'seg', field requests.gpu: it requests 2 GPU(s); the platform has 1" in (
        result.stderr
    )
