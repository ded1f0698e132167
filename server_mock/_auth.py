"""Per-stage credentials: the secret token each stage's driver presents on the stage API.

The platform issues one random token per (job, stage) — when the launcher starts the stage's
operator (``NVIDIA_CLARA_STAGE_TOKEN`` in the process's environment), or when a test asks
:meth:`MockPlatform.stage_token <server_mock.MockPlatform.stage_token>`. The driver sends it
as call metadata ``authorization: Bearer <token>``. When the platform requires tokens, every
stage API call must carry the token of the very stage it names:

* no token, a malformed one, or one the platform never issued: ``UNAUTHENTICATED``;
* a valid token of another stage or another job: ``PERMISSION_DENIED``.

Either way the call changes nothing. Tokens are compared with :func:`hmac.compare_digest`
and looked up by their SHA-256 digest, and never logged.

The store is thread-safe: the launcher issues tokens on the loop thread, tests from theirs.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable

__all__ = [
    "STAGE_TOKEN_METADATA",
    "AuthResult",
    "StageTokens",
    "token_from_metadata",
]

STAGE_TOKEN_METADATA = "authorization"
_BEARER = "bearer "
MAX_TOKEN_CHARS = 1024


class AuthResult(enum.Enum):
    """The verdict on the token of one stage API call."""

    OK = "ok"
    MISSING = "missing"
    """No token (or not a ``Bearer`` one): ``UNAUTHENTICATED``."""
    UNKNOWN = "unknown"
    """A token the platform never issued: ``UNAUTHENTICATED``."""
    WRONG_STAGE = "wrong_stage"
    """A valid token of another stage or job: ``PERMISSION_DENIED``."""


def token_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The bearer token of a call's invocation metadata, or ``None``.

    More than one ``authorization`` entry is treated as no token (ambiguous).
    """
    values = [v for k, v in (metadata or ()) if k.lower() == STAGE_TOKEN_METADATA]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    value = values[0]
    if len(value) > MAX_TOKEN_CHARS + len(_BEARER) or not value.lower().startswith(_BEARER):
        return None
    token = value[len(_BEARER) :].strip()
    return token or None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class StageTokens:
    """The tokens issued to stages, by (job id, stage name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_stage: dict[tuple[uuid.UUID, str], str] = {}
        self._by_digest: dict[bytes, tuple[uuid.UUID, str]] = {}
        # Persistence hook (``server_mock._persistence``): called with each new token, so
        # that operators launched before a restart of ``serve --state`` are still accepted.
        self.on_issue: Callable[[uuid.UUID, str, str], None] | None = None

    def issue(self, job_id: uuid.UUID, stage: str) -> str:
        """Return the stage's token, creating it on first use (the same token afterwards)."""
        key = (job_id, stage)
        with self._lock:
            token = self._by_stage.get(key)
            if token is not None:
                return token
            token = secrets.token_urlsafe(32)
            self._by_stage[key] = token
            self._by_digest[_digest(token)] = key
        if self.on_issue is not None:
            self.on_issue(job_id, stage, token)
        return token

    def restore(self, job_id: uuid.UUID, stage: str, token: str) -> None:
        """Accept again a token issued before a restart (persistence; no hook is called)."""
        with self._lock:
            self._by_stage[(job_id, stage)] = token
            self._by_digest[_digest(token)] = (job_id, stage)

    def issued(self, job_id: uuid.UUID, stage: str) -> bool:
        """True when the stage has a token."""
        with self._lock:
            return (job_id, stage) in self._by_stage

    def revoke_job(self, job_id: uuid.UUID) -> None:
        """Forget every token of the job (its stages can no longer call the stage API)."""
        with self._lock:
            for key in [k for k in self._by_stage if k[0] == job_id]:
                token = self._by_stage.pop(key)
                self._by_digest.pop(_digest(token), None)

    def check(self, presented: str | None, job_id: uuid.UUID, stage: str) -> AuthResult:
        """Judge the token a call presented for ``stage`` of ``job_id``."""
        if not presented or len(presented) > MAX_TOKEN_CHARS:
            return AuthResult.MISSING
        with self._lock:
            expected = self._by_stage.get((job_id, stage))
            owner = self._by_digest.get(_digest(presented))
        if expected is not None and hmac.compare_digest(_digest(presented), _digest(expected)):
            return AuthResult.OK
        return AuthResult.UNKNOWN if owner is None else AuthResult.WRONG_STAGE
