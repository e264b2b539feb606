"""Type checks of a report's JSON fields, so that a hand-edited or foreign file is refused naming the field.

:meth:`FlopsReport.from_dict <lightning_flops.report.FlopsReport.from_dict>` calls :func:`check_report_dict` before it
builds anything: a reader (``lightning-flops compare``, a resumed callback) then never meets ``"model": 123`` or a
count of ``10**400`` deep inside its formatting code. Fields this version does not know are left alone (a newer
minor writer may add some). No torch import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from lightning_flops.errors import ReportFormatError

__all__ = ["FLAG_ON", "MAX_COUNT", "MODES", "check_report_dict", "parse_json"]

#: Values of ``mode`` and ``flag_on`` a report can hold (the options ``profile_model`` accepts).
MODES = ("eval", "train")
FLAG_ON = ("core", "total")
#: Largest count a report may hold: per-sample values and ratios are computed as floats, which end near 1.8e308.
MAX_COUNT = 10**300

Check = Callable[[str, Any], None]


def parse_json(text: str) -> Any:
    """``json.loads(text)`` for a report reader: :class:`ReportFormatError` (one line) for text that is not JSON, for
    an integer beyond int's digit limit, and for arrays or objects nested deeper than the recursion limit."""
    try:
        return json.loads(text)
    except ValueError as err:  # JSONDecodeError, and an integer beyond int's digit limit (4300 by default)
        raise ReportFormatError(f"not valid JSON: {err}") from err
    except RecursionError:  # arrays or objects nested deeper than the interpreter's recursion limit
        raise ReportFormatError("not a report: JSON nested too deeply to read") from None


def check_report_dict(data: Mapping[str, Any]) -> None:
    """Raise :class:`ReportFormatError` naming the first field of ``data`` whose type or value is wrong.

    Args:
        data: the parsed JSON object of a report (``FlopsReport.to_dict`` layout).
    """
    for name, check in _TOP_LEVEL.items():
        if name in data:
            check(name, data[name])
    for name in ("model", "params", "counters", "batch_size"):
        if name not in data:
            raise ReportFormatError(f"malformed report: field `{name}` is missing")


