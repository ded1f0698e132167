"""clara: the pipeline stage driver for operators of a Clara platform.

An operator creates a :class:`Driver` with its callbacks, calls :meth:`Driver.start`, and
waits with :meth:`Driver.wait_for_completion`::

    import clara

    def execute(driver: clara.Driver, payload: clara.Payload) -> bool:
        ...  # read payload.input_entries, write payload.output_entries
        return True

    driver = clara.Driver(execute=execute)
    driver.start()
    result = driver.wait_for_completion()

Operators written for NVIDIA's Clara Pipeline Driver binding run unchanged: they import
``from clara import Driver, Error, Payload``, construct ``Driver(execute_handler=execute)``,
return nothing from ``execute`` on success (and raise on failure), and find their folders in
``NVIDIA_CLARA_INPUTPATHS`` / ``NVIDIA_CLARA_OUTPUTPATHS`` (see docs/compatibility.md).
"""

from clara._channels import CHANNEL_OPTIONS
from clara._config import ENVIRONMENT_VARIABLES, DriverTimeouts
from clara._context import StageContext
from clara._driver import Driver, DriverState
from clara._exceptions import (
    AlreadyCompletedError,
    ClaraError,
    ConfigurationError,
    ContextUnavailableError,
    DeadlineExceededError,
    DriverStateError,
    Error,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PlatformError,
    PlatformUnavailableError,
    UnauthenticatedError,
    WaitTimeoutError,
)
from clara._notifications import Notification, NotificationKind
from clara._payload import Payload, PayloadEntry
from clara._result import StageOutcome, StageResult
from clara._retry import RetryConfig
from clara._tls import TlsConfig

__all__ = [
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

__version__ = "0.1.0"
