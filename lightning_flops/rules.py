"""``custom_ops`` rules: numbers turned into rules, and rules evaluated on every call of a matching module."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from lightning_flops.errors import RuleValueError
from lightning_flops.inputs import iter_tensors

__all__ = ["Rule", "expand_custom_ops", "is_rate", "rule_hooks"]

Rule = Callable[[nn.Module, tuple[Any, ...], Any], float]


def is_rate(value: Any) -> bool:
    """Whether ``value`` is a ``custom_ops`` number: a finite real >= 0 (MACs per output element), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _per_output_element(rate: float) -> Rule:
    """A ``custom_ops`` rule from a number: ``rate`` MACs per element of the module's (first tensor) output."""

    def rule(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> float:
        first = next((t for _, t in iter_tensors(output)), None)
        return rate * (first.numel() if first is not None else 0)

    rule.__name__ = rule.__qualname__ = f"{rate:g} MACs per output element"
    return rule


def expand_custom_ops(custom_ops: Mapping[type, Rule | float] | None) -> dict[type, Rule] | None:
    """``custom_ops`` with each number ``n`` turned into the rule "n MACs per output element" (named so)."""
    if not custom_ops:
        return None
    return {key: _per_output_element(rule) if is_rate(rule) else rule for key, rule in custom_ops.items()}


def _rule_value(value: Any, module: nn.Module, name: str, rule: Rule) -> float:
    """``value`` as a float when it is a finite number >= 0; else :class:`RuleValueError` naming the rule."""
    number = value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.device.type != "meta":
        number = value.item()
    if isinstance(number, numbers.Real) and not isinstance(number, bool) and math.isfinite(number) and number >= 0:
        return float(number)
    rule_name = getattr(rule, "__qualname__", type(rule).__qualname__)
    raise RuleValueError(
        f"custom_ops rule {rule_name} for {type(module).__name__} (module {name or '<root>'!r}) returned {value!r}; "
        "a rule must return a finite number of MACs >= 0"
    )


@contextlib.contextmanager
def rule_hooks(model: nn.Module, custom_ops: Mapping[type, Rule] | None, sink: dict[str, float]) -> Iterator[None]:
    """Evaluate ``custom_ops`` rules on every call of a matching module, summing MACs per module name."""
    handles = []
    if custom_ops:
        for name, module in model.named_modules():
            rule = custom_ops.get(type(module))
            if rule is None:
                continue

            def hook(mod: nn.Module, inputs: Any, output: Any, name: str = name, rule: Rule = rule) -> None:
                sink[name] = sink.get(name, 0) + _rule_value(rule(mod, inputs, output), mod, name, rule)

            handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
