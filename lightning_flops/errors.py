"""Exceptions raised by lightning-flops (no torch import)."""

from __future__ import annotations

__all__ = ["CounterError", "FlopsConfigError", "FlopsGapError", "ReportFormatError"]


class FlopsConfigError(ValueError):
    """A bad argument: the message names the argument and the allowed values."""


class CounterError(RuntimeError):
    """A counter failed while ``strict=True``."""


class FlopsGapError(RuntimeError):
    """Two counters disagree by more than the limit while ``on_gap="raise"``."""


class ReportFormatError(ValueError):
    """A report file is malformed or written by a newer, unknown schema."""
