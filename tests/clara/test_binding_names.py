"""The names and return values of NVIDIA's Clara Pipeline Driver binding, beside the seed's.

Standalone drivers (no platform): each test runs a real life-cycle in a few milliseconds.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

import clara
from server_mock import MockPlatform, StageSpec

WAIT = 20.0
ROLES = ("prepare", "execute", "cleanup")
BINDING = {
    "prepare": "prepare_handler",
    "execute": "execute_handler",
    "cleanup": "cleanup_handler",
    "notify": "notification_handler",
}


@pytest.fixture
def drivers() -> Iterator[list[clara.Driver[Any]]]:
    started: list[clara.Driver[Any]] = []
    yield started
    for driver in started:
        driver.wait_for_completion(WAIT)


def standalone(started: list[clara.Driver[Any]], **callbacks: Any) -> clara.Driver[Any]:
    driver = clara.Driver(
        standalone=True,
        job_id=uuid.uuid4(),
        stage_name="compat",
        environ={},
        handle_sigterm=False,
        **callbacks,
    )
    started.append(driver)
    return driver


def run(started: list[clara.Driver[Any]], **callbacks: Any) -> clara.StageResult:
    driver = standalone(started, **callbacks)
    driver.start()
    return driver.wait_for_completion(WAIT)


def recorder(calls: list[str], role: str, value: object = None) -> Callable[..., object]:
    def callback(driver: clara.Driver[Any], *args: Any) -> object:
        calls.append(role)
        return value

    return callback


# -- the binding's keywords -----------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_each_callback_runs_under_the_bindings_keyword(
    drivers: list[clara.Driver[Any]], role: str
) -> None:
    calls: list[str] = []
    result = run(drivers, **{BINDING[role]: recorder(calls, role)})
    assert result.succeeded, result.message
    assert calls == [role]


def test_every_binding_keyword_together_runs_the_whole_life_cycle(
    drivers: list[clara.Driver[Any]],
) -> None:
    calls: list[str] = []
    kinds: list[clara.NotificationKind] = []
    result = run(
        drivers,
        prepare_handler=recorder(calls, "prepare"),
        execute_handler=recorder(calls, "execute"),
        cleanup_handler=recorder(calls, "cleanup"),
        notification_handler=lambda d, n: kinds.append(n.kind),
    )
    assert result.succeeded, result.message
    assert calls == ["prepare", "execute", "cleanup"]
    assert kinds[0] is clara.NotificationKind.STARTED
    assert kinds[-1] is clara.NotificationKind.COMPLETED


@pytest.mark.parametrize("role", [*ROLES, "notify"])
def test_one_callback_under_both_of_its_names_is_refused_naming_both(role: str) -> None:
    def callback(*args: Any) -> None:
        return None

    binding = BINDING[role]
    with pytest.raises(clara.ConfigurationError) as raised:
        clara.Driver(standalone=True, environ={}, **{role: callback, binding: callback})
    assert f"{role}=" in str(raised.value)
    assert f"{binding}=" in str(raised.value)
    assert raised.value.setting == f"{role}/{binding}"


@pytest.mark.parametrize("role", [*ROLES, "notify"])
def test_a_binding_keyword_that_is_not_callable_is_refused_by_its_name(role: str) -> None:
    with pytest.raises(clara.ConfigurationError, match=rf"{BINDING[role]} \('nope'\)"):
        clara.Driver(standalone=True, environ={}, **{BINDING[role]: "nope"})


def test_the_seeds_positional_and_keyword_api_is_unchanged(
    drivers: list[clara.Driver[Any]],
) -> None:
    calls: list[str] = []
    kinds: list[clara.NotificationKind] = []
    driver = clara.Driver(
        recorder(calls, "prepare", True),
        recorder(calls, "execute", True),
        recorder(calls, "cleanup", True),
        lambda d, n: kinds.append(n.kind),
        {"model": "unet"},
        standalone=True,
        environ={},
        handle_sigterm=False,
    )
    drivers.append(driver)
    driver.start()
    assert driver.wait_for_completion(WAIT).succeeded
    assert calls == ["prepare", "execute", "cleanup"]
    assert driver.app_data == {"model": "unet"}
    assert clara.NotificationKind.COMPLETED in kinds


# -- return values --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("value", [None, True])
def test_none_and_true_are_success(
    drivers: list[clara.Driver[Any]], role: str, value: object
) -> None:
    calls: list[str] = []
    result = run(drivers, **{role: recorder(calls, role, value)})
    assert result.outcome is clara.StageOutcome.SUCCEEDED, result.message
    assert calls == [role]


@pytest.mark.parametrize("role", ROLES)
def test_false_fails_the_stage_naming_the_callback(
    drivers: list[clara.Driver[Any]], role: str
) -> None:
    result = run(drivers, **{role: recorder([], role, False)})
    assert result.outcome is clara.StageOutcome.FAILED
    assert result.message == f"{role} returned False"


@pytest.mark.parametrize("role", ROLES)
def test_raising_fails_the_stage_naming_the_exception(
    drivers: list[clara.Driver[Any]], role: str
) -> None:
    def callback(driver: clara.Driver[Any], *args: Any) -> None:
        raise clara.Error("no model")  # the binding's exception type, as an operator raises it

    result = run(drivers, **{role: callback})
    assert result.outcome is clara.StageOutcome.FAILED
    assert result.message == f"{role} raised ClaraError: no model"
    assert isinstance(result.error, clara.Error)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("value", [0, 1, "ok", [], {"ok": True}])
def test_any_other_value_fails_naming_the_callback_and_the_value(
    drivers: list[clara.Driver[Any]], role: str, value: object
) -> None:
    result = run(drivers, **{role: recorder([], role, value)})
    assert result.outcome is clara.StageOutcome.FAILED
    assert result.message == (
        f"{role} returned {value!r}; expected None or True (success) or False (failure)"
    )


def test_a_none_returning_execute_still_runs_cleanup_and_succeeds(
    drivers: list[clara.Driver[Any]],
) -> None:
    calls: list[str] = []
    result = run(drivers, execute_handler=recorder(calls, "execute"), cleanup=lambda d: True)
    assert result.succeeded and result.message == "all callbacks succeeded"
    assert calls == ["execute"]


# -- job_name and stage_timeout from the environment ----------------------------------------


def platform_environ(
    job_id: uuid.UUID, address: str = "127.0.0.1:1", **extra: str
) -> dict[str, str]:
    return {
        "NVIDIA_CLARA_STAGE_SERVICE": address,
        "NVIDIA_CLARA_JOBID": str(job_id),
        "NVIDIA_CLARA_STAGENAME": "only",
        **extra,
    }


def test_job_name_and_stage_timeout_are_known_at_construction_from_the_environment() -> None:
    driver = clara.Driver(
        environ=platform_environ(
            uuid.uuid4(), NVIDIA_CLARA_JOBNAME="ct-42", NVIDIA_CLARA_TIMEOUT="90"
        )
    )
    assert driver.job_name == "ct-42"
    assert driver.stage_timeout == timedelta(seconds=90)
    with pytest.raises(clara.ContextUnavailableError):
        driver.context  # noqa: B018 - the context itself still comes from the platform


def test_without_them_reading_before_the_context_still_raises() -> None:
    driver = clara.Driver(environ=platform_environ(uuid.uuid4()))
    with pytest.raises(clara.ContextUnavailableError, match="the job name is not known yet"):
        driver.job_name  # noqa: B018
    with pytest.raises(clara.ContextUnavailableError, match="the stage timeout is not known"):
        driver.stage_timeout  # noqa: B018


@pytest.mark.parametrize("value", ["soon", "0", "-5", "1801"])
def test_a_malformed_timeout_is_a_configuration_error_naming_the_variable(value: str) -> None:
    with pytest.raises(clara.ConfigurationError, match=rf"NVIDIA_CLARA_TIMEOUT \('{value}'\)"):
        clara.Driver(environ=platform_environ(uuid.uuid4(), NVIDIA_CLARA_TIMEOUT=value))


def test_a_notification_callback_reads_job_name_on_the_first_notification(
    clara_platform: MockPlatform, drivers: list[clara.Driver[Any]]
) -> None:
    job_id = clara_platform.create_job(
        [StageSpec("only", timeout=timedelta(seconds=30))], name="first-read"
    )
    first: list[tuple[clara.NotificationKind, str, timedelta]] = []

    def notify(driver: clara.Driver[Any], notification: clara.Notification) -> None:
        if not first:
            first.append((notification.kind, driver.job_name, driver.stage_timeout))

    driver = clara.Driver(
        execute=lambda d, p: None,
        notification_handler=notify,
        environ=platform_environ(
            job_id,
            clara_platform.address,
            NVIDIA_CLARA_JOBNAME="first-read",
            NVIDIA_CLARA_TIMEOUT="30",
        ),
        handle_sigterm=False,
    )
    drivers.append(driver)
    driver.start()
    assert driver.wait_for_completion(WAIT).succeeded
    assert first == [(clara.NotificationKind.STARTED, "first-read", timedelta(seconds=30))]


def test_the_platforms_context_wins_over_the_environment_and_a_disagreement_is_logged(
    clara_platform: MockPlatform,
    drivers: list[clara.Driver[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = clara_platform.create_job(
        [StageSpec("only", timeout=timedelta(seconds=30))], name="from-the-platform"
    )
    seen: list[tuple[str, timedelta]] = []
    driver = clara.Driver(
        execute=lambda d, p: seen.append((d.job_name, d.stage_timeout)),
        environ=platform_environ(
            job_id,
            clara_platform.address,
            NVIDIA_CLARA_JOBNAME="stale",
            NVIDIA_CLARA_TIMEOUT="30",
        ),
        handle_sigterm=False,
    )
    drivers.append(driver)
    assert driver.job_name == "stale"
    with caplog.at_level(logging.WARNING, logger="clara"):
        driver.start()
        assert driver.wait_for_completion(WAIT).succeeded
    assert seen == [("from-the-platform", timedelta(seconds=30))]
    assert driver.job_name == "from-the-platform"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("job name from-the-platform" in w and "gave stale" in w for w in warnings)
    assert not any("stage timeout" in w for w in warnings)  # that one agreed


# -- standalone payloads from NVIDIA_CLARA_INPUTPATHS / NVIDIA_CLARA_OUTPUTPATHS -------------


def test_standalone_payload_entries_come_from_the_paths_variables(
    drivers: list[clara.Driver[Any]], tmp_path: Any
) -> None:
    seen: list[clara.Payload] = []
    driver = clara.Driver(
        execute_handler=lambda d, p: seen.append(p),
        environ={
            "NVIDIA_CLARA_NOSYNCLOCK": "1",
            "NVIDIA_CLARA_INPUTPATHS": f":{tmp_path}/in;mask:{tmp_path}/mask",
            "NVIDIA_CLARA_OUTPUTPATHS": f"dcmout:{tmp_path}/out",
            "NVIDIA_CLARA_INPUT": "/ignored/when/the/paths/are/given",
        },
        handle_sigterm=False,
    )
    drivers.append(driver)
    driver.start()
    assert driver.wait_for_completion(WAIT).succeeded
    (payload,) = seen
    assert payload.input_entries == (
        clara.PayloadEntry("", f"{tmp_path}/in"),
        clara.PayloadEntry("mask", f"{tmp_path}/mask"),
    )
    assert payload.output("dcmout").path == f"{tmp_path}/out"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("/no/name/part", "expected name:path"),
        ("in:", "expected name:path"),
        (":/a;:/b", "the unnamed entry is given twice"),
        ("a:/x;A:/y", "'A' is given twice"),
        ("bad name:/x", "the name must be"),
        (";", "expected at least one name:path entry"),
    ],
)
def test_malformed_paths_are_a_configuration_error_naming_the_variable(
    value: str, reason: str
) -> None:
    with pytest.raises(clara.ConfigurationError) as raised:
        clara.Driver(environ={"NVIDIA_CLARA_NOSYNCLOCK": "1", "NVIDIA_CLARA_INPUTPATHS": value})
    assert raised.value.setting == "NVIDIA_CLARA_INPUTPATHS"
    assert raised.value.value == value
    assert reason in str(raised.value)
