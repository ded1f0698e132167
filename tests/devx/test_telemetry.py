"""clara.telemetry: optional OpenTelemetry spans for the life-cycle and for gRPC calls."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import clara
from clara.telemetry import (
    LifecycleTracer,
    instrument_grpc_client,
    traced_channel,
    uninstrument_grpc_client,
)
from server_mock.pytest_plugin import StageRunner

WAIT = 20.0

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
trace_api = pytest.importorskip("opentelemetry.trace")
export = pytest.importorskip("opentelemetry.sdk.trace.export")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")

STAGE_API = "/nvidia.clara.platform.stage.v1.StageService/"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_core_package_never_imports_opentelemetry() -> None:
    proc = run_python(
        "import sys, clara, clara.telemetry\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    assert proc.returncode == 0, proc.stderr


def test_without_opentelemetry_it_imports_and_fails_clearly_when_used() -> None:
    proc = run_python(
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if the extra were not installed\n"
        "import clara\n"
        "from clara.telemetry import LifecycleTracer, TelemetryUnavailableError\n"
        "try:\n"
        "    LifecycleTracer()\n"
        "except TelemetryUnavailableError as error:\n"
        "    assert isinstance(error, ImportError) and isinstance(error, clara.ClaraError)\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "clara.telemetry needs opentelemetry.trace" in proc.stdout
    assert "pip install 'clara-stage-driver[otel]'" in proc.stdout


@pytest.fixture
def spans() -> Iterator[tuple[Any, Any]]:
    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def by_name(finished: Any) -> dict[str, Any]:
    named = {span.name: span for span in finished}
    assert len(named) == len(finished), [s.name for s in finished]
    return named


def test_lifecycle_spans(clara_stage_runner: StageRunner, spans: tuple[Any, Any]) -> None:
    provider, exporter = spans
    seen: list[clara.NotificationKind] = []

    run = clara_stage_runner(
        prepare=lambda d: True,
        execute=lambda d, p: True,
        cleanup=lambda d: True,
        notify=LifecycleTracer(provider, notify=lambda d, n: seen.append(n.kind)),
        stage="traced",
        job_name="tracing-job",
    )

    assert run.result.succeeded
    assert seen == run.kinds  # the chained callback saw everything
    named = by_name(exporter.get_finished_spans())
    assert set(named) == {"clara.stage", "clara.prepare", "clara.execute", "clara.cleanup"}
    root = named["clara.stage"]
    assert root.parent is None
    assert dict(root.attributes) == {
        "clara.job_id": str(run.job_id),
        "clara.stage": "traced",
        "clara.job_name": "tracing-job",
        "clara.outcome": "succeeded",
    }
    assert root.status.status_code is trace_api.StatusCode.OK
    events = [e.name for e in root.events]
    assert events[:2] == ["context_received", "connected"] or events[:2] == [
        "connected",
        "context_received",
    ]
    assert {"waiting_for_inputs", "inputs_ready", "outcome_reported", "completed"} <= set(events)
    order = ["clara.prepare", "clara.execute", "clara.cleanup"]
    for name in order:
        child = named[name]
        assert child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
        assert child.attributes["clara.returned"] == "True"
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    starts = [named[name].start_time for name in order]
    assert starts == sorted(starts)


def test_a_failing_execute_is_an_error_span(
    clara_stage_runner: StageRunner, spans: tuple[Any, Any]
) -> None:
    provider, exporter = spans

    def broken(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        raise RuntimeError("no memory")

    run = clara_stage_runner(execute=broken, notify=LifecycleTracer(provider))

    assert run.result.outcome is clara.StageOutcome.FAILED
    named = by_name(exporter.get_finished_spans())
    execute = named["clara.execute"]
    assert execute.status.status_code is trace_api.StatusCode.ERROR
    assert "execute raised RuntimeError: no memory" in execute.status.description
    (exception,) = [e for e in execute.events if e.name == "exception"]
    assert exception.attributes["exception.type"] == "RuntimeError"
    root = named["clara.stage"]
    assert root.attributes["clara.outcome"] == "failed"
    assert root.status.status_code is trace_api.StatusCode.ERROR


def test_execute_returning_false_fails_its_span(
    clara_stage_runner: StageRunner, spans: tuple[Any, Any]
) -> None:
    provider, exporter = spans
    clara_stage_runner(execute=lambda d, p: False, notify=LifecycleTracer(provider))
    execute = by_name(exporter.get_finished_spans())["clara.execute"]
    assert execute.attributes["clara.returned"] == "False"
    assert execute.status.status_code is trace_api.StatusCode.ERROR


def test_one_tracer_serves_several_drivers(
    clara_stage_runner: StageRunner, spans: tuple[Any, Any]
) -> None:
    provider, exporter = spans
    tracer = LifecycleTracer(provider)
    first = clara_stage_runner(execute=lambda d, p: True, notify=tracer, stage="a")
    second = clara_stage_runner(execute=lambda d, p: True, notify=tracer, stage="b")
    roots = [s for s in exporter.get_finished_spans() if s.name == "clara.stage"]
    assert sorted(r.attributes["clara.job_id"] for r in roots) == sorted(
        [str(first.job_id), str(second.job_id)]
    )
    assert roots[0].context.trace_id != roots[1].context.trace_id


def stage_api_calls(finished: Any) -> set[str]:
    calls = [s for s in finished if s.kind is trace_api.SpanKind.CLIENT]
    assert all(s.attributes.get("rpc.system") == "grpc" for s in calls)
    return {s.name.removeprefix(STAGE_API) for s in calls if s.name.startswith(STAGE_API)}


def test_a_traced_channel_makes_client_spans(
    clara_stage_runner: StageRunner, spans: tuple[Any, Any]
) -> None:
    provider, exporter = spans
    platform = clara_stage_runner.platform

    def execute(driver: clara.Driver[Any], payload: clara.Payload) -> bool:
        # Runs until the platform has the EXECUTE_STARTED event: a batch of events was sent.
        platform.wait_for_stage(
            driver.job_id, driver.stage_name, lambda s: "execute_started" in s.events, WAIT
        )
        return True

    channel = traced_channel(grpc.insecure_channel(platform.address), provider)
    try:
        run = clara_stage_runner(execute=execute, driver_options={"channel": channel})
    finally:
        channel.close()

    assert run.result.succeeded
    called = stage_api_calls(exporter.get_finished_spans())
    assert {"ReportStageEvents", "CompleteStage"} <= called
    assert "WatchStage" not in called  # a cancelled stream: see UNTRACED_METHODS


@pytest.fixture
def global_spans() -> Iterator[Any]:
    """An in-memory exporter on the global tracer provider (which can be set only once)."""
    exporter = in_memory.InMemorySpanExporter()
    processor = export.SimpleSpanProcessor(exporter)
    current = trace_api.get_tracer_provider()
    if not isinstance(current, sdk_trace.TracerProvider):
        trace_api.set_tracer_provider(sdk_trace.TracerProvider())
        current = trace_api.get_tracer_provider()
    assert isinstance(current, sdk_trace.TracerProvider)
    current.add_span_processor(processor)
    yield exporter
    exporter.clear()
    processor.shutdown()


def test_instrumenting_grpc_traces_every_channel(
    clara_stage_runner: StageRunner, global_spans: Any
) -> None:
    instrument_grpc_client()
    try:
        instrument_grpc_client()  # a second call changes nothing
        run = clara_stage_runner(execute=lambda d, p: True)
    finally:
        uninstrument_grpc_client()

    assert run.result.succeeded
    called = stage_api_calls(global_spans.get_finished_spans())
    assert "CompleteStage" in called
    assert "WatchStage" not in called

    global_spans.clear()
    assert clara_stage_runner(execute=lambda d, p: True).result.succeeded
    assert stage_api_calls(global_spans.get_finished_spans()) == set()
