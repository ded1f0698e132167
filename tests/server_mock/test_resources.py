"""An operator's ``requests`` as limits: memory it cannot exceed, CPUs, GPUs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _launch import driver_operator, pipeline, platform

from server_mock import JobState, StageState
from server_mock._client import PlatformApiError
from server_mock._definition import PipelineDefinitionError, parse_pipeline_definition
from server_mock._resources import ResourceLimits, parse_requests
from server_mock._sandbox import bwrap_problem

MIB = 1024 * 1024
RUNNERS = ["process", "sandbox"]


def requests_of(requests: str) -> ResourceLimits:
    definition = parse_pipeline_definition(
        "api-version: 0.4.0\nname: p\noperators:\n"
        f"- name: op\n  container: {{image: t/op}}\n  requests: {requests}\n"
    )
    return parse_requests(definition.operator("op"))


@pytest.mark.parametrize(
    ("requests", "limits"),
    [
        ("{memory: 256}", ResourceLimits(memory_bytes=256 * MIB)),  # the docs' MB, read as MiB
        ("{memory: 1024, cpu: 2, gpu: 1}", ResourceLimits(1024 * MIB, 2, 1)),
        ("{cpu: 3, gpu: 0}", ResourceLimits(cpus=3)),
        ("{gpu: 2}", ResourceLimits(gpus=2)),
        ("{}", ResourceLimits()),
    ],
)
def test_requests_are_read_as_the_clara_docs_define_them(
    requests: str, limits: ResourceLimits
) -> None:
    assert requests_of(requests) == limits


@pytest.mark.parametrize(
    ("requests", "field"),
    [
        ("{memory: lots}", "requests.memory"),
        ("{memory: 0}", "requests.memory"),
        ("{memory: '256Mi'}", "requests.memory"),  # the docs give whole megabytes only
        ("{memory: true}", "requests.memory"),
        ("{cpu: -1}", "requests.cpu"),
        ("{cpu: '500m'}", "requests.cpu"),
        ("{gpu: 1.5}", "requests.gpu"),
    ],
)
def test_a_bad_request_names_the_operator_and_field(requests: str, field: str) -> None:
    with pytest.raises(PipelineDefinitionError) as refused:
        requests_of(requests)
    assert (refused.value.operator, refused.value.field) == ("op", field)


def needs(runner: str) -> None:
    if runner == "sandbox":
        assert bwrap_problem() is None, f"the sandbox tests need bubblewrap: {bwrap_problem()}"


def test_pipelines_create_refuses_a_bad_request_and_stores_nothing(tmp_path: Path) -> None:
    with platform(tmp_path) as running:
        definition = pipeline(
            driver_operator("op", "pass", "input: [{path: /input}]\nrequests: {memory: lots}")
        )
        with pytest.raises(PlatformApiError, match=r"requests\.memory"):
            running.submit(definition)
        assert running.mock.call(running.mock.jobs.all) == []
        assert running.mock.call(running.mock.state.pipelines.all) == []


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_driver_exceeding_its_memory_request_fails_its_stage_saying_so(
    tmp_path: Path, runner: str
) -> None:
    needs(runner)
    with platform(tmp_path, runner=runner) as running:
        run = running.run(
            pipeline(
                driver_operator(
                    "greedy",
                    "hoard = bytearray(600 * 1024 * 1024)",
                    "input: [{path: /input}]\nrequests: {memory: 300}",
                )
            )
        )
    stage = run.job.stages["greedy"]
    assert stage.state is StageState.FAILED
    assert "MemoryError" in stage.message  # the driver's report
    assert "ran out of memory" in run.logs["greedy"]
    assert "requests.memory limits it to 300 MiB" in run.logs["greedy"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_process_killed_by_its_memory_limit_fails_its_stage_saying_so(
    tmp_path: Path, runner: str
) -> None:
    needs(runner)
    definition = pipeline(
        """
        - name: greedy
          container: {image: t/greedy, command: [python, greedy.py]}
          input: [{path: /input}]
          requests: {memory: 64}
        """
    )
    with platform(
        tmp_path, {"greedy.py": "hoard = bytearray(256 * 1024 * 1024)\n"}, runner=runner
    ) as running:
        run = running.run(definition)
    stage = run.job.stages["greedy"]
    assert stage.state is StageState.FAILED
    assert "exited with code 1 before reporting an outcome; it ran out of memory" in stage.message
    assert "requests.memory limits it to 64 MiB" in stage.message


@pytest.mark.parametrize("runner", RUNNERS)
def test_an_operator_within_its_requests_runs_on_its_cpus_and_gpus(
    tmp_path: Path, runner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs(runner)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # the GPUs the mock may hand out
    report = """
    import json, os, pathlib
    seen = {"cpus": sorted(os.sched_getaffinity(0)), "gpus": os.environ["CUDA_VISIBLE_DEVICES"]}
    (pathlib.Path(payload.output().path) / "seen.json").write_text(json.dumps(seen))
    """
    operators = "".join(
        driver_operator(name, report, f"input: [{{path: /input}}]\noutput: [{{path: /o}}]\n{req}")
        for name, req in [
            ("one", "requests: {memory: 512, cpu: 1, gpu: 1}"),
            ("other", "requests: {cpu: 1, gpu: 1}"),
            ("none", ""),
            ("all", "requests: {gpu: 4}"),
        ]
    )
    with platform(tmp_path, runner=runner) as running:
        run = running.run(pipeline(operators))
    assert run.job.state is JobState.SUCCEEDED, (run.job.message, run.logs)
    seen = {
        name: json.loads((run.output(name) / "seen.json").read_text()) for name in run.job.stages
    }
    available = sorted(os.sched_getaffinity(0))
    assert len(seen["one"]["cpus"]) == 1 and len(seen["other"]["cpus"]) == 1
    if len(available) > 1:  # spread over the CPUs, not stacked on the first
        assert seen["one"]["cpus"] != seen["other"]["cpus"]
    assert seen["none"]["cpus"] == available
    assert {seen["one"]["gpus"], seen["other"]["gpus"]} == {"3", "5"}
    assert seen["none"]["gpus"] == ""  # no request, no GPU: as on the platform
    assert seen["all"]["gpus"] == "3,5"  # fewer than requested: all of them, with a warning
