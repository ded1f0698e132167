"""Operators written for NVIDIA's Clara Pipeline Driver binding run unchanged under the mock.

The operators in ``nvidia_style/`` are written as NVIDIA's published ones are (the test operator
of NVIDIA's Clara DICOM adapter): ``from clara import Driver, Error, Payload``,
``Driver(execute_handler=...)``, an execute that returns nothing and raises on failure, and the
folders read from ``NVIDIA_CLARA_INPUTPATHS`` / ``NVIDIA_CLARA_OUTPUTPATHS`` with
``split(":")[1]``. Each runs as a real process, launched by the mock from the pipeline file.
"""

from __future__ import annotations

import json
from pathlib import Path

from server_mock import StageState
from server_mock.pytest_plugin import PipelineRunner

PIPELINE = Path(__file__).resolve().parent / "nvidia_style" / "pipeline.yaml"


def test_an_nvidia_style_pipeline_succeeds_and_its_outputs_land_in_the_job_payload(
    clara_pipeline_runner: PipelineRunner, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.dcm").write_bytes(b"first")
    (inputs / "b.dcm").write_bytes(b"second")

    run = clara_pipeline_runner(PIPELINE, inputs, job_name="nvidia-style-job")

    assert run.succeeded, run.describe()
    assert run.status.state == "STOPPED" and run.status.status == "HEALTHY"
    assert run.exit_codes == {"check-files": 0, "count-files": 0}
    checked = run.output("check-files", "checked")
    assert sorted(p.name for p in checked.iterdir()) == ["a.dcm", "b.dcm"]
    assert (checked / "b.dcm").read_bytes() == b"second"
    seen = json.loads((run.output("count-files") / "seen.json").read_text())
    # The notification handler read job_name and stage_timeout on the first notification.
    assert seen["first_notification"] == {
        "kind": "started",
        "job_name": "nvidia-style-job",
        "stage_timeout": 600.0,
    }
    assert seen["files"] == ["a.dcm", "b.dcm"]
    name, path, declared = seen["input_entry"]
    assert (name, declared) == ("checked", "/input/checked")
    assert seen["same_folder_as_payload"], path  # the variable names the payload's folder
    assert seen["output_declared_path"] == "/output"
    assert "prepare: job nvidia-style-job" in run.log("count-files")
    assert "cleanup" in run.log("count-files")


def test_the_same_operator_raising_faults_the_job(
    clara_pipeline_runner: PipelineRunner, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.dcm").write_bytes(b"first")
    (inputs / "scan.bad").write_bytes(b"not an image")

    run = clara_pipeline_runner(PIPELINE, inputs)

    assert not run.succeeded
    assert run.status.status == "FAULTED", run.describe()
    assert run.stage_states == {
        "check-files": StageState.FAILED,
        "count-files": StageState.CANCELLED,
    }
    message = run.job.stages["check-files"].message
    assert "execute raised Exception: 1 unreadable file(s): scan.bad" in message
    # It still copied what it could before raising, and the stage's log says why it failed.
    assert (run.output("check-files", "checked") / "a.dcm").read_bytes() == b"first"
    assert "unreadable file(s): scan.bad" in run.log("check-files")
