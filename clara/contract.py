"""The numbers and names the driver and the platform agree on, each defined once.

The driver checks its settings against these, and the mock (``server_mock``) enforces the same
values on its side, importing them from here rather than writing them again. Where a value
comes from the Clara Deploy SDK documentation, its docstring says so; the others are this
project's stage API contract (``protos/nvidia/clara/platform/stage/v1/stage_service.proto``).

Importing this module is cheap (no protobuf).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

__all__ = [
    "DEFAULT_STAGE_TIMEOUT",
    "ENV_INPUT",
    "ENV_JOB_ID",
    "ENV_JOB_NAME",
    "ENV_LOGS",
    "ENV_NOSYNCLOCK",
    "ENV_OUTPUT",
    "ENV_STAGE_NAME",
    "ENV_STAGE_SERVICE",
    "ENV_STAGE_TOKEN",
    "ENV_TIMEOUT",
    "ENV_TLS_CA",
    "ENV_TLS_CERT",
    "ENV_TLS_KEY",
    "ENV_TLS_SERVER_NAME",
    "MAX_EVENTS_PER_BATCH",
    "MAX_STAGE_TIMEOUT",
    "NAME_PATTERN",
    "NAME_RULE",
    "TIMEOUT_GRACE",
]

# -- names -----------------------------------------------------------------------------------

NAME_PATTERN: Final = re.compile(r"\A[A-Za-z0-9_-]{1,255}\Z")
"""Pipeline, operator, output and stage names (Clara's naming rule); match with ``fullmatch``
or ``match`` (the pattern is anchored)."""

NAME_RULE: Final = "1-255 characters of [A-Za-z0-9_-]"
""":data:`NAME_PATTERN` in words, for error messages."""

# -- timeouts --------------------------------------------------------------------------------

DEFAULT_STAGE_TIMEOUT: Final = timedelta(seconds=600)
"""A stage's timeout when its definition gives none (the Clara platform's default)."""

MAX_STAGE_TIMEOUT: Final = timedelta(seconds=1800)
"""The longest timeout a stage may have (the Clara platform's maximum)."""

TIMEOUT_GRACE: Final = timedelta(seconds=15)
"""How long a timed-out operator is given after termination starts (the Clara platform's)."""

# -- the stage API ---------------------------------------------------------------------------

MAX_EVENTS_PER_BATCH: Final = 256
"""Most progress events one ``ReportStageEvents`` or ``CompleteStage`` call may carry."""

# -- environment variables the platform sets for an operator ---------------------------------

ENV_STAGE_SERVICE: Final = "NVIDIA_CLARA_STAGE_SERVICE"
ENV_JOB_ID: Final = "NVIDIA_CLARA_JOBID"
ENV_STAGE_NAME: Final = "NVIDIA_CLARA_STAGENAME"
ENV_NOSYNCLOCK: Final = "NVIDIA_CLARA_NOSYNCLOCK"
ENV_JOB_NAME: Final = "NVIDIA_CLARA_JOBNAME"
ENV_TIMEOUT: Final = "NVIDIA_CLARA_TIMEOUT"
ENV_INPUT: Final = "NVIDIA_CLARA_INPUT"
ENV_OUTPUT: Final = "NVIDIA_CLARA_OUTPUT"
ENV_LOGS: Final = "NVIDIA_CLARA_LOGS"
ENV_STAGE_TOKEN: Final = "NVIDIA_CLARA_STAGE_TOKEN"
ENV_TLS_CA: Final = "NVIDIA_CLARA_TLS_CA"
ENV_TLS_CERT: Final = "NVIDIA_CLARA_TLS_CERT"
ENV_TLS_KEY: Final = "NVIDIA_CLARA_TLS_KEY"
ENV_TLS_SERVER_NAME: Final = "NVIDIA_CLARA_TLS_SERVER_NAME"
