"""How a stage ended: the value ``Driver.wait_for_completion()`` returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["StageOutcome", "StageResult"]


class StageOutcome(enum.Enum):
    """The outcome the driver reports to the platform."""

    SUCCEEDED = "succeeded"
    """Every callback returned ``True`` (or was absent)."""
    FAILED = "failed"
    """A callback returned ``False`` or raised, or the platform could not be used."""
    CANCELLED = "cancelled"
    """The platform cancelled the stage, or the process was asked to terminate."""
    TIMED_OUT = "timed_out"
    """Execute ran past the stage timeout."""


@dataclass(frozen=True, slots=True)
class StageResult:
    """How the stage ended.

    Attributes:
        outcome: The outcome.
        message: A human-readable explanation; for a failure it names the callback and error.
        error: The exception behind a failure, where there is one.
        reported: True when the platform acknowledged the outcome (always False in
            standalone mode, where there is no platform).
    """

    outcome: StageOutcome
    message: str
    error: BaseException | None = None
    reported: bool = False

    @property
    def succeeded(self) -> bool:
        """True when the outcome is :attr:`StageOutcome.SUCCEEDED`."""
        return self.outcome is StageOutcome.SUCCEEDED
