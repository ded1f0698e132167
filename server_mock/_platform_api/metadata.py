"""Metadata of pipelines, jobs, payloads and models, checked and edited in one place.

Every AddMetadata/RemoveMetadata (and every Create that carries metadata) goes through
:func:`edit_metadata`. It validates before it returns anything, so a refused edit changes
nothing: the caller stores the returned mapping only when no
:class:`~server_mock._errors.ApiError` was raised.

The rules are the documented ones (the AddMetadata pages of the Pipelines, Jobs and Payloads
services, Clara Deploy SDK 0.7.4 and 0.8.1): keys are compared case-insensitively; a key that
already exists, or two keys of one request that differ only in case, refuse the whole
request; a key is at most 128 bytes and a value at most 256 bytes, and an object's metadata at
most 4 MiB (:mod:`~server_mock._platform_api.limits`). The docs say nothing of empty keys or
control characters; the mock refuses both in keys (they cannot be shown or typed back).
RemoveMetadata compares keys case-insensitively too and ignores absent ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from server_mock._errors import ApiError, ErrorCode
from server_mock._platform_api.convert import show
from server_mock._platform_api.fields import utf8_len
from server_mock._platform_api.limits import (
    MAX_METADATA_BYTES,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
)

__all__ = ["edit_metadata"]


def _fold(key: str) -> str:
    return key.lower()


def _check_key(key: str, owner: str, field: str, code: ErrorCode) -> None:
    if not key:
        raise ApiError(code, f"{owner}, field {field}: metadata keys must not be empty")
    if utf8_len(key) > MAX_METADATA_KEY_BYTES:
        raise ApiError(
            code,
            f"{owner}, field {field}: metadata key {show(key)} is longer than "
            f"{MAX_METADATA_KEY_BYTES} bytes",
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ApiError(
            code, f"{owner}, field {field}: metadata key {show(key)} contains control characters"
        )


def edit_metadata(
    current: Mapping[str, str],
    code: ErrorCode,
    owner: str,
    *,
    add: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
) -> dict[str, str]:
    """Return ``current`` with the pairs ``add`` added and the keys ``remove`` dropped.

    Args:
        current: The object's metadata now.
        code: The code of a refusal (the service's metadata error).
        owner: The object, for error messages (``"pipeline 0123..."``).
        add: Pairs to add; none of their keys may exist yet (case-insensitively).
        remove: Keys to drop (case-insensitively); absent keys are ignored.

    Raises:
        ApiError: ``code``, naming the object, the field and the key or limit at fault.
    """
    existing = {_fold(k): k for k in current}
    added: dict[str, str] = {}
    added_keys: dict[str, str] = {}  # folded -> as given
    for key, value in (add or {}).items():
        _check_key(key, owner, "metadata", code)
        if utf8_len(value) > MAX_METADATA_VALUE_BYTES:
            raise ApiError(
                code,
                f"{owner}, field metadata: the value of key {show(key)} is longer than "
                f"{MAX_METADATA_VALUE_BYTES} bytes",
            )
        folded = _fold(key)
        if folded in existing:
            raise ApiError(
                code,
                f"{owner}, field metadata: key {show(key)} already exists (as "
                f"{show(existing[folded])}; keys are compared case-insensitively): remove it "
                "first to change its value",
            )
        twin = added_keys.setdefault(folded, key)
        if twin != key:
            raise ApiError(
                code,
                f"{owner}, field metadata: keys {show(twin)} and {show(key)} are the same key "
                "(keys are compared case-insensitively)",
            )
        added[key] = value
    dropped: set[str] = set()
    for key in remove:
        _check_key(key, owner, "keys", code)
        dropped.add(_fold(key))
    edited = {k: v for k, v in current.items() if _fold(k) not in dropped}
    edited.update(added)
    size = sum(utf8_len(k) + utf8_len(v) for k, v in edited.items())
    if size > MAX_METADATA_BYTES:
        raise ApiError(
            code,
            f"{owner}, field metadata: the metadata would be {size} bytes, more than the "
            f"limit of {MAX_METADATA_BYTES} bytes",
        )
    return edited
