"""A job's service ends with a real ``clara-mock serve``: on SIGTERM (shutdown) and on SIGKILL.

A restarted server never takes a service over, so none may outlive the server's process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from _faults import ROOT, WAIT, _LineReader, kill_pids
from _launch import DRIVER_OPERATOR, Listener, listener, pipeline
from _service_scripts import IMAGE, SERVICE, operator_with_service, pid_of

from server_mock._client import PlatformClient

_LISTENING = "clara-mock listening on "


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``clara-mock serve`` with the service's image mapped; killed at teardown."""
    ops = tmp_path / "ops"
    ops.mkdir()
    (ops / "op.py").write_text(DRIVER_OPERATOR)
    (ops / "service.py").write_text(SERVICE)
    operator_map = tmp_path / "operator-map.yaml"
    operator_map.write_text(yaml.safe_dump({f"{IMAGE}:serve": ["python", "service.py", "serve"]}))
    argv = [
        *(sys.executable, "-m", "server_mock", "-v", "serve", "--port", "0"),
        *("--workspace", str(tmp_path / "workspace"), "--operators-dir", str(ops)),
        *("--operator-map", str(operator_map), "--runner", "process"),
    ]
    with (tmp_path / "serve.log").open("w") as log:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        reader = _LineReader(process.stdout, "serve-stdout")
        line = reader.next_line(WAIT)
        assert line is not None and line.startswith(_LISTENING), line
        yield process, line.removeprefix(_LISTENING)
    finally:
        process.kill()
        process.wait(WAIT)
        reader.join(WAIT)
        process.stdout.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_running_jobs_service_ends_with_the_server(
    serve: tuple[subprocess.Popen[str], str], tmp_path: Path, signum: signal.Signals
) -> None:
    process, address = serve
    pids: list[int] = []
    with listener() as server:
        try:
            folder = tmp_path / "submit"
            (folder / "input").mkdir(parents=True)
            (folder / "input" / "in.txt").write_text("input\n")
            definition = pipeline(operator_with_service("infer", server, end="hang"))
            (folder / "pipeline.yaml").write_text(definition)
            with PlatformClient(address) as client:
                pipeline_id = client.create_pipeline(folder / "pipeline.yaml")
                payload_id = client.create_payload()
                client.upload_folder(payload_id, folder / "input")
                client.start_job(client.create_job(pipeline_id, "job", [payload_id]))
            service, said = server.accept()
            pids.append(pid_of(said, "service"))
            _, said = server.accept()  # the operator runs and has called the service
            pids.append(pid_of(said, "operator"))
            process.send_signal(signum)
            process.wait(WAIT)
            assert Listener.closed(service)
        finally:
            # After SIGKILL the operator waits for a restarted server; the service only lingers
            # if the test failed.
            kill_pids(pids)
