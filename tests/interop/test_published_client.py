"""The published ``nvidia-clara-client`` 0.8.1.7, unmodified, against the mock platform.

The client needs an old protobuf runtime, so it runs in a venv of its own (created once and
cached in the system temp folder, keyed by the pinned versions) as a subprocess executing
``client_script.py``. The mock runs here with the in-process launcher: once the script reports
the started job, this test runs one ``clara.Driver`` per stage, then lets the script go on.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import clara
from server_mock import MockPlatform

pytestmark = pytest.mark.interop

CLIENT = "nvidia-clara-client==0.8.1.7"
# protobuf 3.20.3 runs the client's old generated code as is; should it stop installing, a
# 4.x runtime with the pure-Python implementation also accepts that code.
RUNTIMES: list[tuple[str, dict[str, str]]] = [
    ("protobuf==3.20.3", {}),
    ("protobuf==4.25.8", {"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}),
]
SCRIPT = Path(__file__).with_name("client_script.py")
INSTALL_TIMEOUT = 900
SCRIPT_TIMEOUT = 180
DRIVER_TIMEOUT = 60

PIPELINE = """\
api-version: 0.4.0
name: interop
operators:
- name: prepare
  container: {image: example/prepare}
  input: [{path: /input}]
  output: [{path: /output}]
- name: finish
  container: {image: example/finish}
  input: [{from: prepare, path: /input}]
  output: [{path: /output}]
"""

BAD_PIPELINE = PIPELINE.replace("from: prepare", "from: nowhere")


@pytest.fixture(scope="session")
def client_venv() -> tuple[Path, dict[str, str]]:
    """The interop venv's python and the environment it needs (installed once, then cached)."""
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    key = "-".join(p.replace("==", "-") for p in (CLIENT, RUNTIMES[0][0]))
    venv = Path(tempfile.gettempdir()) / f"clara-interop-{version}-{key}"
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    marker = venv / "interop-ready.json"
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions wait for one installer
        if marker.is_file() and python.is_file():
            return python, json.loads(marker.read_text())["env"]
        failures = []
        for runtime, env in RUNTIMES:
            shutil.rmtree(venv, ignore_errors=True)
            steps = [
                [sys.executable, "-m", "venv", str(venv)],
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "-q",
                    CLIENT,
                    runtime,
                    "grpcio",
                ],
                [
                    str(python),
                    "-c",
                    "import nvidia_clara, grpc; nvidia_clara.ClaraClient('127.0.0.1:1')",
                ],
            ]
            for step in steps:
                done = subprocess.run(
                    step,
                    capture_output=True,
                    text=True,
                    timeout=INSTALL_TIMEOUT,
                    env={**_clean_env(), **env},
                    check=False,
                )
                if done.returncode != 0:
                    failures.append(
                        f"{' '.join(step)} -> exit {done.returncode}\n{done.stdout}\n{done.stderr}"
                    )
                    break
            else:
                marker.write_text(json.dumps({"runtime": runtime, "env": env}))
                return python, env
        pytest.fail(
            f"could not install {CLIENT} for the interop tests in {venv}:\n\n"
            + "\n\n".join(failures),
            pytrace=False,
        )


def _clean_env() -> dict[str, str]:
    """This process's environment without what would leak our own packages into the venv."""
    return {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }


def _log_path(platform: MockPlatform, job_id: uuid.UUID, operator: str) -> Path:
    return platform.call(lambda: platform.state.job_records[job_id].layout.log_path(operator))


