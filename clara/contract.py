"""The numbers and names the driver and the platform agree on, each defined once.

The driver checks its settings against these, and the mock (``server_mock``) enforces the same
values on its side, importing them from here rather than writing them again. Where a value
comes from the Clara Deploy SDK documentation, its docstring says so; the others are this
project's stage API contract (``protos/nvidia/clara/platform/stage/v1/stage_service.proto``).

Importing this module is cheap (no protobuf).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Final

__all__ = [
    "DEFAULT_STAGE_TIMEOUT",
    "DRIVER_KEEPALIVE_INTERVAL",
    "ENV_INPUT",
    "ENV_INPUT_PATHS",
    "ENV_JOB_ID",
    "ENV_JOB_NAME",
    "ENV_LOGS",
    "ENV_NOSYNCLOCK",
    "ENV_OUTBOX",
    "ENV_OUTPUT",
    "ENV_OUTPUT_PATHS",
    "ENV_PUBLISHING",
    "ENV_STAGE_NAME",
    "ENV_STAGE_SERVICE",
    "ENV_STAGE_TOKEN",
    "ENV_TIMEOUT",
    "ENV_TLS_CA",
    "ENV_TLS_CERT",
    "ENV_TLS_KEY",
    "ENV_TLS_SERVER_NAME",
    "ENV_TRITON_GRPC_URI",
    "ENV_TRITON_HTTP_URI",
    "ENV_TRTIS_URI",
    "MAX_EVENTS_PER_BATCH",
    "MAX_STAGE_TIMEOUT",
    "NAME_PATTERN",
    "NAME_RULE",
    "OUTBOX_RECORD_NAME",
    "OUTBOX_SCHEMA_VERSION",
    "PAYLOAD_ENTRY_SEPARATOR",
    "PAYLOAD_PATHS_SEPARATOR",
    "TIMEOUT_GRACE",
    "format_payload_paths",
    "parse_payload_paths",
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

DRIVER_KEEPALIVE_INTERVAL: Final = timedelta(seconds=5)
"""How often a driver pings the platform on each open connection (HTTP/2 keepalive), so that a
silently dead connection is noticed within seconds. A platform must accept pings this often,
with or without calls in flight (gRPC's ``grpc.http2.min_ping_interval_without_data_ms`` at
most this, ``grpc.keepalive_permit_without_calls`` 1); otherwise it answers them with
GOAWAY ``too_many_pings``."""

# -- the outbox: an outcome the driver could not report over gRPC ----------------------------

OUTBOX_RECORD_NAME: Final = "outcome.json"
"""The file, in the folder ``NVIDIA_CLARA_OUTBOX`` names, that holds the stage's outcome record
(see docs/contract.md, "The outbox")."""

OUTBOX_SCHEMA_VERSION: Final = 1
"""The ``schema`` of the outcome records this driver writes; a platform refuses other values."""

# -- environment variables the platform sets for an operator ---------------------------------
# Where each comes from (a Clara Deploy SDK page, NVIDIA's own operators, or this project) is
# listed in docs/environment.md.

ENV_STAGE_SERVICE: Final = "NVIDIA_CLARA_STAGE_SERVICE"
"""The stage service's ``host:port`` (this project's stage API)."""
ENV_JOB_ID: Final = "NVIDIA_CLARA_JOBID"
"""The job's id."""
ENV_STAGE_NAME: Final = "NVIDIA_CLARA_STAGENAME"
"""The stage's (operator's) name."""
ENV_NOSYNCLOCK: Final = "NVIDIA_CLARA_NOSYNCLOCK"
"""``1``/``TRUE``: run the operator on its own, without the platform's synchronisation."""
ENV_JOB_NAME: Final = "NVIDIA_CLARA_JOBNAME"
"""The job's name."""
ENV_TIMEOUT: Final = "NVIDIA_CLARA_TIMEOUT"
"""The stage timeout, in seconds."""
ENV_INPUT: Final = "NVIDIA_CLARA_INPUT"
"""The stage's (first) input folder."""
ENV_OUTPUT: Final = "NVIDIA_CLARA_OUTPUT"
"""The stage's (first) output folder."""
ENV_INPUT_PATHS: Final = "NVIDIA_CLARA_INPUTPATHS"
"""Every input entry as ``name:path``, joined by :data:`PAYLOAD_PATHS_SEPARATOR`."""
ENV_OUTPUT_PATHS: Final = "NVIDIA_CLARA_OUTPUTPATHS"
"""Every output entry as ``name:path``, joined by :data:`PAYLOAD_PATHS_SEPARATOR`."""
ENV_LOGS: Final = "NVIDIA_CLARA_LOGS"
"""The job's log folder."""
ENV_PUBLISHING: Final = "NVIDIA_CLARA_PUBLISHING"
"""The folder an operator publishes to (for the Clara Render Server)."""
ENV_TRITON_HTTP_URI: Final = "NVIDIA_TRITON_HTTPURI"
"""The HTTP URI of the Triton Inference Server holding the operator's ``models``."""
ENV_TRITON_GRPC_URI: Final = "NVIDIA_TRITON_GRPCURI"
"""The gRPC URI of the Triton Inference Server holding the operator's ``models``."""
ENV_TRTIS_URI: Final = "NVIDIA_CLARA_TRTISURI"
"""The older name of the inference server's HTTP URI (a service connection's name)."""
ENV_STAGE_TOKEN: Final = "NVIDIA_CLARA_STAGE_TOKEN"
"""The stage's secret token for the stage API."""
ENV_TLS_CA: Final = "NVIDIA_CLARA_TLS_CA"
"""PEM file of the root certificates the driver trusts."""
ENV_TLS_CERT: Final = "NVIDIA_CLARA_TLS_CERT"
"""PEM file of the driver's certificate chain (mutual TLS)."""
ENV_TLS_KEY: Final = "NVIDIA_CLARA_TLS_KEY"
"""PEM file of the driver's private key (mutual TLS)."""
ENV_TLS_SERVER_NAME: Final = "NVIDIA_CLARA_TLS_SERVER_NAME"
"""The name the platform's certificate must carry."""
ENV_OUTBOX: Final = "NVIDIA_CLARA_OUTBOX"
"""The stage's outbox folder: the driver writes its outcome there unless acknowledged at once."""

