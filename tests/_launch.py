"""Run pipelines on a real MockPlatform with a real LocalProcessLauncher, for the runner tests.

:class:`Listener` is a loopback socket that operator processes connect to: the test learns that
a process is alive from its first line, and that it is gone from the end of its connection
(the kernel closes a dead process's sockets), without polling or sleeping.
"""

from __future__ import annotations

import contextlib
import json
import socket
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from server_mock import JobSnapshot, MockPlatform
from server_mock._client import PlatformClient
from server_mock._runner import LocalProcessLauncher, RunnerTimeouts
from server_mock._service_data import default_service_data
from server_mock._workspace import JobLayout

WAIT = 60.0

DRIVER_OPERATOR = textwrap.dedent(
    """
    import json, os, pathlib, sys, clara

    def execute(driver, payload):
        exec(os.environ["OPERATOR_CODE"], {"driver": driver, "payload": payload})
        return True

    driver = clara.Driver(execute=execute)
    driver.start()
    result = driver.wait_for_completion()
    print("result:", result.outcome.value, result.message, flush=True)
    sys.exit(0 if result.succeeded else 1)
    """
)


IO = "input: [{path: /input}]\noutput: [{path: /output}]\n"


def pipeline(operators: str, name: str = "runner-test") -> str:
    """A definition with these operators (YAML list items, dedented)."""
    return f"api-version: 0.4.0\nname: {name}\noperators:\n" + textwrap.dedent(operators)


def driver_operator(
    name: str, code: str, io: str = IO, variables: dict[str, str] | None = None
) -> str:
    """One operator running ``op.py``, whose execute runs ``code``; ``io``: its inputs/outputs."""
    lines = [f"- name: {name}", "  container: {image: t/op, command: [python, op.py]}"]
    lines.append("  variables:")
    for key, value in (variables or {}).items():
        lines.append(f"    {key}: {json.dumps(value)}")
    lines.append("    OPERATOR_CODE: |")
    lines += ["      " + line for line in textwrap.dedent(code).strip().splitlines()]
    lines += ["  " + line for line in textwrap.dedent(io).strip().splitlines()]
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    """A finished job: its snapshot and folders."""

    job_id: uuid.UUID
    job: JobSnapshot
    layout: JobLayout
    logs: dict[str, str]

    def output(self, operator: str, name: str | None = None) -> Path:
        """The folder of ``operator``'s output ``name`` (``None``: its unnamed output)."""
        folder = self.layout.root / "operators" / operator
        return folder / name if name else folder


