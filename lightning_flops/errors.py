"""The exceptions raised by lightning-flops, and the policy for errors in its own code (no torch import).

Every exception derives from :class:`FlopsError`. A failure of a counting library or of the user's forward is a
failed counter result (or :class:`CounterError` under ``strict``); an error in lightning-flops' own code is made loud
by :func:`internal_error`.
"""

from __future__ import annotations

import traceback
import warnings

__all__ = [
    "CounterError",
    "FlopsConfigError",
    "FlopsError",
    "FlopsGapError",
    "ReportFormatError",
    "RuleValueError",
    "ShardedModelError",
    "error_text",
    "internal_error",
]


class FlopsError(Exception):
    """Base of every exception lightning-flops raises itself."""


class FlopsConfigError(FlopsError, ValueError):
    """A bad argument: the message names the argument and the allowed values."""


class CounterError(FlopsError, RuntimeError):
    """A counter failed while ``strict=True``."""


class FlopsGapError(FlopsError, RuntimeError):
    """Two counters disagree by more than the limit while ``on_gap="raise"``."""


class ReportFormatError(FlopsError, ValueError):
    """A report file is malformed or written by a newer, unknown schema."""


class RuleValueError(FlopsError, ValueError):
    """A ``custom_ops`` rule returned something that is not a finite number of MACs >= 0."""


class ShardedModelError(FlopsError, RuntimeError):
    """A sharded (DTensor) parameter cannot be counted in place: only a meta copy has its global shape."""


def error_text(err: BaseException) -> str:
    """``"<Type>: <first line of the message>"``, at most 400 characters of message."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(message) > 400:
        message = message[:400] + "..."
    return f"{type(err).__name__}: {message}"


def internal_error(err: BaseException, context: str, strict: bool) -> str:
    """Make an error in lightning-flops' own code loud: re-raise it under ``strict``, else warn with its traceback.

    Args:
        err: the exception, raised by our code (not by a counting library or the user's model).
        context: what we were doing, for the message (``"reading the result of counter 'torch'"``).
        strict: raise instead of warning.

    Returns:
        The text a report keeps for it: ``"lightning-flops bug while <context>: <Type>: <message>"``.
    """
    text = f"lightning-flops bug while {context}: {error_text(err)}"
    if strict:
        if hasattr(err, "add_note"):  # Python >= 3.11
            err.add_note(f"{text}. This is a bug in lightning-flops, not in your model; please report it.")
        raise err
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    warnings.warn(
        f"{text}. This is a bug in lightning-flops, not in your model; please report it with this traceback:\n{trace}",
        RuntimeWarning,
        stacklevel=2,
    )
    return text
