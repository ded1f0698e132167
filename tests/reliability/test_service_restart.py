"""A job's services across a restart of ``serve --state``: started again on the same ports.

A real ``clara-mock serve --state`` process runs a job whose operator declares a mapped
service (``tests/_service_scripts.py``: an HTTP server that reports itself to the test's
listener and holds that connection, so its end is seen without polling). The operator says
which address it was given, then waits for the test's "go" before it calls the service. The
server is stopped (SIGTERM) or killed (SIGKILL) meanwhile: the service ends with it; the
restarted server starts it again on the same port before it adopts the operator, whose call
then reaches it. A service that cannot get its port again fails the job saying so; a stage
that ended during the outage keeps the outcome it left in its outbox. The service started
again gets the same common volume (serve's default, ``<state>.workspace/service-data``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from _faults import OPERATOR_SCRIPT, WAIT, ControlServer, ServerProcess, kill_pids, pipeline_yaml
from _launch import DRIVER_OPERATOR, Listener, driver_operator, listener, pipeline
from _service_scripts import IMAGE, MODEL_STORE_COMMAND, SERVICE, pid_of, service_definition

from server_mock._client import JobStatus, PlatformClient
from server_mock._operator_process import OperatorSignals
from server_mock._persistence import default_workspace
from server_mock._sandbox import bwrap_problem
from server_mock._service_data import default_service_data

# It tells the test the address it was given, waits for "go", then asks the service.
OPERATOR = """
import os, pathlib, socket, urllib.request
uri = os.environ["NVIDIA_CLARA_TRTISURI"]
host, port = os.environ["LISTENER"].rsplit(":", 1)
connection = socket.create_connection((host, int(port)))
connection.sendall(f"operator {os.getpid()} {uri}\\n".encode())
assert connection.recv(1) == b"g"
answer = urllib.request.urlopen(f"http://{uri}/v2/health/ready", timeout=30).read()
pathlib.Path(payload.output().path, "answer.json").write_bytes(answer)
connection.sendall(answer + b"\\n")
"""


@pytest.fixture
def test_listener() -> Iterator[Listener]:
    with listener() as server:
        yield server


def serve_with_service(tmp_path: Path, runner: str = "process") -> ServerProcess:
    """``serve --state`` with the service's image mapped (not started yet)."""
    ops = tmp_path / "ops"
    ops.mkdir()
    (ops / "op.py").write_text(DRIVER_OPERATOR)
    (ops / "service.py").write_text(SERVICE)
    (ops / OPERATOR_SCRIPT.name).write_text(OPERATOR_SCRIPT.read_text())
    operator_map = tmp_path / "operator-map.yaml"
    operator_map.write_text(yaml.safe_dump({f"{IMAGE}:serve": ["python", "service.py", "serve"]}))
    args = ("--operator-map", str(operator_map))
    return ServerProcess(tmp_path / "state.db", tmp_path, ops, runner=runner, args=args)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """:func:`serve_with_service` with the process runner; killed at teardown."""
    process = serve_with_service(tmp_path)
    try:
        yield process
    finally:
        process.kill()


def start_job(address: str, tmp_path: Path, test_listener: Listener) -> uuid.UUID:
    operator = driver_operator("infer", OPERATOR, variables={"LISTENER": test_listener.address})
    definition = tmp_path / "pipeline.yaml"
    definition.write_text(pipeline(operator + service_definition("serve", test_listener)))
    with PlatformClient(address) as client:
        job_id: uuid.UUID = client.create_job(client.create_pipeline(definition), "svc", [])
        client.start_job(job_id)
    return job_id


def status(address: str, job_id: uuid.UUID) -> JobStatus:
    with PlatformClient(address) as client:
        return client.job_status(job_id)


def read_line(connection: socket.socket) -> str:
    """The next line the peer sends (bounded by the connection's timeout)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = connection.recv(1)
        assert chunk, f"the peer ended after {line!r}"
        line += chunk
    return line.decode().strip()


def wait_gone(pid: int) -> None:
    """Wait (on a pidfd) until process ``pid``, not the test's child, has ended."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([pidfd], [], [], WAIT)
        assert readable, f"process {pid} still running after {WAIT} s"
    finally:
        os.close(pidfd)


