"""Retrying transient platform failures: one small, declarative policy."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from clara._exceptions import (
    ConfigurationError,
    DeadlineExceededError,
    PlatformError,
    PlatformUnavailableError,
)

__all__ = ["IDEMPOTENT_RETRYABLE", "RetryConfig", "call_with_retry"]

T = TypeVar("T")

IDEMPOTENT_RETRYABLE: tuple[type[PlatformError], ...] = (
    PlatformUnavailableError,
    DeadlineExceededError,
)
"""What an idempotent call (GetStageContext, CompleteStage with its report id) retries: a
transient failure, or one attempt that ran out of its own RPC timeout (the overall deadline
still bounds the retrying)."""


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Capped exponential backoff with full jitter for transient failures.

    Only :class:`~clara.PlatformUnavailableError` (UNAVAILABLE, RESOURCE_EXHAUSTED) is retried;
    every other error is final. How long retrying goes on is set by the caller's deadline.

    Attributes:
        initial: The cap of the first delay, in seconds.
        multiplier: How much the cap grows after each attempt.
        maximum: The largest cap, in seconds.
    """

    initial: float = 0.1
    multiplier: float = 2.0
    maximum: float = 5.0

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ConfigurationError("RetryConfig.initial", self.initial, "must be > 0")
        if not self.multiplier >= 1:
            raise ConfigurationError("RetryConfig.multiplier", self.multiplier, "must be >= 1")
        if not self.maximum >= self.initial:
            raise ConfigurationError("RetryConfig.maximum", self.maximum, "must be >= initial")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return the delay before retry number ``attempt`` (1-based), with full jitter."""
        cap = min(self.maximum, self.initial * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(0, cap)


def call_with_retry(
    call: Callable[[float], T],
    *,
    policy: RetryConfig,
    deadline: float,
    stop: threading.Event,
    on_retry: Callable[[int, PlatformError, float], None],
    retry_on: tuple[type[PlatformError], ...] = (PlatformUnavailableError,),
) -> T:
    """Run ``call`` until it succeeds, fails permanently, or ``deadline`` passes.

    Args:
        call: Makes one attempt; receives the seconds left before ``deadline``, to use as the
            RPC's own timeout.
        policy: The backoff policy.
        deadline: A ``time.monotonic()`` value after which no attempt starts.
        stop: When set, waiting between attempts ends and the last error is raised.
        on_retry: Called before each wait with the attempt number, its error and the delay.
        retry_on: The errors that are retried (default: transient ones only); pass
            :data:`IDEMPOTENT_RETRYABLE` for calls that are safe to repeat after a timeout.

    Returns:
        What the successful attempt returned.

    Raises:
        PlatformError: The last attempt's error, when it is permanent, or when the deadline
            passed or ``stop`` was set before the next attempt.
    """
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            return call(max(remaining, 0.001))
        except retry_on as error:
            delay = policy.delay(attempt)
            if time.monotonic() + delay >= deadline or stop.is_set():
                raise
            on_retry(attempt, error, delay)
            if stop.wait(delay):
                raise
