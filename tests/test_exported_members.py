"""The public surface is deliberate: a change to __all__ must change this test too."""

from __future__ import annotations

import clara
import server_mock


def test_clara_public_names() -> None:
    assert sorted(clara.__all__) == sorted(
        [
            "CHANNEL_OPTIONS",
            "ENVIRONMENT_VARIABLES",
            "AlreadyCompletedError",
            "ClaraError",
            "ConfigurationError",
            "ContextUnavailableError",
            "DeadlineExceededError",
            "Driver",
            "DriverState",
            "DriverStateError",
            "DriverTimeouts",
            "Error",
            "InvalidArgumentError",
            "NotFoundError",
            "Notification",
            "NotificationKind",
            "Payload",
            "PayloadEntry",
            "PermissionDeniedError",
            "PlatformError",
            "PlatformUnavailableError",
            "RetryConfig",
            "StageContext",
            "StageOutcome",
            "StageResult",
            "TlsConfig",
            "UnauthenticatedError",
            "WaitTimeoutError",
        ]
    )
    for name in clara.__all__:
        assert getattr(clara, name).__doc__ or name == "ENVIRONMENT_VARIABLES", name


def test_server_mock_public_names() -> None:
    assert sorted(server_mock.__all__) == sorted(
        [
            "InputRef",
            "JobSnapshot",
            "JobState",
            "MockPlatform",
            "OutputRef",
            "PipelineJob",
            "StageSnapshot",
            "StageSpec",
            "StageState",
        ]
    )


def test_every_clara_error_is_a_clara_error() -> None:
    errors = [getattr(clara, n) for n in clara.__all__ if n.endswith("Error")]
    assert all(issubclass(e, clara.ClaraError) for e in errors)


def test_the_bindings_error_is_the_root_of_the_hierarchy() -> None:
    # NVIDIA's operators do `from clara import Driver, Error, Payload`.
    from clara import Driver, Error, Payload  # noqa: PLC0415 - the import is what is tested

    assert (Driver, Payload) == (clara.Driver, clara.Payload)
    assert Error is clara.ClaraError
    errors = [getattr(clara, n) for n in clara.__all__ if n.endswith("Error")]
    assert all(issubclass(e, Error) for e in errors)
