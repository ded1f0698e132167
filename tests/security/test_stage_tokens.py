"""Per-stage tokens: only the token of a stage moves that stage, and tokens never leak."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import clara
from clara.stage_api import stage_service_pb2 as pb
from clara.stage_api import stage_service_pb2_grpc as pb_grpc
from server_mock import InputRef, JobSnapshot, MockPlatform, StageSpec, StageState
from server_mock._auth import AuthResult, StageTokens, token_from_metadata
from server_mock._definition import parse_pipeline_definition
from server_mock._runner import LocalProcessLauncher
from server_mock._workspace import JobLayout

WAIT = 30.0
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
def platform() -> Iterator[MockPlatform]:
    with MockPlatform(require_stage_tokens=True) as mock:
        yield mock


@pytest.fixture
def stub(platform: MockPlatform) -> Iterator[pb_grpc.StageServiceStub]:
    with grpc.insecure_channel(platform.address) as channel:
        yield pb_grpc.StageServiceStub(channel)


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def ref(job_id: uuid.UUID, stage: str) -> pb.StageRef:
    return pb.StageRef(job_id=str(job_id), stage_name=stage)


def every_rpc(
    stub: pb_grpc.StageServiceStub, job_id: uuid.UUID, stage: str
) -> dict[str, Callable[[Metadata | None], object]]:
    """Each stage RPC aimed at ``stage``, taking the metadata to send."""
    target = ref(job_id, stage)

    def watch(metadata: Metadata | None) -> object:
        return next(stub.WatchStage(pb.WatchStageRequest(stage=target), WAIT, metadata))

    return {
        "GetStageContext": lambda m: stub.GetStageContext(
            pb.GetStageContextRequest(stage=target), WAIT, m
        ),
        "WatchStage": watch,
        "ReportStageEvent": lambda m: stub.ReportStageEvent(
            pb.ReportStageEventRequest(stage=target, kind=pb.STAGE_EVENT_KIND_EXECUTE_STARTED),
            WAIT,
            m,
        ),
        "ReportStageEvents": lambda m: stub.ReportStageEvents(
            pb.ReportStageEventsRequest(
                stage=target, events=[pb.StageEvent(kind=pb.STAGE_EVENT_KIND_EXECUTE_FINISHED)]
            ),
            WAIT,
            m,
        ),
        "CompleteStage": lambda m: stub.CompleteStage(
            pb.CompleteStageRequest(
                stage=target, report_id="r-1", outcome=pb.STAGE_OUTCOME_SUCCEEDED
            ),
            WAIT,
            m,
        ),
    }


def fingerprint(job: JobSnapshot) -> object:
    return (job.state, {n: (s.state, s.events, s.reports_applied) for n, s in job.stages.items()})


TWO_STAGES = [StageSpec("a"), StageSpec("b", inputs=(InputRef("/x", "a"),))]


@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        ("none", grpc.StatusCode.UNAUTHENTICATED),
        ("forged", grpc.StatusCode.UNAUTHENTICATED),
        ("not-bearer", grpc.StatusCode.UNAUTHENTICATED),
        ("twice", grpc.StatusCode.UNAUTHENTICATED),
        ("other-stage", grpc.StatusCode.PERMISSION_DENIED),
        ("other-job", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
@pytest.mark.parametrize(
    "rpc",
    ["GetStageContext", "WatchStage", "ReportStageEvent", "ReportStageEvents", "CompleteStage"],
)
def test_a_call_without_the_stage_own_token_is_refused_and_changes_nothing(
    platform: MockPlatform,
    stub: pb_grpc.StageServiceStub,
    credentials: str,
    code: grpc.StatusCode,
    rpc: str,
) -> None:
    job_id = platform.create_job(TWO_STAGES)
    other_job = platform.create_job([StageSpec("a")])
    token_a = platform.stage_token(job_id, "a")
    metadata: Metadata | None = {
        "none": None,
        "forged": bearer("x" * 43),
        "not-bearer": (("authorization", token_a),),
        "twice": (*bearer(token_a), *bearer(token_a)),
        "other-stage": bearer(platform.stage_token(job_id, "b")),
        "other-job": bearer(platform.stage_token(other_job, "a")),
    }[credentials]
    before = fingerprint(platform.job(job_id))
    with pytest.raises(grpc.RpcError) as raised:
        every_rpc(stub, job_id, "a")[rpc](metadata)
    assert raised.value.code() is code
    assert token_a not in (raised.value.details() or "")
    assert fingerprint(platform.job(job_id)) == before


def test_the_stage_own_token_is_accepted_on_every_rpc(
    platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = platform.create_job(TWO_STAGES)
    metadata = bearer(platform.stage_token(job_id, "a"))
    for call in every_rpc(stub, job_id, "a").values():
        call(metadata)
    job = platform.job(job_id)
    assert job.stages["a"].state is StageState.SUCCEEDED
    assert job.stages["b"].state is StageState.READY  # b moved only through the DAG


def test_a_token_of_stage_a_cannot_complete_stage_b(
    platform: MockPlatform, stub: pb_grpc.StageServiceStub
) -> None:
    job_id = platform.create_job([StageSpec("a"), StageSpec("b")])
    with pytest.raises(grpc.RpcError) as raised:
        every_rpc(stub, job_id, "b")["CompleteStage"](bearer(platform.stage_token(job_id, "a")))
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert platform.job(job_id).stages["b"].state is StageState.READY


def test_tokens_are_random_per_stage_and_stable(platform: MockPlatform) -> None:
    job_id = platform.create_job(TWO_STAGES)
    tokens = {platform.stage_token(job_id, s) for s in ("a", "b")}
    assert len(tokens) == 2 and all(len(t) >= 40 for t in tokens)
    assert platform.stage_token(job_id, "a") in tokens
    with pytest.raises(KeyError):
        platform.stage_token(job_id, "ghost")


def test_the_store_judges_tokens() -> None:
    store = StageTokens()
    job, other = uuid.uuid4(), uuid.uuid4()
    token = store.issue(job, "a")
    assert store.check(token, job, "a") is AuthResult.OK
    assert store.check(token, job, "b") is AuthResult.WRONG_STAGE
    assert store.check(token, other, "a") is AuthResult.WRONG_STAGE
    assert store.check(token + "x", job, "a") is AuthResult.UNKNOWN
    assert store.check(None, job, "a") is AuthResult.MISSING
    assert store.check("y" * 5000, job, "a") is AuthResult.MISSING
    store.revoke_job(job)
    assert store.check(token, job, "a") is AuthResult.UNKNOWN
    assert token_from_metadata([("authorization", "bearer abc")]) == "abc"
    assert token_from_metadata([("authorization", "Basic abc")]) is None
    assert token_from_metadata([("authorization", b"Bearer abc")]) is None


def test_platforms_without_required_tokens_accept_calls_without_them(
    clara_platform: MockPlatform,
) -> None:
    job_id = clara_platform.create_job([StageSpec("only")])
    driver = clara.Driver(
        execute=lambda d, p: True, target=clara_platform.address, job_id=job_id, stage_name="only"
    )
    driver.start()
    assert driver.wait_for_completion(WAIT).succeeded


def test_a_driver_sends_its_token_and_it_never_appears_in_logs_or_notifications(
    platform: MockPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    job_id = platform.create_job(TWO_STAGES)
    token_a, token_b = platform.stage_token(job_id, "a"), platform.stage_token(job_id, "b")
    seen: list[str] = []

    def notify(driver: clara.Driver[Any], notification: clara.Notification) -> None:
        seen.append(repr(notification))

    def driver(stage: str, token: str | None) -> clara.Driver[Any]:
        return clara.Driver(
            execute=lambda d, p: True,
            notify=notify,
            target=platform.address,
            job_id=job_id,
            stage_name=stage,
            stage_token=token,
            retry=clara.RetryConfig(initial=0.01, maximum=0.02),
        )

    good = driver("a", token_a)
    good.start()
    assert good.wait_for_completion(WAIT).succeeded
    # A stage presenting another stage's token is refused, and the refusal leaks neither.
    thief = driver("b", token_a)
    assert token_a not in repr(thief._config) and "stage_token" not in repr(thief._config)
    thief.start()
    stolen = thief.wait_for_completion(WAIT)
    assert not stolen.succeeded
    assert isinstance(stolen.error, clara.PermissionDeniedError)
    assert platform.job(job_id).stages["b"].state is StageState.READY
    text = "\n".join(
        [*seen, stolen.message, repr(stolen.error), caplog.text]
        + [r.getMessage() for r in caplog.records]
    )
    for token in (token_a, token_b):
        assert token not in text


def test_a_malformed_token_is_not_echoed_in_the_error() -> None:
    secret = "s3cr3t value with spaces that must not leak"
    with pytest.raises(clara.ConfigurationError) as raised:
        clara.Driver(target="127.0.0.1:1", job_id=uuid.uuid4(), stage_name="s", stage_token=secret)
    assert secret not in str(raised.value) and secret != raised.value.value
    assert raised.value.setting == "stage_token"


def test_the_launcher_hands_each_operator_its_own_token_and_drops_inherited_ones(
    platform: MockPlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NVIDIA_CLARA_STAGE_TOKEN", "inherited-from-the-shell-0000")
    monkeypatch.setenv("NVIDIA_CLARA_TLS_CA", "/inherited/ca.pem")
    definition = parse_pipeline_definition(
        "api-version: 0.4.0\nname: p\noperators:\n"
        "- name: a\n  container: {image: t/a}\n  input: [{path: /in}]\n  output: [{path: /o}]\n"
        "- name: b\n  container: {image: t/b}\n  input: [{from: a, path: /in}]\n"
    )
    job_id = platform.create_job([StageSpec("a"), StageSpec("b")], start=False)
    launcher = LocalProcessLauncher(
        lambda: platform.address, tmp_path, stage_token=platform.stage_tokens.issue
    )
    job = platform.call(lambda: platform.jobs.get(job_id))
    layout = JobLayout(tmp_path / "job")
    envs = {op.name: launcher.environment_for(job, op, layout) for op in definition.operators}
    assert envs["a"]["NVIDIA_CLARA_STAGE_TOKEN"] == platform.stage_token(job_id, "a")
    assert envs["b"]["NVIDIA_CLARA_STAGE_TOKEN"] == platform.stage_token(job_id, "b")
    assert all("NVIDIA_CLARA_TLS_CA" not in env for env in envs.values())
    assert os.environ["NVIDIA_CLARA_STAGE_TOKEN"] not in envs["a"].values()
