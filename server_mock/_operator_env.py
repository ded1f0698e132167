"""The environment the mock gives an operator process: what a Clara cluster sets, and its own.

:func:`operator_environment` is a pure function of the job, the stage, the job's folders and
the launcher's settings; the launcher (:mod:`server_mock._runner`) passes its result to the
process. docs/environment.md lists every variable with the Clara page it comes from.

Set for every operator, in this order (later ones win):

1. the mock's own environment, without any variable the platform decides (so a value left in
   a developer's shell never leaks into an operator);
2. the driver's settings: ``NVIDIA_CLARA_STAGE_SERVICE``, ``NVIDIA_CLARA_JOBID``,
   ``NVIDIA_CLARA_STAGENAME``, and ``NVIDIA_CLARA_JOBNAME`` and ``NVIDIA_CLARA_TIMEOUT`` so that
   ``Driver.job_name`` and ``Driver.stage_timeout`` are known from construction;
3. the folders: ``NVIDIA_CLARA_INPUTPATHS`` / ``NVIDIA_CLARA_OUTPUTPATHS`` (every entry as
   ``name:path``, ``;`` between entries), the first input and output as
   ``NVIDIA_CLARA_INPUT`` / ``NVIDIA_CLARA_OUTPUT``, ``NVIDIA_CLARA_LOGS``,
   ``NVIDIA_CLARA_PUBLISHING`` and (this project's own) ``NVIDIA_CLARA_OUTBOX``; each path is
   the folder the operator really uses (the one its stage context gives);
4. ``CLARA_MOCK_MODEL_PATHS`` (:data:`MODEL_PATHS_VARIABLE`) for an operator that declares
   ``models:``: every model as ``name:folder`` (``;`` between entries), the folder holding
   the model's uploaded files (``/models/<name>`` in the sandbox); the mock's own name, as
   the Clara docs give operators only an inference server's URI;
5. the launcher's extra variables (e.g. the ``NVIDIA_CLARA_TLS_*`` files);
6. the operator's ``variables`` from the pipeline definition;
7. last, ``NVIDIA_CLARA_STAGE_TOKEN``, so that no variable of a pipeline can replace the
   platform-issued credential.

The inference-server URIs (``NVIDIA_TRITON_HTTPURI``, ``NVIDIA_TRITON_GRPCURI``,
``NVIDIA_CLARA_TRTISURI``) are not set: the mock runs no inference server of its own; a
variable a ``services`` connection names is set by the launcher to the address of the
service it started for the job (:mod:`server_mock._services`). One inherited from the mock's
environment, or given in ``variables``, reaches the operator unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from clara import contract
from server_mock._definition import OperatorSpec
from server_mock._jobs import Job, StageSpec
from server_mock._service_data import SERVICE_DATA_VARIABLE

__all__ = [
    "MODEL_PATHS_VARIABLE",
    "PLATFORM_VARIABLES",
    "image_environment",
    "operator_environment",
    "service_connections",
]

MODEL_PATHS_VARIABLE = "CLARA_MOCK_MODEL_PATHS"
"""The mock's own variable giving an operator the folders of its declared ``models``."""

_log = logging.getLogger("server_mock.runner")

PLATFORM_VARIABLES = frozenset(
    {
        contract.ENV_STAGE_SERVICE,
        contract.ENV_JOB_ID,
        contract.ENV_STAGE_NAME,
        contract.ENV_JOB_NAME,
        contract.ENV_TIMEOUT,
        contract.ENV_NOSYNCLOCK,
        contract.ENV_INPUT,
        contract.ENV_OUTPUT,
        contract.ENV_INPUT_PATHS,
        contract.ENV_OUTPUT_PATHS,
        contract.ENV_LOGS,
        contract.ENV_PUBLISHING,
        contract.ENV_OUTBOX,
        contract.ENV_STAGE_TOKEN,
        contract.ENV_TLS_CA,
        contract.ENV_TLS_CERT,
        contract.ENV_TLS_KEY,
        contract.ENV_TLS_SERVER_NAME,
        MODEL_PATHS_VARIABLE,
        SERVICE_DATA_VARIABLE,  # services' own (server_mock._service_data)
    }
)
"""The variables the platform decides for an operator: never inherited from the mock's own
environment."""

