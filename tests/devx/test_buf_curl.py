"""The mock serves reflection: `buf curl` calls its RPCs knowing nothing but the address."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_mock import MockPlatform, StageSpec
from server_mock._client import PlatformClient

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "examples" / "volume_segmentation" / "pipeline.yaml"
UNAUTHENTICATED = 16


def curl(
    buf: str, address: str, method: str, body: dict[str, Any], *headers: str
) -> subprocess.CompletedProcess[str]:
    cmd = [
        buf,
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--connect-timeout",
        "10",
        f"http://{address}/{method}",
        "-d",
        json.dumps(body),
    ]
    for header in headers:
        cmd += ["-H", header]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def messages(stdout: str) -> list[dict[str, Any]]:
    """The JSON documents buf curl printed (one per response message)."""
    decoder = json.JSONDecoder()
    found, index, text = [], 0, stdout.strip()
    while index < len(text):
        document, end = decoder.raw_decode(text, index)
        found.append(document)
        index = end
        while index < len(text) and text[index].isspace():
            index += 1
    return found


@pytest.fixture
def secured_platform() -> Iterator[MockPlatform]:
    with MockPlatform(require_stage_tokens=True) as platform:
        yield platform


def test_buf_curl_calls_a_platform_rpc(buf: str, clara_platform: MockPlatform) -> None:
    with PlatformClient(clara_platform.address) as client:
        pipeline_id = client.create_pipeline(PIPELINE)

    proc = curl(buf, clara_platform.address, "nvidia.clara.platform.Pipelines/List", {})

    assert proc.returncode == 0, proc.stderr
    details = [m["details"] for m in messages(proc.stdout) if "details" in m]
    assert [(d["pipelineId"]["value"], d["name"]) for d in details] == [
        (pipeline_id.hex, "volume-segmentation")
    ]

    version = curl(buf, clara_platform.address, "nvidia.clara.platform.Clara/Version", {})
    assert version.returncode == 0, version.stderr
    assert messages(version.stdout)[0]["version"]["label"] == "mock"


def test_buf_curl_calls_a_stage_rpc(buf: str, clara_platform: MockPlatform) -> None:
    job_id = clara_platform.create_job([StageSpec("only")], name="curl-job")

    proc = curl(
        buf,
        clara_platform.address,
        "nvidia.clara.platform.stage.v1.StageService/GetStageContext",
        {"stage": {"jobId": str(job_id), "stageName": "only"}},
    )

    assert proc.returncode == 0, proc.stderr
    context = messages(proc.stdout)[0]["context"]
    assert context["jobId"] == str(job_id)
    assert (context["jobName"], context["stageName"]) == ("curl-job", "only")
    assert context["state"] == "STAGE_STATE_READY"


def test_buf_curl_needs_the_stage_token_when_required(
    buf: str, secured_platform: MockPlatform
) -> None:
    job_id = secured_platform.create_job([StageSpec("only")])
    method = "nvidia.clara.platform.stage.v1.StageService/GetStageContext"
    body = {"stage": {"jobId": str(job_id), "stageName": "only"}}

    refused = curl(buf, secured_platform.address, method, body)
    token = secured_platform.stage_token(job_id, "only")
    allowed = curl(buf, secured_platform.address, method, body, f"authorization: Bearer {token}")

    assert refused.returncode == UNAUTHENTICATED << 3, refused.stdout + refused.stderr
    assert allowed.returncode == 0, allowed.stderr
    assert messages(allowed.stdout)[0]["context"]["jobId"] == str(job_id)


def test_buf_curl_checks_health(buf: str, clara_platform: MockPlatform) -> None:
    proc = curl(
        buf,
        clara_platform.address,
        "grpc.health.v1.Health/Check",
        {"service": "nvidia.clara.platform.stage.v1.StageService"},
    )
    assert proc.returncode == 0, proc.stderr
    assert messages(proc.stdout) == [{"status": "SERVING"}]
