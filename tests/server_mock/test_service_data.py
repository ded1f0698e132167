"""The services' common volume: ``NVIDIA_CLARA_SERVICE_DATA_PATH``, in services only.

A service whose definition command names its model store as
``$(NVIDIA_CLARA_SERVICE_DATA_PATH)/models`` (as a TensorRT Inference Server's does) serves
the operator a file the test put there; the operator itself gets no such variable. The
sandbox's read-only mount is tested in tests/security/test_sandbox_services.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _launch import DRIVER_OPERATOR, WAIT, listener, pipeline, platform
from _service_scripts import MODEL_STORE_COMMAND, SERVICE, operator_with_service

from server_mock import JobState
from server_mock._service_data import SERVICE_DATA_VARIABLE, default_service_data

CONFIG = 'name: "segmentation"\nplatform: "tensorrt_plan"\n'


def _put_model(common: Path) -> None:
    """A model's configuration in the common volume ``common``, where the service looks."""
    (common / "models" / "segmentation").mkdir(parents=True)
    (common / "models" / "segmentation" / "config.pbtxt").write_text(CONFIG)


def test_a_service_reads_its_model_store_from_the_common_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = default_service_data(tmp_path / "workspace")
    _put_model(common)
    # A value in the mock's own environment reaches neither the service nor the operator.
    monkeypatch.setenv(SERVICE_DATA_VARIABLE, "/from/the/shell")
    with (
        platform(tmp_path, {"service.py": SERVICE}, runner="process") as running,
        listener() as server,
    ):
        operator = operator_with_service("infer", server, "store", command=MODEL_STORE_COMMAND)
        run = running.run(pipeline(operator))
        assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
        answer = json.loads((run.output("infer") / "answer.json").read_text())
        assert answer["data_path"] == str(common)
        assert answer["store"] == f"{common}/models"  # $(VAR) expanded in the command
        assert answer["config"] == CONFIG
        assert (run.output("infer") / "service_data_path.txt").read_text() == "unset"


def test_the_service_data_flag_chooses_the_common_volume(tmp_path: Path) -> None:
    common = tmp_path / "elsewhere" / "common"
    _put_model(common)
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "op.py").write_text(DRIVER_OPERATOR)
    (folder / "service.py").write_text(SERVICE)
    (folder / "in").mkdir()
    (folder / "in" / "f.txt").write_text("x")
    with listener() as server:
        operator = operator_with_service("infer", server, "store", command=MODEL_STORE_COMMAND)
        (folder / "p.yaml").write_text(pipeline(operator))
        env = {k: v for k, v in os.environ.items() if not k.startswith("NVIDIA_CLARA_")}
        argv = ["run", "p.yaml", "--input", "in", "--output", "out", "--runner", "process"]
        done = subprocess.run(
            [sys.executable, "-m", "server_mock", *argv, "--service-data", str(common)],
            capture_output=True,
            text=True,
            timeout=WAIT,
            cwd=folder,
            env=env,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    answer = json.loads((folder / "out" / "infer" / "answer.json").read_text())
    assert answer["data_path"] == str(common) and answer["config"] == CONFIG