# Host variables that describe the mock's Python, not an image's.
_HOST_ONLY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD")
_IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def operator_environment(
    job: Job,
    stage: StageSpec,
    *,
    logs_dir: Path,
    publishing_dir: Path,
    stage_service: str,
    inherited: Mapping[str, str],
    extra: Mapping[str, str] | None = None,
    stage_token: str | None = None,
    outbox_dir: Path | None = None,
) -> dict[str, str]:
    """The environment of the process that runs ``stage`` of ``job``.

    Args:
        job: The job (its id and name).
        stage: The stage the process runs (its name, timeout, entries and variables).
        logs_dir: The job's log folder (``NVIDIA_CLARA_LOGS``).
        publishing_dir: The operator's publishing folder (``NVIDIA_CLARA_PUBLISHING``).
        stage_service: The stage service's ``host:port`` for the driver.
        inherited: The mock's own environment (``os.environ``); platform variables in it are
            dropped.
        extra: Added after the mock's variables and before the operator's ``variables``.
        stage_token: The stage's secret token, if the platform issues tokens.
        outbox_dir: The stage's outbox folder (``NVIDIA_CLARA_OUTBOX``), if the platform
            reads outboxes.

    Returns:
        A new dictionary; nothing else is changed.
    """
    env = {name: value for name, value in inherited.items() if name not in PLATFORM_VARIABLES}
    env.update(
        {
            contract.ENV_STAGE_SERVICE: stage_service,
            contract.ENV_JOB_ID: str(job.job_id),
            contract.ENV_STAGE_NAME: stage.name,
            contract.ENV_TIMEOUT: f"{stage.timeout.total_seconds():g}",
            contract.ENV_LOGS: str(logs_dir),
            contract.ENV_PUBLISHING: str(publishing_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if job.name:
        env[contract.ENV_JOB_NAME] = job.name
    if outbox_dir is not None:
        env[contract.ENV_OUTBOX] = str(outbox_dir)
    _set_entries(env, contract.ENV_INPUT_PATHS, [(i.name, i.path) for i in stage.inputs], stage)
    _set_entries(env, contract.ENV_OUTPUT_PATHS, [(o.name, o.path) for o in stage.outputs], stage)
    if stage.inputs:
        env[contract.ENV_INPUT] = stage.inputs[0].path
    if stage.outputs:
        env[contract.ENV_OUTPUT] = stage.outputs[0].path
    _set_entries(env, MODEL_PATHS_VARIABLE, list(stage.models.items()), stage)
    env.update(extra or {})
    env.update(stage.variables)
    if stage_token is not None:
        env[contract.ENV_STAGE_TOKEN] = stage_token
    return env


def _set_entries(
    env: dict[str, str], variable: str, entries: list[tuple[str, str]], stage: StageSpec
) -> None:
    if not entries:
        return
    try:
        env[variable] = contract.format_payload_paths(entries)
    except ValueError as error:
        # The entries still reach the driver in its stage context; only this variable cannot
        # carry them.
        _log.warning("stage %s: %s not set: %s", stage.name, variable, error)


def service_connections(operator: OperatorSpec) -> dict[str, str]:
    """The variables the operator's ``services`` connections name, as ``localhost:<port>``.

    Each ``connections.http`` entry with a port gives its ``name`` the service's address
    (e.g. ``NVIDIA_CLARA_TRTISURI=localhost:8000``, as NVIDIA's base inference operator reads
    it); the launcher adds these before the operator's own ``variables``, which win, and
    replaces each port by the one it gave the service it started
    (:meth:`server_mock._services.JobServices.addresses_for`). File connections are not set:
    the mock shares no volume with a service.
    """
    return {
        connection.name: f"localhost:{connection.port}"
        for service in operator.services
        for connection in service.http_connections
        if connection.port is not None
    }


def image_environment(env: dict[str, str], *, image_root: bool) -> dict[str, str]:
    """Adjust ``env`` (in place) to a process in a sandbox, in an image root or on the host's.

    The host's ``TMPDIR`` may not exist inside (the sandbox has its own ``/tmp``); in an image
    root the mock's Python variables and ``PATH`` describe the wrong system.
    """
    if "TMPDIR" in env:
        env["TMPDIR"] = "/tmp"
    if image_root:
        for name in _HOST_ONLY_VARIABLES:
            env.pop(name, None)
        env["PATH"] = _IMAGE_PATH
    return env
