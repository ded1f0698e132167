import random
import uuid
from datetime import timedelta

import pytest

import clara
from clara._config import resolve_config

JOB = "0b0e3a53-4ad1-4f7e-a4de-6f1f4c5a9d11"


def resolve(environ: dict[str, str], **args: object) -> clara._config.DriverConfig:
    defaults: dict[str, object] = dict(
        target=None, job_id=None, stage_name=None, standalone=None, timeouts=None, retry=None
    )
    defaults.update(args)
    return resolve_config(environ=environ, **defaults)  # type: ignore[arg-type]


def test_settings_come_from_the_environment() -> None:
    config = resolve(
        {
            "NVIDIA_CLARA_STAGE_SERVICE": "127.0.0.1:5000",
            "NVIDIA_CLARA_JOBID": JOB,
            "NVIDIA_CLARA_STAGENAME": "segment",
        }
    )
    assert config.target == "127.0.0.1:5000"
    assert config.job_id == uuid.UUID(JOB)
    assert config.stage_name == "segment"
    assert not config.standalone


def test_arguments_win_over_the_environment() -> None:
    other = uuid.uuid4()
    config = resolve(
        {
            "NVIDIA_CLARA_STAGE_SERVICE": "127.0.0.1:5000",
            "NVIDIA_CLARA_JOBID": JOB,
            "NVIDIA_CLARA_STAGENAME": "segment",
        },
        target="localhost:6000",
        job_id=other,
        stage_name="report",
    )
    assert (config.target, config.job_id, config.stage_name) == ("localhost:6000", other, "report")


@pytest.mark.parametrize(
    ("environ", "setting", "value"),
    [
        (
            {"NVIDIA_CLARA_JOBID": JOB, "NVIDIA_CLARA_STAGENAME": "s"},
            "NVIDIA_CLARA_STAGE_SERVICE",
            None,
        ),
        (
            {
                "NVIDIA_CLARA_STAGE_SERVICE": "h:1",
                "NVIDIA_CLARA_JOBID": "not-a-uuid",
                "NVIDIA_CLARA_STAGENAME": "s",
            },
            "NVIDIA_CLARA_JOBID",
            "not-a-uuid",
        ),
        (
            {"NVIDIA_CLARA_STAGE_SERVICE": "h:1", "NVIDIA_CLARA_JOBID": JOB},
            "NVIDIA_CLARA_STAGENAME",
            None,
        ),
        (
            {
                "NVIDIA_CLARA_STAGE_SERVICE": "h:1",
                "NVIDIA_CLARA_JOBID": JOB,
                "NVIDIA_CLARA_STAGENAME": "a b",
            },
            "NVIDIA_CLARA_STAGENAME",
            "a b",
        ),
        (
            {
                "NVIDIA_CLARA_STAGE_SERVICE": "nohostport",
                "NVIDIA_CLARA_JOBID": JOB,
                "NVIDIA_CLARA_STAGENAME": "s",
            },
            "NVIDIA_CLARA_STAGE_SERVICE",
            "nohostport",
        ),
        (
            {
                "NVIDIA_CLARA_STAGE_SERVICE": "h:99999",
                "NVIDIA_CLARA_JOBID": JOB,
                "NVIDIA_CLARA_STAGENAME": "s",
            },
            "NVIDIA_CLARA_STAGE_SERVICE",
            "h:99999",
        ),
        ({"NVIDIA_CLARA_NOSYNCLOCK": "maybe"}, "NVIDIA_CLARA_NOSYNCLOCK", "maybe"),
        (
            {"NVIDIA_CLARA_NOSYNCLOCK": "1", "NVIDIA_CLARA_TIMEOUT": "forever"},
            "NVIDIA_CLARA_TIMEOUT",
            "forever",
        ),
        (
            {"NVIDIA_CLARA_NOSYNCLOCK": "1", "NVIDIA_CLARA_TIMEOUT": "7200"},
            "NVIDIA_CLARA_TIMEOUT",
            "7200",
        ),
    ],
)
def test_bad_settings_name_the_variable_and_value(
    environ: dict[str, str], setting: str, value: str | None
) -> None:
    with pytest.raises(clara.ConfigurationError) as raised:
        resolve(environ)
    assert raised.value.setting == setting
    assert raised.value.value == value
    assert setting in str(raised.value)
    if value is not None:
        assert repr(value) in str(raised.value)


def test_bad_argument_names_the_argument() -> None:
    with pytest.raises(clara.ConfigurationError, match=r"job_id \(42\)"):
        resolve({}, target="h:1", job_id=42, stage_name="s")


def test_driver_constructor_raises_configuration_error() -> None:
    with pytest.raises(clara.ConfigurationError, match="NVIDIA_CLARA_JOBID"):
        clara.Driver(environ={"NVIDIA_CLARA_STAGE_SERVICE": "h:1", "NVIDIA_CLARA_STAGENAME": "s"})
    with pytest.raises(clara.ConfigurationError, match="execute"):
        clara.Driver(execute="not callable", environ={"NVIDIA_CLARA_NOSYNCLOCK": "1"})  # type: ignore[arg-type]


def test_standalone_defaults() -> None:
    config = resolve(
        {
            "NVIDIA_CLARA_NOSYNCLOCK": "TRUE",
            "NVIDIA_CLARA_TIMEOUT": "30",
            "NVIDIA_CLARA_INPUT": "/data/in",
        }
    )
    assert config.standalone
    assert config.target == ""
    assert config.stage_timeout == timedelta(seconds=30)
    assert config.job_name == "standalone"
    assert config.standalone_inputs == (clara.PayloadEntry("", "/data/in"),)
    assert config.standalone_outputs == (clara.PayloadEntry("", "/output"),)
    assert config.stage_name == "stage"


def test_timeouts_and_retry_are_validated() -> None:
    with pytest.raises(clara.ConfigurationError, match=r"DriverTimeouts\.grace"):
        clara.DriverTimeouts(grace=timedelta(0))
    with pytest.raises(clara.ConfigurationError, match=r"RetryConfig\.maximum"):
        clara.RetryConfig(initial=2.0, maximum=1.0)


def test_retry_delays_are_capped_and_jittered() -> None:

    policy = clara.RetryConfig(initial=0.1, multiplier=2.0, maximum=1.0)
    rng = random.Random(7)
    delays = [policy.delay(n, rng) for n in range(1, 20)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert policy.delay(1, rng) <= 0.1
    assert len(set(delays)) > 10  # jittered, not a fixed schedule
