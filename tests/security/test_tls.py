"""TLS and mutual TLS between drivers, clients and the mock; the serve command's refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from _pki import Pki
from grpc_health.v1 import health_pb2, health_pb2_grpc

import clara
from server_mock import MockPlatform, StageSpec, StageState
from server_mock._client import PlatformClient
from server_mock._tls import ServerTls, TlsFileError

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0


def health_check(channel: grpc.Channel) -> None:
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def secure_channel(
    address: str, ca: Path, cert: Path | None = None, key: Path | None = None
) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(address, credentials)


@pytest.fixture
def tls_platform(pki: Pki) -> Iterator[MockPlatform]:
    with MockPlatform(tls=ServerTls(pki.server_cert, pki.server_key)) as platform:
        yield platform


@pytest.fixture
def mtls_platform(pki: Pki) -> Iterator[MockPlatform]:
    tls = ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca)
    with MockPlatform(tls=tls, require_stage_tokens=True) as platform:
        yield platform


def test_a_driver_completes_a_stage_over_tls(tls_platform: MockPlatform, pki: Pki) -> None:
    job_id = tls_platform.create_job([StageSpec("only")])
    driver = clara.Driver(
        execute=lambda d, p: True,
        target=tls_platform.address,
        job_id=job_id,
        stage_name="only",
        tls=clara.TlsConfig(ca=pki.ca),
    )
    driver.start()
    result = driver.wait_for_completion(WAIT)
    assert result.succeeded and result.reported
    assert tls_platform.job(job_id).stages["only"].state is StageState.SUCCEEDED


def test_a_tls_server_refuses_plaintext_and_clients_trusting_another_ca(
    tls_platform: MockPlatform, pki: Pki
) -> None:
    with secure_channel(tls_platform.address, pki.ca) as channel:
        health_check(channel)  # the right CA works
    with grpc.insecure_channel(tls_platform.address) as channel, pytest.raises(grpc.RpcError) as e:
        health_check(channel)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    other = secure_channel(tls_platform.address, pki.other_ca)
    with other, pytest.raises(grpc.RpcError) as raised:
        health_check(other)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_driver_trusting_another_ca_never_reaches_the_stage(
    tls_platform: MockPlatform, pki: Pki
) -> None:
    job_id = tls_platform.create_job([StageSpec("only")])
    ran: list[bool] = []
    driver = clara.Driver(
        execute=lambda d, p: ran.append(True) or True,
        target=tls_platform.address,
        job_id=job_id,
        stage_name="only",
        tls=clara.TlsConfig(ca=pki.other_ca),
        timeouts=clara.DriverTimeouts(connect=timedelta(seconds=1), rpc=timedelta(seconds=1)),
        retry=clara.RetryConfig(initial=0.05, maximum=0.1),
    )
    driver.start()
    result = driver.wait_for_completion(WAIT)
    assert not result.succeeded and not result.reported and not ran
    assert isinstance(result.error, clara.PlatformUnavailableError)
    assert tls_platform.job(job_id).stages["only"].state is StageState.READY


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(
    mtls_platform: MockPlatform, pki: Pki
) -> None:
    with secure_channel(mtls_platform.address, pki.ca, pki.client_cert, pki.client_key) as ok:
        health_check(ok)
    for cert, key in ((None, None), (pki.other_client_cert, pki.other_client_key)):
        with secure_channel(mtls_platform.address, pki.ca, cert, key) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                health_check(channel)
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_driver_configured_by_the_environment_uses_mutual_tls_and_its_token(
    mtls_platform: MockPlatform, pki: Pki
) -> None:
    job_id = mtls_platform.create_job([StageSpec("only")])
    environ = {
        "NVIDIA_CLARA_STAGE_SERVICE": mtls_platform.address,
        "NVIDIA_CLARA_JOBID": str(job_id),
        "NVIDIA_CLARA_STAGENAME": "only",
        "NVIDIA_CLARA_TLS_CA": str(pki.ca),
        "NVIDIA_CLARA_TLS_CERT": str(pki.client_cert),
        "NVIDIA_CLARA_TLS_KEY": str(pki.client_key),
        "NVIDIA_CLARA_STAGE_TOKEN": mtls_platform.stage_token(job_id, "only"),
    }
    driver = clara.Driver(execute=lambda d, p: True, environ=environ)
    driver.start()
    assert driver.wait_for_completion(WAIT).succeeded
    assert mtls_platform.job(job_id).stages["only"].state is StageState.SUCCEEDED


@pytest.mark.parametrize(
    ("variables", "setting", "reason"),
    [
        ({"NVIDIA_CLARA_TLS_CA": "/nowhere/ca.pem"}, "NVIDIA_CLARA_TLS_CA", "cannot read"),
        ({"NVIDIA_CLARA_TLS_CA": "{folder}"}, "NVIDIA_CLARA_TLS_CA", "cannot read"),
        ({"NVIDIA_CLARA_TLS_CA": "{not_pem}"}, "NVIDIA_CLARA_TLS_CA", "not a PEM"),
        ({"NVIDIA_CLARA_TLS_CERT": "{cert}"}, "NVIDIA_CLARA_TLS_KEY", "mutual TLS"),
        (
            {"NVIDIA_CLARA_TLS_CERT": "{cert}", "NVIDIA_CLARA_TLS_KEY": "/nowhere/key.pem"},
            "NVIDIA_CLARA_TLS_KEY",
            "cannot read",
        ),
        ({"NVIDIA_CLARA_STAGE_TOKEN": "short"}, "NVIDIA_CLARA_STAGE_TOKEN", "16-1024"),
    ],
)
def test_bad_tls_settings_name_the_variable_and_the_path(
    pki: Pki, tmp_path: Path, variables: dict[str, str], setting: str, reason: str
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    environ = {
        "NVIDIA_CLARA_STAGE_SERVICE": "127.0.0.1:1",
        "NVIDIA_CLARA_JOBID": str(uuid.uuid4()),
        "NVIDIA_CLARA_STAGENAME": "s",
    }
    for name, value in variables.items():
        environ[name] = value.format(folder=tmp_path, not_pem=not_pem, cert=pki.client_cert)
    with pytest.raises(clara.ConfigurationError) as raised:
        clara.Driver(environ=environ)
    assert raised.value.setting == setting
    assert reason in str(raised.value)
    if setting in variables and setting != "NVIDIA_CLARA_STAGE_TOKEN":
        assert environ[setting] in str(raised.value)  # the path is named


def test_tls_arguments_win_and_are_named_in_errors(pki: Pki) -> None:
    with pytest.raises(clara.ConfigurationError) as raised:
        clara.Driver(
            target="127.0.0.1:1",
            job_id=uuid.uuid4(),
            stage_name="s",
            tls=clara.TlsConfig(ca="/nowhere/ca.pem"),
            environ={"NVIDIA_CLARA_TLS_CA": str(pki.ca)},
        )
    assert raised.value.setting == "tls.ca" and "/nowhere/ca.pem" in str(raised.value)


def test_the_platform_names_an_unreadable_certificate(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsFileError) as raised:
        MockPlatform(tls=ServerTls(pki.server_cert, tmp_path / "missing-key.pem"))
    assert raised.value.setting == "key" and "missing-key.pem" in str(raised.value)


def serve(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server_mock", "serve", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_serve_refuses_a_public_address_without_tls() -> None:
    result = serve("--host", "0.0.0.0", "--port", "0")
    assert result.returncode != 0
    assert "TLS is required" in result.stderr and "--tls-cert" in result.stderr
    assert "listening" not in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-cert", "{cert}"], "--tls-key: required with --tls-cert"),
        (["--tls-client-ca", "{ca}"], "--tls-client-ca: needs --tls-cert"),
        (["--tls-cert", "{cert}", "--tls-key", "/nowhere.pem"], "--tls-key /nowhere.pem"),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{ca}"],
            "--tls-operator-cert",
        ),
        (["--tls-cert", "{ca_key_swapped}", "--tls-key", "{key}"], "--tls-cert"),
    ],
)
def test_serve_names_the_wrong_tls_flag(
    pki: Pki, tmp_path: Path, argv: list[str], message: str
) -> None:
    not_pem = tmp_path / "plain.txt"
    not_pem.write_text("no certificate here")
    values = {
        "cert": pki.server_cert,
        "key": pki.server_key,
        "ca": pki.ca,
        "ca_key_swapped": not_pem,
    }
    result = serve(*(a.format(**values) for a in argv), "--port", "0")
    assert result.returncode == 2
    assert message in result.stderr


OPERATOR = textwrap.dedent(
    """
    import os, pathlib, sys, clara

    def execute(driver, payload):
        assert os.environ["NVIDIA_CLARA_TLS_CA"] and os.environ["NVIDIA_CLARA_STAGE_TOKEN"]
        (pathlib.Path(payload.output().path) / "ok.txt").write_text("over mTLS")
        return True

    driver = clara.Driver(execute=execute)
    driver.start()
    sys.exit(0 if driver.wait_for_completion().succeeded else 1)
    """
)
PIPELINE = (
    "api-version: 0.4.0\nname: tls\noperators:\n"
    "- name: only\n  container: {image: t/only, command: [python, op.py]}\n"
    "  input: [{path: /input}]\n  output: [{path: /output}]\n"
)


def test_serve_over_mutual_tls_runs_operators_that_connect_with_their_credentials(
    pki: Pki, tmp_path: Path
) -> None:
    operators = tmp_path / "ops"
    operators.mkdir()
    (operators / "op.py").write_text(OPERATOR)
    (tmp_path / "p.yaml").write_text(PIPELINE)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.txt").write_text("x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVIDIA_CLARA_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server_mock",
            "serve",
            "--port",
            "0",
            "--workspace",
            str(tmp_path / "ws"),
            "--operators-dir",
            str(operators),
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--tls-client-ca",
            str(pki.ca),
            "--tls-operator-ca",
            str(pki.ca),
            "--tls-operator-cert",
            str(pki.client_cert),
            "--tls-operator-key",
            str(pki.client_key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("clara-mock listening on 127.0.0.1:"), line
        address = line.split()[-1]
        with secure_channel(address, pki.ca) as no_cert, pytest.raises(grpc.RpcError):
            health_check(no_cert)
        channel = secure_channel(address, pki.ca, pki.client_cert, pki.client_key)
        with PlatformClient(address, channel=channel) as client:
            pipeline_id = client.create_pipeline(tmp_path / "p.yaml")
            payload_id = client.create_payload()
            client.upload_folder(payload_id, tmp_path / "in")
            job_id = client.create_job(pipeline_id, "tls-job", [payload_id])
            client.start_job(job_id)
            deadline = time.monotonic() + 60
            status = client.job_status(job_id)
            while status.state != "STOPPED" and time.monotonic() < deadline:
                time.sleep(0.1)
                status = client.job_status(job_id)
            assert status.state == "STOPPED"
            assert [o.status for o in status.operators] == ["COMPLETED"], status
            assert status.status == "HEALTHY"
    finally:
        process.terminate()
        process.wait(30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
