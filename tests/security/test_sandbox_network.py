"""A sandbox without network: its driver reaches the stage service over a Unix socket bound into
it, with stage tokens and (mutual) TLS as over TCP; nothing else is reachable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _launch import driver_operator, listener, pipeline, platform
from _pki import Pki

from clara import contract
from server_mock import JobState
from server_mock._sandbox import SandboxSettings, bwrap_problem
from server_mock._tls import ServerTls

PROBE = """
import json, os, pathlib, socket
host, port = os.environ["LISTENER"].rsplit(":", 1)
try:
    socket.create_connection((host, int(port)), timeout=5).close()
    reached = "reached"
except OSError as error:
    reached = type(error).__name__
seen = {"service": os.environ["NVIDIA_CLARA_STAGE_SERVICE"], "tcp": reached}
pathlib.Path("/output/network.json").write_text(json.dumps(seen))
"""


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    assert bwrap_problem(True) is None, f"the sandbox tests need bubblewrap: {bwrap_problem(True)}"
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    yield folder / "stage.sock"


def run_probe(tmp_path: Path, socket_path: Path, **platform_args: Any) -> dict[str, str]:
    extra_env = platform_args.pop("extra_env", None)
    credentials = platform_args.pop("credentials", None)
    settings = SandboxSettings(isolate_network=True, stage_socket=socket_path)
    with (
        listener() as server,
        platform(
            tmp_path,
            runner="sandbox",
            sandbox=settings,
            extra_env=extra_env,
            credentials=credentials,
            platform_args={"unix_socket": socket_path, **platform_args},
        ) as running,
    ):
        run = running.run(
            pipeline(driver_operator("probe", PROBE, variables={"LISTENER": server.address}))
        )
    assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
    seen: dict[str, str] = json.loads((run.output("probe") / "network.json").read_text())
    return seen


def test_without_network_the_driver_reports_over_the_unix_socket(
    tmp_path: Path, socket_path: Path
) -> None:
    seen = run_probe(tmp_path, socket_path)
    assert seen["service"] == "unix:/run/clara-mock/stage.sock"
    assert seen["tcp"] != "reached"  # the host's loopback is not its loopback
    assert not socket_path.exists()  # removed when the platform stopped


def test_mutual_tls_and_stage_tokens_work_over_the_unix_socket(
    tmp_path: Path, socket_path: Path, pki: Pki
) -> None:
    # Over a unix: target gRPC checks the certificate against "localhost": the server
    # certificate must name it (the test PKI's does, as docs/security.md's recipe does).
    seen = run_probe(
        tmp_path,
        socket_path,
        tls=ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca),
        extra_env={
            contract.ENV_TLS_CA: str(pki.ca),
            contract.ENV_TLS_CERT: str(pki.client_cert),
            contract.ENV_TLS_KEY: str(pki.client_key),
        },
        credentials=grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
        ),
    )
    assert seen["service"].startswith("unix:") and seen["tcp"] != "reached"