def stop_server(server: ServerProcess, how: str) -> None:
    if how == "SIGTERM":
        assert server.stop() == 0
    else:
        server.kill()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_restart_starts_the_service_again_on_its_port_and_the_job_completes(
    tmp_path: Path, server: ServerProcess, test_listener: Listener, how: str
) -> None:
    pids: list[int] = []
    try:
        address = server.start()
        job_id = start_job(address, tmp_path, test_listener)
        first, said = test_listener.accept()
        pids.append(pid_of(said, "service"))
        operator, said = test_listener.accept()
        pids.append(pid_of(said, "operator"))
        uri = said.split(" ")[2]
        port = int(uri.rsplit(":", 1)[1])

        stop_server(server, how)
        assert Listener.closed(first), "the service must end with the server"
        assert server.start() == address
        again, said = test_listener.accept()  # started again, before the operator is adopted
        pids.append(pid_of(said, "service"))
        assert "adopted its process" in server.log_path.read_text()

        operator.sendall(b"g")
        answer = json.loads(read_line(operator))
        assert (answer["pid"], answer["port"], answer["uri"]) == (pids[2], port, uri)
        assert Listener.closed(again), "the service must be stopped after its operators"
        wait_gone(pids[2])
        job = status(address, job_id)
        assert (job.state, job.status) == ("STOPPED", "HEALTHY")
    finally:
        kill_pids(pids)


def forget_service_ports(state: Path) -> None:
    """Remove the saved ports from every job record, as a state file of an older mock has it."""
    with sqlite3.connect(state) as db:
        for job_id, record in db.execute("SELECT job_id, record FROM jobs").fetchall():
            data = json.loads(record)
            data.pop("service_ports")
            db.execute("UPDATE jobs SET record = ? WHERE job_id = ?", (json.dumps(data), job_id))


@pytest.mark.parametrize("fault", ["port taken", "ports not saved"])
def test_a_service_that_cannot_start_again_after_a_restart_fails_the_job_saying_so(
    tmp_path: Path, server: ServerProcess, test_listener: Listener, fault: str
) -> None:
    pids: list[int] = []
    try:
        address = server.start()
        job_id = start_job(address, tmp_path, test_listener)
        first, said = test_listener.accept()
        pids.append(pid_of(said, "service"))
        operator, said = test_listener.accept()
        pids.append(pid_of(said, "operator"))
        port = int(said.rsplit(":", 1)[1])

        server.stop()
        assert Listener.closed(first)
        with contextlib.ExitStack() as taken:
            if fault == "port taken":  # another program took it meanwhile
                taken.enter_context(socket.create_server(("127.0.0.1", port)))
                why = f"service 'trtis' cannot get its port {port} (NVIDIA_CLARA_TRTISURI)"
                why += " again, which its operators call: another process uses it"
            else:
                forget_service_ports(server.state)
                why = "service 'trtis': the ports it had before the restart were not saved"
            server.start()
            job = status(address, job_id)
            assert (job.state, job.status) == ("STOPPED", "FAULTED")
            said = " ".join(job.messages)
            assert "could not be started again after a restart of the platform" in said
            assert why in said
            # The adopted operator, its stage failed, ends (or is stopped by the server).
            assert Listener.closed(operator), "the operator must be stopped"
            wait_gone(pids[1])
        assert "started service" not in server.log_path.read_text()
    finally:
        kill_pids(pids)


def saved_port(state: Path) -> int:
    """The port saved for the job's service (its record's ``service_ports``)."""
    with sqlite3.connect(state) as db:
        ((record,),) = db.execute("SELECT record FROM jobs").fetchall()
    port: int = json.loads(record)["service_ports"]["trtis"]["NVIDIA_CLARA_TRTISURI"]
    return port


