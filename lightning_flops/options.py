"""The options of :func:`~lightning_flops.profiling.profile_model` and ``FlopsMonitor``: allowed values and checks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

from torch import nn

from lightning_flops.counters.base import COUNTER_NAMES
from lightning_flops.errors import FlopsConfigError, did_you_mean
from lightning_flops.rules import Rule, is_rate
from lightning_flops.schema import FLAG_ON, MODES  # the values a report may hold

__all__ = ["DEVICES", "FLAG_ON", "MODES", "validate_options"]

DEVICES = (None, "meta", "model")


def validate_options(
    counters: Sequence[str],
    limit: float,
    flag_on: str,
    mode: str,
    custom_ops: Mapping[type, Rule] | None,
    device: str | None = None,
    batch_size: int | None = None,
    strict: bool = False,
) -> tuple[str, ...]:
    """Check the options shared by :func:`profile_model` and ``FlopsMonitor``; raise :class:`FlopsConfigError`.

    Returns:
        The counters as a tuple.
    """
    if isinstance(counters, str) or not isinstance(counters, Sequence):
        raise FlopsConfigError(f"`counters` must be a sequence of names from {COUNTER_NAMES}, got {counters!r}")
    counters = tuple(counters)
    if not counters:
        raise FlopsConfigError(f"`counters` must name at least one counter from {COUNTER_NAMES}, got an empty sequence")
    unknown = [c for c in counters if c not in COUNTER_NAMES]
    if unknown:
        raise FlopsConfigError(
            f"`counters` must be names from {COUNTER_NAMES}, got unknown {unknown!r}"
            + did_you_mean(unknown[0], COUNTER_NAMES)
        )
    if len(set(counters)) != len(counters):
        raise FlopsConfigError(f"`counters` must not repeat a name, got {counters!r}")
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or math.isnan(limit) or limit < 0:
        raise FlopsConfigError(f"`limit` must be a number >= 0 (a relative gap, e.g. 0.01 for 1%), got {limit!r}")
    if limit >= 1:  # a gap is at most 1 (100%): `limit=1` never flags, `limit=5` was meant as 5%
        warnings.warn(
            f"`limit={limit!r}` is a fraction, not a percentage: a relative gap is at most 1.0, so nothing is ever "
            f"flagged; for {limit:g}% pass limit={limit / 100:g}",
            UserWarning,
            stacklevel=3,
        )
    if flag_on not in FLAG_ON:
        raise FlopsConfigError(f"`flag_on` must be one of {FLAG_ON}, got {flag_on!r}" + did_you_mean(flag_on, FLAG_ON))
    if mode not in MODES:
        raise FlopsConfigError(f"`mode` must be one of {MODES}, got {mode!r}" + did_you_mean(mode, MODES))
    if device not in DEVICES:
        raise FlopsConfigError(f"`device` must be one of {DEVICES}, got {device!r}" + did_you_mean(device, DEVICES))
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise FlopsConfigError(f"`batch_size` must be None or an int >= 1, got {batch_size!r}")
    if not isinstance(strict, bool):
        raise FlopsConfigError(f"`strict` must be True or False, got {strict!r}")
    if custom_ops is not None:
        if not isinstance(custom_ops, Mapping):
            raise FlopsConfigError(
                f"`custom_ops` must be a dict {{nn.Module subclass: rule(module, inputs, output) -> MACs}}, "
                f"got {type(custom_ops).__name__}"
            )
        for key, rule in custom_ops.items():
            if not (isinstance(key, type) and issubclass(key, nn.Module)) or not (callable(rule) or is_rate(rule)):
                raise FlopsConfigError(
                    "`custom_ops` keys must be nn.Module subclasses and values callables or numbers >= 0 "
                    f"(MACs per output element), got {key!r}: {rule!r}"
                )
    return counters