# ------------------------------------------------------------------------------------------------ value checks
def _fail(path: str, value: Any, expected: str) -> None:
    shown = repr(value) if len(repr(value)) <= 60 else f"{type(value).__name__} of {len(repr(value))} characters"
    raise ReportFormatError(f"malformed report: `{path}` must be {expected}, got {shown}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(path: str, value: Any) -> None:
    if not isinstance(value, str):
        _fail(path, value, "a string")


def _text_or_none(path: str, value: Any) -> None:
    if value is not None:
        _text(path, value)


def _flag(path: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(path, value, "true or false")


def _count(path: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        _fail(path, value, "an integer >= 0")
    if value > MAX_COUNT:
        _fail(path, value, f"at most 1e{round(math.log10(MAX_COUNT))} (a count that a float can hold)")


def _count_or_none(path: str, value: Any) -> None:
    if value is not None:
        _count(path, value)


def _positive_or_none(path: str, value: Any) -> None:
    if value is not None:
        _count(path, value)
        if value < 1:
            _fail(path, value, "an integer >= 1 or null")


def _number(path: str, value: Any) -> None:
    """A JSON number; NaN (which Python's json reads from ``NaN``) is allowed and shown as ``n/a``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(path, value, "a number")
    if _is_int(value) and value > MAX_COUNT:
        _fail(path, value, f"a number below 1e{round(math.log10(MAX_COUNT))}")


def _finite(path: str, value: Any) -> None:
    """A JSON number that is neither NaN nor infinite (a count a reader adds up and prints as JSON)."""
    _number(path, value)
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= MAX_COUNT):
        _fail(path, value, f"a finite number of magnitude at most 1e{round(math.log10(MAX_COUNT))}")


def _uncounted_entry(path: str, value: Any) -> None:
    """One ``uncounted`` entry: an object (operator, module, calls, reason) or a plain string (older reports)."""
    if isinstance(value, str):
        return
    _UNCOUNTED(path, value)
    if "operator" not in value:
        raise ReportFormatError(f"malformed report: `{path}.operator` is missing")


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(path: str, value: Any) -> None:
        if not isinstance(value, str) or value not in choices:
            _fail(path, value, f"one of {', '.join(repr(c) for c in choices)}")

    return check


def _object(fields: Mapping[str, Check] | None = None, values: Check | None = None) -> Check:
    """A JSON object: ``fields`` checks named keys (when present), ``values`` checks every value."""

    def check(path: str, value: Any) -> None:
        if not isinstance(value, dict):
            _fail(path, value, "an object")
        for key, item in value.items():
            if fields is not None and key in fields:
                fields[key](f"{path}.{key}", item)
            elif values is not None:
                values(f"{path}.{key}", item)

    return check


def _object_or_none(fields: Mapping[str, Check] | None = None, values: Check | None = None) -> Check:
    inner = _object(fields, values)

    def check(path: str, value: Any) -> None:
        if value is not None:
            inner(path, value)

    return check


def _array(items: Check | None = None) -> Check:
    def check(path: str, value: Any) -> None:
        if not isinstance(value, (list, tuple)):
            _fail(path, value, "an array")
        if items is not None:
            for index, item in enumerate(value):
                items(f"{path}[{index}]", item)

    return check


def _logger_value(path: str, value: Any) -> None:
    if value is not None and not isinstance(value, (str, int)):
        _fail(path, value, "a string")


_UNCOUNTED = _object({"operator": _text, "module": _text, "calls": _count, "reason": _text})
_COUNTER_FIELDS = _object(
    {
        "name": _text,
        "ok": _flag,
        "macs": _count_or_none,
        "raw_macs": _count_or_none,
        "error": _text_or_none,
        "device": _text_or_none,
        "module_operators": _object(values=_object(values=_finite)),
        "uncounted": _array(_uncounted_entry),
        "seconds": _number,
        "sample_scale": _positive_or_none,
    }
)


def _counter(path: str, value: Any) -> None:
    """One counter's entry; a counter that says it counted (``ok``) must hold its count."""
    _COUNTER_FIELDS(path, value)
    if value.get("ok") is True and value.get("macs") is None:
        _fail(f"{path}.macs", None, "an integer >= 0 when `ok` is true")


_GAP = _object(
    {
        "a": _text,
        "b": _text,
        "relative": _number,
        "core_relative": _number,
        "flagged": _flag,
        "module": _text_or_none,
        "operators": _array(_text),
    }
)
_INPUT = _object({"name": _text, "shape": _array(_count), "dtype": _text})


def _seconds(path: str, value: Any) -> None:
    _number(path, value)
    if not value >= 0:
        _fail(path, value, "a number of seconds >= 0")


def _number_or_none(path: str, value: Any) -> None:
    if value is not None:
        _number(path, value)


_OP_TIME = _object(
    {
        "module": _text,
        "operator": _text,
        "seconds": _seconds,
        "calls": _count,
        "macs": _count,
        "uncounted": _flag,
    }
)
_TIMING = _object_or_none(
    {
        "forward_seconds": _seconds,
        "forward_runs": _array(_seconds),
        "operators": _array(_OP_TIME),
        "macs": _count_or_none,
        "unjoined_macs": _count,
        "device": _text,
        "dtype": _text,
        "peak_flops_per_second": _number_or_none,
        "time_source": _text,
        "note": _text_or_none,
    }
)
_PARAMS = _object({"total": _count, "trainable": _count, "active": _count_or_none, "active_per_token": _count_or_none})
_TOP_LEVEL: dict[str, Check] = {
    "model": _text,
    "params": _PARAMS,
    "counters": _object(values=_counter),
    "batch_size": _count,
    "mode": _one_of(MODES),
    "limit": _number,
    "flag_on": _one_of(FLAG_ON),
    "gaps": _array(_GAP),
    "inputs": _array(_INPUT),
    "rules": _array(_text),
    "versions": _object(values=_text_or_none),
    "fingerprint": _text,
    "train_step_flops": _count_or_none,
    "train_step_batch_size": _positive_or_none,
    "train_step_uncounted": _array(_uncounted_entry),
    "train_step_error": _text_or_none,
    "tokens": _count_or_none,
    "logger": _object_or_none(values=_logger_value),
    "flagged": _flag,
    "module_types": _object(values=_text),
    "module_params": _object(values=_count),
    "parts": _object(
        values=_object(
            {
                "modules": _array(_text),
                "macs": _object(values=_count_or_none),
                "params": _PARAMS,
                "batch_size": _count,
            }
        )
    ),
    "timing": _TIMING,
    "moe_routing": _text_or_none,
}
