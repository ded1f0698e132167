"""A pipeline's service in the sandbox runner: sandboxed like an operator, reachable over the
host's loopback, with the common volume read-only at the path NVIDIA_CLARA_SERVICE_DATA_PATH
names; with network isolation no operator could reach it, so Start refuses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _launch import Listener, listener, pipeline, platform
from _service_scripts import IMAGE, MODEL_STORE_COMMAND, SERVICE, operator_with_service, pid_of

from server_mock import JobState
from server_mock._client import PlatformApiError
from server_mock._runner import RunnerTimeouts
from server_mock._sandbox import SandboxSettings, bwrap_problem
from server_mock._service_data import SANDBOX_SERVICE_DATA_PATH, default_service_data

OPERATOR_MAP = {f"{IMAGE}:serve": ["python", "service.py", "serve"]}
TIMEOUTS = RunnerTimeouts(timeout_grace=1, exit_grace=5, kill_grace=2)


def test_a_sandboxed_service_serves_its_operator_and_ends_after_it(tmp_path: Path) -> None:
    assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    with (
        platform(
            tmp_path,
            {"service.py": SERVICE},
            runner="sandbox",
            operator_map=OPERATOR_MAP,
            timeouts=TIMEOUTS,
        ) as running,
        listener() as server,
    ):
        run = running.run(pipeline(operator_with_service("infer", server)))
        assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
        service, said = server.accept()
        answer = json.loads((run.output("infer") / "answer.json").read_text())
        assert answer["uri"] == f"localhost:{answer['port']}"
        # Its own PID namespace: bwrap's init is 1 there, the service right after it.
        assert answer["pid"] == pid_of(said, "service") <= 3
        assert Listener.closed(service)  # gone once the job's operators were


def test_a_sandboxed_service_sees_the_common_volume_read_only(tmp_path: Path) -> None:
    assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    common = default_service_data(tmp_path / "workspace")
    (common / "models" / "segmentation").mkdir(parents=True)
    (common / "models" / "segmentation" / "config.pbtxt").write_text("name: segmentation\n")
    with (
        platform(tmp_path, {"service.py": SERVICE}, runner="sandbox", timeouts=TIMEOUTS) as running,
        listener() as server,
    ):
        operator = operator_with_service("infer", server, "store", command=MODEL_STORE_COMMAND)
        run = running.run(pipeline(operator))
        assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
        answer = json.loads((run.output("infer") / "answer.json").read_text())
        assert answer["data_path"] == SANDBOX_SERVICE_DATA_PATH == "/clara/common"
        assert answer["store"] == "/clara/common/models"  # $(VAR) expanded to the mount
        assert answer["config"] == "name: segmentation\n"  # the host folder, mounted there
        assert answer["write"] == "EROFS"  # read-only
        assert not (common / "models" / "written-by-the-service").exists()
        assert (run.output("infer") / "service_data_path.txt").read_text() == "unset"


def test_with_network_isolation_start_refuses_a_service(tmp_path: Path) -> None:
    assert bwrap_problem(True) is None, f"the sandbox tests need bubblewrap: {bwrap_problem(True)}"
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    settings = SandboxSettings(isolate_network=True, stage_socket=folder / "stage.sock")
    with (
        platform(
            tmp_path,
            {"service.py": SERVICE},
            runner="sandbox",
            sandbox=settings,
            operator_map=OPERATOR_MAP,
            platform_args={"unix_socket": folder / "stage.sock"},
        ) as running,
        listener() as server,
    ):
        with pytest.raises(PlatformApiError) as refused:
            running.submit(pipeline(operator_with_service("infer", server)))
        message = str(refused.value)
        assert "operator 'infer', field services[0]: service 'trtis'" in message
        assert "with network isolation every operator has a network of its own" in message
        assert running.launcher.exit_codes == {}
