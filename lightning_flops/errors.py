"""The exceptions raised by lightning-flops, and the policy for errors in its own code (no torch import).

Every exception derives from :class:`FlopsError`. A failure of a counting library or of the user's forward is a
failed counter result (or :class:`CounterError` under ``strict``); an error in lightning-flops' own code is made loud
by :func:`internal_error`.
"""

from __future__ import annotations

import difflib
import traceback
import warnings
from collections.abc import Iterable
from typing import Any

__all__ = [
    "CounterError",
    "FlopsConfigError",
    "FlopsError",
    "FlopsGapError",
    "ReportFormatError",
    "RuleValueError",
    "ShardedModelError",
    "all_failed_message",
    "did_you_mean",
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


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """``"; did you mean 'torch'?"`` naming the valid choice closest to ``value`` (difflib), or ``""`` when none is
    close or ``value`` is not a string.

    Args:
        value: what was given.
        choices: the valid values (non-strings are ignored).
    """
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def error_text(err: BaseException, where: bool = False) -> str:
    """``"<Type>: <first line of the message>"``, at most 400 characters of message; with ``where``, then where a
    count on meta raised when it is known (``" (in module 'dec', Tensor.item)"``, set by ``on_meta.locate_failure``)."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(message) > 400:
        message = message[:400] + "..."
    located = getattr(err, "lightning_flops_where", None) if where else None
    return f"{type(err).__name__}: {message}" + (f" (in {located})" if isinstance(located, str) and located else "")


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


_SPREAD_AS_KEYWORDS = ("got an unexpected keyword argument", "got multiple values for argument")
_SPREAD_AS_POSITIONAL = ("positional argument", "positional arguments but")
_WRAP = "profile_model(model, (batch,)) or FlopsMonitor(input_fn=lambda batch: (batch,))"


def all_failed_message(model: str, errors: dict[str, str], input_kind: str) -> str:
    """One line for the warning when every counter failed: the first reason, and how to fix the usual cause.

    Args:
        model: class name of the model.
        errors: ``"<Type>: <message>"`` per counter.
        input_kind: how the input was passed to the model: ``"dict"`` (``model(**x)``), ``"sequence"``
            (``model(*x)``) or ``"tensor"`` (``model(x)``).

    Example::

        all_failed_message("Net", {"torch": "TypeError: forward() got an unexpected keyword argument 'x'"}, "dict")
    """
    first = next(iter(errors.values()), "no counter ran")
    where = f"every counter failed on {model} ({', '.join(errors)}): {first}"
    if input_kind == "dict" and any(part in first for part in _SPREAD_AS_KEYWORDS):
        fix = (
            "the input dict was spread as keyword arguments (model(**batch)); for a forward that takes the dict "
            f"itself, wrap it in a tuple: {_WRAP}"
        )
    elif input_kind == "sequence" and any(part in first for part in _SPREAD_AS_POSITIONAL):
        fix = (
            "the input tuple was spread as positional arguments (model(*batch)); for a forward that takes it as "
            f"one argument, wrap it in a tuple: {_WRAP}"
        )
    else:
        fix = "pass strict=True to raise the first failure with its traceback"
    return f"lightning-flops: {where}. Fix: {fix}. The report holds no MACs."