def _run_stages(platform: MockPlatform, job_id: uuid.UUID) -> dict[str, clara.StageResult]:
    """Run the job's two stages with in-process drivers, like its operators would."""
    log = _log_path(platform, job_id, "prepare")

    def prepare(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        source, target = Path(payload.input().path), Path(payload.output().path)
        with log.open("a") as out:
            for file in sorted(source.iterdir()):
                (target / file.name).write_bytes(file.read_bytes().upper())
                out.write(f"prepared {file.name}\n")
        return True

    def finish(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        source, target = Path(payload.input().path), Path(payload.output().path)
        lines = [
            f"{f.name} {f.stat().st_size} {hashlib.sha256(f.read_bytes()).hexdigest()[:12]}"
            for f in sorted(source.iterdir())
        ]
        (target / "summary.txt").write_text("\n".join(lines) + "\n")
        return True

    drivers = [
        clara.Driver(execute=fn, target=platform.address, job_id=job_id, stage_name=name)
        for name, fn in (("prepare", prepare), ("finish", finish))
    ]
    for driver in drivers:
        driver.start()
    return {d.stage_name: d.wait_for_completion(DRIVER_TIMEOUT) for d in drivers}


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    (tmp_path / "bad-pipeline.yaml").write_text(BAD_PIPELINE)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "notes.txt").write_text("hello clara\n")
    # More than three of the client's 64 KiB upload chunks, not a multiple of the chunk size.
    (inputs / "big.bin").write_bytes(hashlib.sha512(b"interop").digest() * 3500)
    (tmp_path / "model.zip").write_bytes(model_archive())
    yield tmp_path


def model_archive() -> bytes:
    """A zipped Triton model folder, larger than one of the client's 64 KiB chunks."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("liver/config.pbtxt", "name: 'liver'\n")
        archive.writestr("liver/1/model.plan", hashlib.sha512(b"model").digest() * 2000)
    return buffer.getvalue()


def test_published_client_drives_the_mock(
    clara_platform: MockPlatform, client_venv: tuple[Path, dict[str, str]], workdir: Path
) -> None:
    python, env = client_venv
    stderr_path = workdir / "client-stderr.txt"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [str(python), str(SCRIPT), clara_platform.address, str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**_clean_env(), **env},
        )
    watchdog = threading.Timer(SCRIPT_TIMEOUT, process.kill)
    watchdog.start()
    events: list[dict[str, Any]] = []
    try:
        assert process.stdout is not None and process.stdin is not None
        for line in process.stdout:
            events.append(json.loads(line))
            if events[-1]["event"] != "job-started":
                break
            job_id = uuid.UUID(events[-1]["job_id"])
            results = _run_stages(clara_platform, job_id)
            assert all(r.succeeded for r in results.values()), results
            clara_platform.wait_for_job(job_id, DRIVER_TIMEOUT)
            process.stdin.write("stages done\n")
            process.stdin.flush()
        process.wait(SCRIPT_TIMEOUT)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    details = f"client stderr:\n{stderr_path.read_text()}\nevents: {events}"
    assert events and events[-1]["event"] == "result", details
    assert process.returncode == 0, details
    _check(events[-1]["result"], events[0], workdir)
    _check_models(events[-1]["result"]["models"], clara_platform)


def _check(result: dict[str, Any], started: dict[str, Any], workdir: Path) -> None:
    assert result["version"] == [0, 8, 1, "mock"]
    assert result["utilization_samples"] == 1
    # Watched, the stream goes on (one sample a second) until the caller's deadline ends it.
    assert result["watched_samples"] >= 2 and result["watch_ended"] == "DEADLINE_EXCEEDED"
    assert "does not stop on request" in result["stop_error"]

    pipeline = result["pipeline"]
    assert pipeline["name"] == "interop" and len(pipeline["id"]) == 32
    assert pipeline["metadata"] == {"team": "interop"}
    assert pipeline["definition_parts"] == 1 and pipeline["definition_content"] == PIPELINE
    assert result["pipeline_add_metadata"] == {"team": "interop", "extra": "1"}
    assert result["pipeline_remove_metadata"] == {"team": "interop"}
    bad = result["bad_pipeline_error"]
    assert "operator 'finish'" in bad and "field 'input[0].from'" in bad and "nowhere" in bad

    big = (workdir / "inputs" / "big.bin").stat().st_size
    assert result["payload_type"] == 2  # PAYLOAD_TYPE_REUSABLE
    assert result["uploaded"] == {"big.bin": big, "notes.txt": 12}
    assert result["empty_upload_error"] == "NO ERROR"  # accepted (nothing names a file to store)
    assert result["payload_files"] == {"big.bin": big, "notes.txt": 12}
    assert result["payload_metadata"] == {"kind": "inputs"}
    assert result["round_trip_matches"] is True
    assert "invalid blob name '../escape.txt'" in result["escape_error"]
    assert result["payload_add_metadata"] == {"kind": "inputs", "x": "y"}
    assert result["lenient_names"] == {
        "uploaded": "Docs/Notes.txt",
        "listed": ["Docs/Notes.txt"],
        "downloaded": ["Docs/Notes.txt", "hello clara\n"],
    }

    assert result["pending"] == {"state": 1, "status": 1}  # PENDING, HEALTHY
    assert result["started"] == {"state": 2, "status": 1}  # RUNNING, HEALTHY
    done = result["done"]
    assert done["job_id"] == started["job_id"] and done["payload_id"] == started["payload_id"]
    assert (done["name"], done["state"], done["status"], done["priority"]) == (
        "interop-job",
        3,
        1,
        3,
    )
    assert done["pipeline_id"] == pipeline["id"]
    assert done["operators"] == {"prepare": 3, "finish": 3}  # COMPLETED
    assert done["metadata"] == {"case": "interop"}
    assert done["created"] <= done["started"] <= done["stopped"]
    assert done["created"].endswith("+00:00")  # the client converts to UTC
    assert result["logs"] == ["prepared big.bin", "prepared notes.txt"]
    assert "NOT_FOUND" in result["unknown_operator_logs_error"]
    assert "no operator 'ghost'" in result["unknown_operator_logs_error"]
    assert result["job_add_metadata"] == {"case": "interop", "more": "data"}

    summary = result["summary"].splitlines()
    assert [line.split()[:2] for line in summary] == [["big.bin", str(big)], ["notes.txt", "12"]]
    assert "payload has no file 'no/such/file'" in result["missing_file_error"]

    cancelled = result["cancelled"]
    assert cancelled["token"] == [3, 3] and (cancelled["state"], cancelled["status"]) == (3, 3)
    assert "no longer needed" in cancelled["messages"]
    assert "job 0123456789abcdef0123456789abcdef not found" in result["unknown_job_error"]

    assert result["jobs"] == [
        ["interop-job", 3, 1, pipeline["id"]],
        ["to-cancel", 3, 3, pipeline["id"]],
    ]
    assert result["filtered_jobs"] == ["interop-job"]
    assert result["pipelines"] == [[pipeline["id"], "interop"]]
    assert result["pipelines_after_remove"] == 0


def _check_models(seen: dict[str, Any], platform: MockPlatform) -> None:
    # The published client's own bugs fail before anything is sent; the mock serves each RPC.
    assert 'has no "tags" field' in seen["upload_model"]  # it builds ModelDetails(tags=...)
    assert seen["uploaded"] == ["liver", 2, 32]
    assert seen["list_models"].startswith("AttributeError")  # ModelDetails(other=<repeated>)
    assert [name for name, _ in seen["listed"]] == ["liver"]
    assert seen["add_metadata"] == {"organ": "liver", "site": "a"}
    assert seen["remove_metadata"] == {"organ": "liver"}  # keys compared case-insensitively
    assert "'Organ' already exists" in seen["duplicate_key"]
    assert seen["ids"] == [32, 32]
    assert "Exception iterating requests" in seen["update_catalog"]
    assert seen["read_catalog"].startswith("AttributeError")
    assert seen["catalog_models"] == ["liver"]
    assert 'has no "model_ids" field' in seen["update_instance"]  # ModelsReadInstanceRequest
    assert 'has no "instance_id" field' in seen["read_instance"]  # ModelsReadCatalogRequest
    assert "has no attribute 'Download'" in seen["download_model"]  # the stub has DownloadModel
    assert seen["download_matches"] is True
    assert 'has no "catalog_id" field' in seen["delete_instance"]
    assert seen["instance_deleted"] == 0
    assert "not found" in seen["catalog_deleted"]  # deleted by the call before
    assert 'has no "catalog_id" field' in seen["delete_model"]
    assert seen["model_deleted"] == 0 and seen["listed_after_delete"] == []
    assert platform.call(platform.state.models.all) == []