def test_a_stage_that_ended_during_the_outage_keeps_its_outcome_when_the_service_cannot_restart(
    tmp_path: Path, server: ServerProcess, test_listener: Listener, control: ControlServer
) -> None:
    # "second" declares the service; "first" succeeds while the server is down and leaves its
    # outcome in its outbox (its report budget, 2 s, is shorter than the outage).
    definition = pipeline_yaml(
        control.address,
        [("first", None, "go"), ("second", "first", "succeed")],
        {"first": {"RELIABILITY_REPORT": "2"}},
    ) + service_definition("serve", test_listener)
    (tmp_path / "pipeline.yaml").write_text(definition)
    address = server.start()
    with PlatformClient(address) as client:
        pipeline_id = client.create_pipeline(tmp_path / "pipeline.yaml")
        job_id = client.create_job(pipeline_id, "svc", [])
        client.start_job(job_id)
    service, said = test_listener.accept()
    pids = [pid_of(said, "service")]
    try:
        control.wait_event("first", "execute")
        control.wait_event("second", "waiting_for_inputs")
        server.kill()
        assert Listener.closed(service), "the service must die with the server"
        control.send("first", "go")
        assert not control.wait_event("first", "result")["reported"]
        control.wait_event("first", "exit")
        assert server.state is not None
        with socket.create_server(("127.0.0.1", saved_port(server.state))):
            server.start()
            control.wait_event("second", "exit")  # adopted, its stage failed: it ends
        job = status(address, job_id)
        assert (job.state, job.status) == ("STOPPED", "FAULTED")
        operators = {o.name: o.status for o in job.operators}
        assert operators == {"first": "COMPLETED", "second": "FAULTED"}, job
        assert "could not be started again after a restart" in " ".join(job.messages)
    finally:
        kill_pids(pids)


def test_with_the_sandbox_runner_the_service_is_started_again_on_its_port(
    tmp_path: Path, test_listener: Listener
) -> None:
    assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"
    # Sandboxed processes report their namespace's pids: the test signals none of them; the
    # operator's sandbox (its keeper, from the launch record) is killed at the end.
    server = serve_with_service(tmp_path, runner="sandbox")
    keepers: list[int] = []
    try:
        address = server.start()
        job_id = start_job(address, tmp_path, test_listener)
        first, _ = test_listener.accept()
        operator, said = test_listener.accept()
        uri = said.split(" ")[2]
        assert server.stop() == 0
        assert Listener.closed(first), "the service's sandbox must end with the server"
        assert server.state is not None
        with sqlite3.connect(server.state) as db:
            keepers += [pid for (pid,) in db.execute("SELECT pid FROM launches") if pid]
        server.start()
        again, _ = test_listener.accept()
        operator.sendall(b"g")
        answer = json.loads(read_line(operator))
        assert (answer["port"], answer["uri"]) == (int(uri.rsplit(":", 1)[1]), uri)
        assert Listener.closed(again)
        job = status(address, job_id)
        assert (job.state, job.status) == ("STOPPED", "HEALTHY")
    finally:
        server.kill()
        for pid in keepers:
            OperatorSignals(pid, sandboxed=True).kill()  # the whole sandbox, if still there


def test_after_a_restart_the_service_gets_the_same_common_volume(
    tmp_path: Path, server: ServerProcess, test_listener: Listener
) -> None:
    # serve's default common volume: service-data in its workspace (here <state>.workspace).
    common = default_service_data(default_workspace(tmp_path / "state.db"))
    (common / "models" / "segmentation").mkdir(parents=True)
    (common / "models" / "segmentation" / "config.pbtxt").write_text("name: segmentation\n")
    pids: list[int] = []
    try:
        address = server.start()
        operator = driver_operator("infer", OPERATOR, variables={"LISTENER": test_listener.address})
        services = service_definition("store", test_listener, command=MODEL_STORE_COMMAND)
        definition = tmp_path / "pipeline.yaml"
        definition.write_text(pipeline(operator + services))
        with PlatformClient(address) as client:
            job_id = client.create_job(client.create_pipeline(definition), "svc", [])
            client.start_job(job_id)
        first, said = test_listener.accept()
        pids.append(pid_of(said, "service"))
        connection, said = test_listener.accept()
        pids.append(pid_of(said, "operator"))

        server.kill()
        assert Listener.closed(first), "the service must end with the server"
        server.start()
        again, said = test_listener.accept()
        pids.append(pid_of(said, "service"))
        connection.sendall(b"g")
        answer = json.loads(read_line(connection))
        assert answer["pid"] == pids[2]
        assert answer["data_path"] == str(common) and answer["store"] == f"{common}/models"
        assert answer["config"] == "name: segmentation\n"
        assert Listener.closed(again)
        wait_gone(pids[2])
        assert status(address, job_id).state == "STOPPED"
    finally:
        kill_pids(pids)
