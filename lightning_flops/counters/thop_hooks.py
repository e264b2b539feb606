"""thop, as users run it: per-module forward hooks with thop's own rules, converted to explicit MACs.

Works with the MIT ``thop`` package and with the AGPL fork ``ultralytics-thop`` (same import name) when a user has
it installed; :func:`thop_variant` tells which one is present from package metadata. thop's ``profile`` calls
``eval()``/``train()`` on the model it is given and registers ``total_ops``/``total_params`` buffers on every module:
we hand it a :class:`PositionalCall` wrapper whose ``train()`` does nothing, and remove every buffer it leaves.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from torch import nn

from lightning_flops._compat import module_buffers, packed_params, thop_rules, thop_without_parameter_count
from lightning_flops.counters.base import RawCount, inclusive_counts
from lightning_flops.counters.tracing import (
    FunctionLabeler,
    ModuleStack,
    PositionalCall,
    operator_of_module,
    quiet,
    user_module_name,
)
from lightning_flops.types import Uncounted
from lightning_flops.vocabulary import type_label

__all__ = ["ThopCounter", "make_counter", "thop_variant"]

_THOP_BUFFERS = ("total_ops", "total_params")


def thop_variant() -> tuple[str, str] | None:
    """``("mit" | "ultralytics", version)`` of the installed thop, or ``None`` when neither is installed."""
    for distribution, variant in (("ultralytics-thop", "ultralytics"), ("thop", "mit")):
        try:
            return variant, metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def _remove_thop_buffers(model: nn.Module) -> None:
    for module in model.modules():
        buffers = module_buffers(module)
        if not isinstance(buffers, dict):
            continue  # a ScriptModule (torch 2.13): thop could not add buffers to it, and it has no pop()
        for key in _THOP_BUFFERS:
            buffers.pop(key, None)


class ThopCounter:
    """Counts with ``thop.profile`` (MACs, module rules only; the MIT version misses functional ops)."""

    name = "thop"

    def can_count_on_meta(self, model: nn.Module) -> bool:
        return True

    def count(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RawCount:
        try:
            with quiet():
                import thop

                register_hooks, zero_ops = thop_rules()
        except ImportError as err:
            raise ImportError(f"thop is not installed ({err}); install it with `pip install thop`") from err
        variant = (thop_variant() or ("mit", "?"))[0]
        wrapper = PositionalCall(model, args, kwargs)
        stack = ModuleStack(wrapper, wrapped=True)
        watch = _BlindSpotWatch(stack, register_hooks, zero_ops)
        try:
            with quiet(), thop_without_parameter_count(), stack, watch:
                total, _params, layers = thop.profile(
                    wrapper, inputs=wrapper.tensors, verbose=False, ret_layer_info=True, report_missing=False
                )
        finally:
            _remove_thop_buffers(wrapper)

        own: dict[str, dict[str, int]] = {}
        modules = dict(wrapper.named_modules())

        def walk(tree: dict[str, Any], prefix: str) -> None:
            # each node is (inclusive ops, params, children); a module's own ops are what its children do not hold
            for child, (ops, _params, sub) in tree.items():
                name = f"{prefix}{child}"
                if sub:
                    walk(sub, name + ".")
                own_ops = round(ops - sum(node[0] for node in sub.values()))
                if own_ops:
                    stripped = user_module_name(name)
                    operator = operator_of_module(modules[name])
                    own.setdefault(stripped, {})[operator] = own.get(stripped, {}).get(operator, 0) + own_ops

        walk(layers, "")
        total = round(total)
        module_sum = sum(v for ops in own.values() for v in ops.values())
        if total > module_sum:  # the fork also counts functional ops, into the total only
            own.setdefault("", {})["other"] = total - module_sum

        uncounted: list[Uncounted] = []
        if variant == "mit":
            uncounted += [
                Uncounted(operator=label, module=module, calls=n, reason=_FUNCTIONAL_REASON)
                for (label, module), n in watch.blind.items()
            ]
        uncounted += _modules_without_rule(wrapper, stack.calls, register_hooks)
        return RawCount(macs=total, module_operators=inclusive_counts(own), uncounted=tuple(uncounted))


class _BlindSpotWatch(FunctionLabeler):
    """Records labelled torch functions (matmul, einsum, linear, sdpa, ...) that no thop rule counts.

    A call is counted only when the innermost running module has a rule of its own (``nn.Linear`` for its
    ``F.linear``); containers such as ``nn.Sequential`` carry thop's ``zero_ops`` rule and count nothing.
    """

    def __init__(self, stack: ModuleStack, rules: dict[type, Any], zero_rule: Any) -> None:
        super().__init__()
        self.stack, self.rules, self.zero_rule = stack, rules, zero_rule
        self.blind: dict[tuple[str, str], int] = {}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        label = self._labels.get(func)
        _, innermost = self.stack.current
        counted_here = innermost is not None and self.rules.get(type(innermost)) not in (None, self.zero_rule)
        if label is not None and self.label is None and not counted_here:
            key = (label, self.stack.current[0])  # the concrete module; displays collapse blocks.0 -> blocks.*
            self.blind[key] = self.blind.get(key, 0) + 1
        return super().__torch_function__(func, types, args, kwargs)


_FUNCTIONAL_REASON = "functional call: thop counts modules only"
_NO_RULE_REASON = "module type without a thop rule"


def _modules_without_rule(wrapper: nn.Module, calls: dict[str, int], rules: dict[type, Any]) -> list[Uncounted]:
    """Called leaf modules with parameters whose type thop has no rule for (thop counts them as 0).

    Args:
        wrapper: the :class:`PositionalCall` thop profiled.
        calls: calls per user module name, from the :class:`ModuleStack`.
        rules: thop's rules by module type.
    """
    found = []
    for name, module in wrapper.named_modules():
        stripped = user_module_name(name)
        if stripped not in calls or type(module) in rules or isinstance(module, nn.Embedding):
            continue
        leaf = next(module.children(), None) is None
        weighted = next(module.parameters(recurse=False), None) is not None
        packed = packed_params(module) is not None  # a quantized Linear: its weights are packed, not parameters
        if (leaf and weighted) or packed:
            found.append(
                Uncounted(
                    operator=type_label(type(module)), module=stripped, calls=calls[stripped], reason=_NO_RULE_REASON
                )
            )
    return found


def make_counter() -> ThopCounter:
    """A fresh thop counter."""
    return ThopCounter()