class Platform:
    """A started MockPlatform whose launcher runs the given pipelines' operators."""

    def __init__(
        self,
        mock: MockPlatform,
        launcher: LocalProcessLauncher,
        root: Path,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.mock = mock
        self.launcher = launcher
        self._root = root
        self._credentials = credentials

    def client(self) -> PlatformClient:
        """A Platform API client (over TLS when the platform serves it)."""
        address = self.mock.address
        if self._credentials is None:
            return PlatformClient(address)
        return PlatformClient(address, channel=grpc.secure_channel(address, self._credentials))

    def create(self, definition: str, inputs: dict[str, str] | None = None) -> uuid.UUID:
        """Create the pipeline, upload ``inputs`` and create (not start) a job; return its id.

        Raises:
            PlatformApiError: The platform refused a request.
        """
        folder = self._root / f"submit-{uuid.uuid4().hex[:8]}"
        (folder / "input").mkdir(parents=True)
        (folder / "pipeline.yaml").write_text(definition)
        for name, content in (inputs or {"in.txt": "input\n"}).items():
            (folder / "input" / name).write_text(content)
        with self.client() as client:
            pipeline_id = client.create_pipeline(folder / "pipeline.yaml")
            payload_id = client.create_payload()
            client.upload_folder(payload_id, folder / "input")
            job_id: uuid.UUID = client.create_job(pipeline_id, "job", [payload_id])
        return job_id

    def submit(self, definition: str, inputs: dict[str, str] | None = None) -> uuid.UUID:
        """Create the pipeline, upload ``inputs`` and start a job; return its id.

        Raises:
            PlatformApiError: The platform refused a request (e.g. Jobs.Start).
        """
        job_id = self.create(definition, inputs)
        with self.client() as client:
            client.start_job(job_id)
        return job_id

    def run(self, definition: str, inputs: dict[str, str] | None = None) -> Run:
        """Run a job to its end and until its processes exited."""
        job_id = self.submit(definition, inputs)
        job = self.mock.wait_for_job(job_id, WAIT)
        assert self.mock.call_async(lambda: self.launcher.wait_idle(WAIT), WAIT + 5)
        layout = self.layout(job_id)
        logs = {
            name: path.read_text(errors="replace")
            for name in job.stages
            if (path := layout.log_path(name)).exists()
        }
        return Run(job_id, job, layout, logs)

    def layout(self, job_id: uuid.UUID) -> JobLayout:
        record = self.mock.call(lambda: self.mock.state.job_records[job_id])
        layout: JobLayout = record.layout
        return layout


@contextlib.contextmanager
def platform(
    tmp_path: Path,
    operators: dict[str, str] | None = None,
    *,
    platform_args: dict[str, Any] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    **launcher_args: Any,
) -> Iterator[Platform]:
    """A platform whose operators folder holds ``operators`` (file name to text).

    ``credentials``: the test's own TLS credentials, for a platform serving TLS.

    The driver operator ``op.py`` (it runs the Python of its ``OPERATOR_CODE`` variable in
    ``execute``) is always there.
    """
    folder = tmp_path / "ops"
    folder.mkdir(exist_ok=True)
    (folder / "op.py").write_text(DRIVER_OPERATOR)
    for name, text in (operators or {}).items():
        (folder / name).write_text(text)
    launcher_args.setdefault(
        "timeouts", RunnerTimeouts(timeout_grace=1, exit_grace=5, kill_grace=2)
    )
    launcher = LocalProcessLauncher(None, folder, **launcher_args)
    mock = MockPlatform(
        workspace=tmp_path / "workspace",
        launcher=launcher,
        require_stage_tokens=True,
        **(platform_args or {}),
    )
    launcher.attach(
        lambda: mock.address,
        mock.stage_tokens.issue,
        service_data=default_service_data(tmp_path / "workspace"),
    )
    mock.start()
    try:
        yield Platform(mock, launcher, tmp_path, credentials)
    finally:
        mock.call_async(launcher.stop_all, timeout=WAIT)
        mock.stop()


class Listener:
    """A loopback TCP listener that operator processes connect to."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(WAIT)
        self.address = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self._connections: list[socket.socket] = []

    def accept(self) -> tuple[socket.socket, str]:
        """The next connection and its first line (what the process said about itself)."""
        connection, _ = self._socket.accept()
        connection.settimeout(WAIT)
        self._connections.append(connection)
        line = b""
        while not line.endswith(b"\n"):
            chunk = connection.recv(1)
            if not chunk:
                break
            line += chunk
        return connection, line.decode().strip()

    @staticmethod
    def closed(connection: socket.socket) -> bool:
        """Wait (at most WAIT seconds) for the peer to go; True once it has."""
        try:
            return connection.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
        self._socket.close()


@contextlib.contextmanager
def listener() -> Iterator[Listener]:
    """A :class:`Listener`, closed at the end."""
    server = Listener()
    try:
        yield server
    finally:
        server.close()


# A process that connects to LISTENER, says ``alive <pid>``, ignores SIGTERM and then waits
# for ever: what an operator must never leave behind. It prints ``connected`` once connected,
# so its starter can wait for that before it ends (else it could take the lingerer with it
# before the test sees it alive).
LINGERER = textwrap.dedent(
    """
    import os, signal, socket, sys, time
    host, port = os.environ["LISTENER"].rsplit(":", 1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    connection = socket.create_connection((host, int(port)))
    connection.sendall(f"alive {os.getpid()} {sys.argv[1]}\\n".encode())
    print("connected", flush=True)  # to whoever started it and waits for this line
    while True:
        time.sleep(3600)
    """
)
