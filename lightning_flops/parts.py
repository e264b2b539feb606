"""Named parts of a model (``parts={"visual": ["backbone", "neck"], "decoder": "decode_head"}``): check, count."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from lightning_flops.errors import FlopsConfigError, did_you_mean
from lightning_flops.report import CounterResult, ParamCount, PartCount
from lightning_flops.types import is_within

__all__ = ["count_parts", "resolve_parts", "validate_parts"]

Parts = Mapping[str, str | Sequence[str]]


def validate_parts(parts: Parts | None) -> dict[str, tuple[str, ...]]:
    """Check the form of ``parts`` (no model needed): ``{label: names}``; raise :class:`FlopsConfigError`."""
    if parts is None:
        return {}
    if not isinstance(parts, Mapping):
        raise FlopsConfigError(
            f"`parts` must be a dict {{label: module name or list of names}}, got {type(parts).__name__}"
        )
    out: dict[str, tuple[str, ...]] = {}
    for label, names in parts.items():
        if not isinstance(label, str) or not label or "/" in label:
            raise FlopsConfigError(f"`parts` labels must be non-empty str without '/', got {label!r}")
        listed = (names,) if isinstance(names, str) else names
        if not isinstance(listed, Sequence) or not listed or not all(isinstance(n, str) for n in listed):
            raise FlopsConfigError(
                f"`parts[{label!r}]` must be a module name or a non-empty list of names, got {names!r}"
            )
        out[label] = tuple(listed)
    return out


def resolve_parts(model: nn.Module, parts: Parts | None) -> dict[str, tuple[str, ...]]:
    """Check ``parts`` against ``model`` and return ``{label: module names}``, nested names dropped.

    Args:
        model: the model whose ``named_modules()`` names the parts use.
        parts: ``{label: module name or list of names}``; ``None`` for none.

    Raises:
        FlopsConfigError: ``parts`` is not such a dict, or a name is not a module of ``model`` (the message lists
            the model's top-level children).
    """
    modules = dict(model.named_modules())
    resolved: dict[str, tuple[str, ...]] = {}
    for label, listed in validate_parts(parts).items():
        missing = [n for n in listed if n not in modules]
        if missing:
            children = [name for name, _ in model.named_children()]
            raise FlopsConfigError(
                f"`parts[{label!r}]` names {missing[0]!r}, which is not a module of {type(model).__name__}"
                f"{did_you_mean(missing[0], modules) or ''}; its top-level children are {children} "
                "(qualified names such as 'backbone.layer1' work too)"
            )
        unique = tuple(dict.fromkeys(listed))
        resolved[label] = tuple(n for n in unique if not any(is_within(n, other) for other in unique if other != n))
    return resolved


def count_parts(
    model: nn.Module, parts: Mapping[str, tuple[str, ...]], counters: Sequence[CounterResult], batch_size: int = 1
) -> dict[str, PartCount]:
    """MACs (whole call, per counter) and parameters of each part.

    Args:
        model: the profiled model.
        parts: the output of :func:`resolve_parts`.
        counters: the counter results of the profile.
        batch_size: samples in the profiled call (for the parts' per-sample accessors).
    """
    modules = dict(model.named_modules())
    out: dict[str, PartCount] = {}
    for label, names in parts.items():
        macs: dict[str, Any] = {}
        for result in counters:
            by_module = result.by_module if result.ok else None
            macs[result.name] = None if by_module is None else sum(by_module.get(n, 0) for n in names)
        params = {
            id(p): p
            for n in names
            for p in modules[n].parameters()
            if not isinstance(p, nn.parameter.UninitializedParameter)  # a lazy module not initialized yet
        }
        out[label] = PartCount(
            modules=names,
            macs=macs,
            params=ParamCount(
                total=sum(p.numel() for p in params.values()),
                trainable=sum(p.numel() for p in params.values() if p.requires_grad),
            ),
            batch_size=batch_size,
        )
    return out
