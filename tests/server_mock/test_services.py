"""A pipeline's ``services`` run as real processes: before the operators, stopped after them.

The service is a small ``http.server`` script (tests/_service_scripts.py) mapped with the
operator map; the operator calls it through the variable its connection names.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from _launch import WAIT, Listener, Platform, listener, pipeline, platform
from _service_scripts import IMAGE, SERVICE, operator_with_service, pid_of

from server_mock import JobState, StageState
from server_mock._client import PlatformApiError
from server_mock._runner import RunnerTimeouts


def _platform(tmp_path: Path, **timeouts: float) -> Any:
    operator_map = {
        f"{IMAGE}:{mode}": ["python", "service.py", mode]
        for mode in ("serve", "exit", "ignore-term", "silent")
    }
    return platform(
        tmp_path,
        {"service.py": SERVICE},
        runner="process",
        operator_map=operator_map,
        timeouts=RunnerTimeouts(timeout_grace=1, exit_grace=5, kill_grace=2, **timeouts),
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _service_log(running: Platform, job_id: uuid.UUID, name: str = "trtis") -> str:
    return (running.layout(job_id).logs_dir / "services" / f"{name}.log").read_text()


@pytest.mark.parametrize("tag", ["serve", "ignore-term"])
def test_a_mapped_service_serves_the_operator_and_is_stopped_after_it(
    tmp_path: Path, tag: str
) -> None:
    with _platform(tmp_path) as running, listener() as server:
        run = running.run(pipeline(operator_with_service("infer", server, tag)))
        assert run.job.state is JobState.SUCCEEDED, run.job.message
        service, said = server.accept()
        pid = pid_of(said, "service")
        answer = json.loads((run.output("infer") / "answer.json").read_text())
        # One port, chosen by the mock (not the declared 8000), in every variable that names it.
        port = answer["port"]
        assert port != 8000 and answer["own_port"] == port
        assert answer["uri"] == f"localhost:{port}"
        assert answer["pid"] == pid and answer["path"] == "/v2/health/ready"
        assert answer["model"] == "segmentation"  # the service's own variables
        # run() returns once every process of the job has exited: the service too.
        assert Listener.closed(service) and _gone(pid)
        log = _service_log(running, run.job_id)
        assert f"service pid {pid} mode {tag}" in log
        # A service that ends on SIGTERM got it; one that ignores it was killed after the grace.
        assert ("stopping on SIGTERM" in log) is (tag == "serve")


@pytest.mark.parametrize("ending", ["failed", "cancelled", "timed_out"])
def test_the_service_is_stopped_however_the_job_ends(tmp_path: Path, ending: str) -> None:
    with _platform(tmp_path) as running, listener() as server:
        operator = operator_with_service(
            "infer", server, end="fail" if ending == "failed" else "hang"
        )
        if ending == "timed_out":
            operator = operator.replace("  services:", "  timeout: 5\n  services:")
        job_id = running.submit(pipeline(operator))
        service, said = server.accept()
        pid = pid_of(said, "service")
        _, said = server.accept()
        assert json.loads(said.split(" ", 2)[2])["pid"] == pid
        if ending == "cancelled":
            with running.client() as client:
                client.cancel_job(job_id, "test")
        job = running.mock.wait_for_job(job_id, WAIT)
        assert job.stages["infer"].state is StageState(ending)
        assert job.state is (JobState.CANCELLED if ending == "cancelled" else JobState.FAILED)
        assert running.mock.call_async(lambda: running.launcher.wait_idle(WAIT), WAIT + 5)
        assert Listener.closed(service) and _gone(pid)


def test_operators_declaring_the_same_service_share_one_instance(tmp_path: Path) -> None:
    with _platform(tmp_path) as running, listener() as server:
        second = operator_with_service("second", server).replace(
            "input: [{path: /input}]", "input: [{from: first, path: /input}]"
        )
        run = running.run(pipeline(operator_with_service("first", server) + second))
        assert run.job.state is JobState.SUCCEEDED, run.job.message
        service, said = server.accept()
        pid = pid_of(said, "service")
        answers = [
            json.loads((run.output(op) / "answer.json").read_text()) for op in run.job.stages
        ]
        assert [a["pid"] for a in answers] == [pid, pid]
        assert Listener.closed(service) and _gone(pid)


def test_a_service_that_exits_at_once_fails_start_naming_it_and_its_log(tmp_path: Path) -> None:
    with _platform(tmp_path) as running, listener() as server:
        with pytest.raises(PlatformApiError) as refused:
            running.submit(pipeline(operator_with_service("infer", server, "exit")))
        message = str(refused.value)
        assert "operator 'infer', field services[0]: service 'trtis' exited with code 3" in message
        assert "services/trtis.log" in message and "cannot load the model store" in message
        (job_id,) = running.mock.call(lambda: list(running.mock.state.job_records))
        assert running.mock.job(job_id).state is JobState.CREATED
        assert running.launcher.exit_codes == {}  # no operator was launched


def test_a_service_that_never_listens_fails_start_and_is_stopped(tmp_path: Path) -> None:
    with _platform(tmp_path, service_ready=1.5) as running, listener() as server:
        with pytest.raises(PlatformApiError) as refused:
            running.submit(pipeline(operator_with_service("infer", server, "silent")))
        message = str(refused.value)
        assert "service 'trtis' did not accept connections on port" in message
        assert "(NVIDIA_CLARA_TRTISURI) within 1.5 s" in message
        assert "CLARA_MOCK_SERVICE_PORT_" in message and "services/trtis.log" in message
        service, said = server.accept()
        pid = pid_of(said, "service")
        assert Listener.closed(service) and _gone(pid)
        (job_id,) = running.mock.call(lambda: list(running.mock.state.job_records))
        assert running.mock.job(job_id).state is JobState.CREATED
        assert running.launcher.exit_codes == {}


def test_stopping_the_launcher_stops_a_running_jobs_service(tmp_path: Path) -> None:
    with _platform(tmp_path) as running, listener() as server:
        running.submit(pipeline(operator_with_service("infer", server, end="hang")))
        service, said = server.accept()
        pid = pid_of(said, "service")
        server.accept()  # the operator is running
        running.mock.call_async(running.launcher.stop_all, timeout=WAIT)  # what shutdown does
        assert Listener.closed(service) and _gone(pid)
