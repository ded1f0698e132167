"""Driver settings: constructor arguments first, then the environment the platform sets."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from clara._exceptions import ConfigurationError
from clara._payload import PayloadEntry
from clara._retry import RetryConfig
from clara._tls import (
    TlsConfig,
    TlsMaterial,
    parse_stage_token,
    resolve_tls,
)
from clara.contract import (
    DEFAULT_STAGE_TIMEOUT,
    ENV_INPUT,
    ENV_INPUT_PATHS,
    ENV_JOB_ID,
    ENV_JOB_NAME,
    ENV_NOSYNCLOCK,
    ENV_OUTBOX,
    ENV_OUTPUT,
    ENV_OUTPUT_PATHS,
    ENV_STAGE_NAME,
    ENV_STAGE_SERVICE,
    ENV_STAGE_TOKEN,
    ENV_TIMEOUT,
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TLS_SERVER_NAME,
    MAX_STAGE_TIMEOUT,
    NAME_PATTERN,
    NAME_RULE,
    TIMEOUT_GRACE,
    parse_payload_paths,
)

__all__ = ["ENVIRONMENT_VARIABLES", "DriverTimeouts"]


ENVIRONMENT_VARIABLES: Mapping[str, str] = {
    ENV_STAGE_SERVICE: (
        "Address of the platform's stage service, host:port (required unless standalone)."
    ),
    ENV_JOB_ID: "The job's id, a UUID (required unless standalone).",
    ENV_STAGE_NAME: "The stage's name in the pipeline (required unless standalone).",
    ENV_NOSYNCLOCK: "1/true: run standalone, without the platform (inputs are ready at once).",
    ENV_JOB_NAME: (
        "The job's name: Driver.job_name before the stage context arrives (the context wins "
        "once it does). Standalone default: 'standalone'."
    ),
    ENV_TIMEOUT: (
        "The stage timeout in seconds, in (0, 1800]: Driver.stage_timeout before the stage "
        "context arrives (the context wins once it does). Standalone default: 600."
    ),
    ENV_INPUT_PATHS: (
        "Every input entry as name:path (:path when unnamed), ';' between entries. Read "
        "standalone (the payload's inputs); with the platform, the stage context wins."
    ),
    ENV_OUTPUT_PATHS: (
        "Every output entry as name:path (:path when unnamed), ';' between entries. Read "
        "standalone (the payload's outputs); with the platform, the stage context wins."
    ),
    ENV_INPUT: (
        "The (first) input folder. Read standalone when NVIDIA_CLARA_INPUTPATHS is not set "
        "(default /input)."
    ),
    ENV_OUTPUT: (
        "The (first) output folder. Read standalone when NVIDIA_CLARA_OUTPUTPATHS is not set "
        "(default /output)."
    ),
    ENV_STAGE_TOKEN: "The stage's secret token, sent on every stage API call (set by the mock).",
    ENV_TLS_CA: "PEM file of the root certificates to trust; setting it turns TLS on.",
    ENV_TLS_CERT: "PEM file of the driver's certificate chain, for mutual TLS (with the key).",
    ENV_TLS_KEY: "PEM file of the driver's private key, for mutual TLS (with the certificate).",
    ENV_TLS_SERVER_NAME: "The name the platform's certificate must carry, if not the target host.",
    ENV_OUTBOX: (
        "The stage's outbox folder (set by the mock): the driver writes its outcome there, "
        "durably, unless its report is acknowledged at once, so that the platform can apply "
        "an outcome it never received. Unset (or standalone): nothing is written."
    ),
}
"""Every environment variable the driver reads, with what it means."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class DriverTimeouts:
    """How long the driver waits at each step; every wait of the driver has one of these bounds.

    Attributes:
        connect: How long to keep retrying the platform at start before failing.
        inputs: How long to wait for the inputs to become ready.
        report: How long to keep retrying the outcome report.
        grace: How long cleanup (and a callback past its deadline) may take before the driver
            stops waiting for it.
        rpc: The deadline of one unary call to the platform.
        progress_linger: How long progress events may wait to share one call: a step that
            ends sooner costs no call of its own (its events go with the next batch or with
            the outcome report); a step that takes longer shows on the platform while it runs.
    """

    connect: timedelta = timedelta(seconds=600)
    inputs: timedelta = MAX_STAGE_TIMEOUT
    report: timedelta = timedelta(seconds=60)
    grace: timedelta = TIMEOUT_GRACE
    rpc: timedelta = timedelta(seconds=10)
    progress_linger: timedelta = timedelta(milliseconds=50)

    def __post_init__(self) -> None:
        for name in ("connect", "inputs", "report", "grace", "rpc", "progress_linger"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise ConfigurationError(f"DriverTimeouts.{name}", value, "must be a timedelta > 0")


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """The resolved settings of one driver."""

    target: str
    job_id: uuid.UUID
    stage_name: str
    standalone: bool
    timeouts: DriverTimeouts = field(default_factory=DriverTimeouts)
    retry: RetryConfig = field(default_factory=RetryConfig)
    job_name: str | None = None  # from the environment, before the stage context arrives
    stage_timeout: timedelta | None = None  # likewise
    standalone_inputs: tuple[PayloadEntry, ...] = ()
    standalone_outputs: tuple[PayloadEntry, ...] = ()
    tls: TlsMaterial | None = None
    stage_token: str | None = field(default=None, repr=False)
    outbox: Path | None = None  # the folder the outcome record is written to, if any


def parse_bool(setting: str, value: str) -> bool:
    """Parse a boolean setting such as ``NVIDIA_CLARA_NOSYNCLOCK``."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(setting, value, "expected 1/true/yes/on or 0/false/no/off")


def parse_job_id(setting: str, value: object) -> uuid.UUID:
    """Parse a job id given as a ``uuid.UUID`` or its text form."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            pass
    raise ConfigurationError(setting, value, "expected a UUID, e.g. 7c1f0a6e-...")


def parse_stage_name(setting: str, value: object) -> str:
    """Validate a stage name (:data:`clara.contract.NAME_PATTERN`)."""
    if isinstance(value, str) and NAME_PATTERN.match(value):
        return value
    raise ConfigurationError(setting, value, f"expected {NAME_RULE}")


def parse_target(setting: str, value: object) -> str:
    """Validate a ``host:port`` target (gRPC target URIs such as ``unix:`` pass through)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(setting, value, "expected host:port, e.g. 127.0.0.1:50051")
    text = value.strip()
    if text.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(setting, value, "expected host:port, e.g. 127.0.0.1:50051")
    return text


def parse_timeout_seconds(setting: str, value: str) -> timedelta:
    """Parse a stage timeout in seconds, in (0, :data:`clara.contract.MAX_STAGE_TIMEOUT`]."""
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigurationError(setting, value, "expected a number of seconds") from None
    timeout = timedelta(seconds=seconds)
    if not timedelta(0) < timeout <= MAX_STAGE_TIMEOUT:
        limit = int(MAX_STAGE_TIMEOUT.total_seconds())
        raise ConfigurationError(setting, value, f"expected seconds in (0, {limit}]")
    return timeout


def resolve_config(
    *,
    target: str | None,
    job_id: uuid.UUID | str | None,
    stage_name: str | None,
    standalone: bool | None,
    timeouts: DriverTimeouts | None,
    retry: RetryConfig | None,
    environ: Mapping[str, str] | None,
    tls: TlsConfig | None = None,
    stage_token: str | None = None,
) -> DriverConfig:
    """Resolve the driver's settings: arguments win, then the environment, then defaults.

    Raises:
        ConfigurationError: A setting is missing or malformed; the error names the argument or
            environment variable and its value.
    """
    env = os.environ if environ is None else environ
    if standalone is None:
        standalone = parse_bool(ENV_NOSYNCLOCK, env.get(ENV_NOSYNCLOCK, ""))

    def pick(arg: object, arg_name: str, var: str) -> tuple[str, object]:
        if arg is not None:
            return arg_name, arg
        return var, env.get(var)

    setting, raw_job_id = pick(job_id, "job_id", ENV_JOB_ID)
    if raw_job_id is None and standalone:
        resolved_job_id = uuid.uuid4()
    else:
        resolved_job_id = parse_job_id(setting, raw_job_id)

    setting, raw_stage = pick(stage_name, "stage_name", ENV_STAGE_NAME)
    if raw_stage is None and standalone:
        raw_stage = "stage"
    resolved_stage = parse_stage_name(setting, raw_stage)

    setting, raw_target = pick(target, "target", ENV_STAGE_SERVICE)
    resolved_target = "" if standalone and raw_target is None else parse_target(setting, raw_target)

    if standalone:
        resolved_tls, resolved_token = None, None  # no channel, nothing to authenticate
    else:
        resolved_tls = resolve_tls(tls, env)
        setting, raw_token = pick(stage_token, "stage_token", ENV_STAGE_TOKEN)
        resolved_token = None if raw_token in (None, "") else parse_stage_token(setting, raw_token)

    raw_timeout = env.get(ENV_TIMEOUT) or None
    stage_timeout = None if raw_timeout is None else parse_timeout_seconds(ENV_TIMEOUT, raw_timeout)
    job_name = env.get(ENV_JOB_NAME) or None
    raw_outbox = env.get(ENV_OUTBOX) or None
    # Absolute now: a later chdir of the operator must not move its outbox.
    outbox = None if standalone or raw_outbox is None else Path(raw_outbox).absolute()
    config = DriverConfig(
        target=resolved_target,
        job_id=resolved_job_id,
        stage_name=resolved_stage,
        standalone=standalone,
        timeouts=timeouts or DriverTimeouts(),
        retry=retry or RetryConfig(),
        job_name=job_name,
        stage_timeout=stage_timeout,
        tls=resolved_tls,
        stage_token=resolved_token,
        outbox=outbox,
    )
    if not standalone:
        return config
    return dataclasses.replace(
        config,
        job_name=job_name or "standalone",
        stage_timeout=stage_timeout or DEFAULT_STAGE_TIMEOUT,
        standalone_inputs=_standalone_entries(env, ENV_INPUT_PATHS, ENV_INPUT, "/input"),
        standalone_outputs=_standalone_entries(env, ENV_OUTPUT_PATHS, ENV_OUTPUT, "/output"),
    )


def _standalone_entries(
    env: Mapping[str, str], paths_var: str, folder_var: str, default: str
) -> tuple[PayloadEntry, ...]:
    """A standalone stage's entries: ``NVIDIA_CLARA_*PATHS``, else one unnamed folder."""
    listed = env.get(paths_var)
    if not listed:
        return (PayloadEntry("", str(Path(env.get(folder_var) or default))),)
    try:
        pairs = parse_payload_paths(listed)
    except ValueError as error:
        raise ConfigurationError(paths_var, listed, str(error)) from None
    if not pairs:
        raise ConfigurationError(paths_var, listed, "expected at least one name:path entry")
    return tuple(PayloadEntry(name, path) for name, path in pairs)