# -- NVIDIA_CLARA_INPUTPATHS / NVIDIA_CLARA_OUTPUTPATHS ---------------------------------------

PAYLOAD_ENTRY_SEPARATOR: Final = ":"
"""Between an entry's name and its path: ``name:path``, ``:path`` for the unnamed entry, so
that for a single entry ``value.split(":")[1]`` is its path (as NVIDIA's operators parse it)."""

PAYLOAD_PATHS_SEPARATOR: Final = ";"
"""Between the entries of a stage with several. The Clara docs do not say (NVIDIA's operators
only ever read one entry); ``;`` because ``:`` already separates a name from its path, entry
names cannot contain ``;`` (:data:`NAME_PATTERN`), and folder names rarely do (one that does
cannot be listed: :func:`format_payload_paths` refuses it)."""


def format_payload_paths(entries: Iterable[tuple[str, str]]) -> str:
    """Format ``(name, path)`` pairs as ``NVIDIA_CLARA_INPUTPATHS`` carries them.

    Raises:
        ValueError: A path contains :data:`PAYLOAD_PATHS_SEPARATOR`, or a name is not a valid
            entry name; the message names it.
    """
    parts = []
    for name, path in entries:
        if name and not NAME_PATTERN.match(name):
            raise ValueError(f"payload entry name {name!r}: expected {NAME_RULE}")
        if PAYLOAD_PATHS_SEPARATOR in path:
            raise ValueError(
                f"payload entry path {path!r} contains {PAYLOAD_PATHS_SEPARATOR!r}, which "
                "separates entries"
            )
        parts.append(f"{name}{PAYLOAD_ENTRY_SEPARATOR}{path}")
    return PAYLOAD_PATHS_SEPARATOR.join(parts)


def parse_payload_paths(value: str) -> list[tuple[str, str]]:
    """Parse ``NVIDIA_CLARA_INPUTPATHS`` (or ``...OUTPUTPATHS``) into ``(name, path)`` pairs.

    An entry's path is everything after its first ``:``; empty entries (a trailing ``;``) are
    skipped.

    Raises:
        ValueError: An entry has no ``name:`` part, an empty path, a malformed name, or a name
            used twice (at most one entry is unnamed); the message names the entry.
    """
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for part in value.split(PAYLOAD_PATHS_SEPARATOR):
        if not part.strip():
            continue
        name, separator, path = part.partition(PAYLOAD_ENTRY_SEPARATOR)
        if not separator or not path:
            raise ValueError(f"entry {part!r}: expected name:path (or :path when unnamed)")
        if name and not NAME_PATTERN.match(name):
            raise ValueError(f"entry {part!r}: the name must be {NAME_RULE}")
        if name.lower() in seen:
            shown = repr(name) if name else "the unnamed entry"
            raise ValueError(f"entry {part!r}: {shown} is given twice")
        seen.add(name.lower())
        entries.append((name, path))
    return entries
