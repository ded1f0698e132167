"""The Platform API's own limits, each defined once (tests import them from here).

The stage API's numbers (the name rule, timeouts, the event batch limit) live in
:mod:`clara.contract`; the numbers here bound what one request to the legacy Clara Platform API
may carry or what one streamed answer holds.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFINITION_PIECE_CHARS",
    "LOG_BYTES_PER_MESSAGE",
    "LOG_LINES_PER_MESSAGE",
    "MAX_DAG_DEPTH",
    "MAX_DEFINITION_MESSAGES",
    "MAX_LOG_LINE_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_KEY_BYTES",
    "MAX_METADATA_VALUE_BYTES",
    "MAX_PATH_CHARS",
    "MAX_REASON_CHARS",
    "MAX_VARIABLES",
    "MAX_VARIABLE_VALUE_BYTES",
]

# -- metadata (pipelines, jobs, payloads, models) --------------------------------------------
# From the Clara Deploy SDK's AddMetadata pages (Pipelines, Jobs, Payloads; 0.7.4 and 0.8.1):
# "The maximum allowed size of a metadata key is 128 bytes, while the maximum allowed size of
# a metadata value is 256 bytes. The maximum allowed size for the overall metadata of an
# individual [object] is 4 Megabytes." Sizes are UTF-8 bytes; "4 Megabytes" is read as 4 MiB.

MAX_METADATA_KEY_BYTES: Final = 128
"""Largest metadata key, in UTF-8 bytes."""

MAX_METADATA_VALUE_BYTES: Final = 256
"""Largest metadata value, in UTF-8 bytes."""

MAX_METADATA_BYTES: Final = 4 * 1024 * 1024
"""Largest metadata of one object: its keys and values together, in UTF-8 bytes."""

# -- request fields --------------------------------------------------------------------------

MAX_REASON_CHARS: Final = 4096
"""Longest ``Jobs.Cancel`` reason."""

MAX_VARIABLES: Final = 256
"""Most named values one ``Jobs.Start`` may carry."""

MAX_VARIABLE_VALUE_BYTES: Final = 64 * 1024
"""Largest value of one ``Jobs.Start`` named value (UTF-8)."""

MAX_PATH_CHARS: Final = 4096
"""Longest definition file name in ``Pipelines.Create``/``Update``."""

MAX_DEFINITION_MESSAGES: Final = 10_000
"""Most messages one streamed ``Pipelines.Create``/``Update`` may have."""

DEFAULT_MAX_UPLOAD_BYTES: Final = 16 * 1024**3
"""The largest file ``Payloads.Upload`` accepts by default (``MockPlatform(max_upload_bytes=)``)."""

# -- streamed answers ------------------------------------------------------------------------

DEFINITION_PIECE_CHARS: Final = 256 * 1024
"""Definition text per ``Pipelines.Details`` message (at most 1 MiB of UTF-8)."""

MAX_DAG_DEPTH: Final = 32
"""Nesting of ``PipelineDagNode`` kept well below protobuf's default recursion limit (100)."""

LOG_LINES_PER_MESSAGE: Final = 1000
LOG_BYTES_PER_MESSAGE: Final = 1024 * 1024
"""A ``Jobs.ReadLogs`` message holds at most this many lines, or about this many bytes."""

MAX_LOG_LINE_BYTES: Final = 64 * 1024
"""Longer log lines are split into pieces of this size."""
