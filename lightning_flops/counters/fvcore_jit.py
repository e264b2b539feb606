"""fvcore, as users run it: ``FlopCountAnalysis`` over a JIT trace. fvcore's "flops" are MACs.

fvcore traces with ``torch.jit.trace``, so it takes a tuple of tensors (a :class:`PositionalCall` wrapper turns
keyword inputs into positional ones) and needs tensors, tuples, lists or dicts as outputs. It cannot trace
convolutions on the meta device by itself (torch 2.13: "cond must be a bool"); :func:`traceable_meta_convolution`
makes the trace take the route of a real tensor, so that convolutional models count on a meta copy too, with the same
numbers as on CPU. Older torch (not checked) counts such models on their own device.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn

from lightning_flops._compat import conv_module_types, torch_checked, traceable_meta_convolution
from lightning_flops.counters.base import RawCount
from lightning_flops.counters.tracing import PositionalCall, on_fresh_stack, quiet, user_module_name
from lightning_flops.types import Uncounted
from lightning_flops.vocabulary import CONVENTION_UNCOUNTED, CORE_OPERATORS, operator_of_fvcore

__all__ = ["FvcoreCounter", "make_counter", "operator_of_fvcore"]

_CORE_REASON = "unsupported by fvcore"
_OTHER_REASON = f"unsupported by fvcore; {CONVENTION_UNCOUNTED}"


def _uncounted(unsupported: dict[str, int]) -> tuple[Uncounted, ...]:
    """Every op fvcore skipped, with its calls; fvcore does not say where it ran (module ``""``)."""
    entries = []
    for op, n in sorted(unsupported.items()):
        name = op.removeprefix("aten::")
        core = operator_of_fvcore(name) in CORE_OPERATORS
        entries.append(Uncounted(operator=name, module="", calls=n, reason=_CORE_REASON if core else _OTHER_REASON))
    return tuple(entries)


class FvcoreCounter:
    """Counts with ``fvcore.nn.FlopCountAnalysis`` (MACs; misses SDPA, LSTM and the MHA fast path)."""

    name = "fvcore"

    def can_count_on_meta(self, model: nn.Module) -> bool:
        convolutions = conv_module_types()
        return torch_checked() or not any(isinstance(m, convolutions) for m in model.modules())

    def count(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RawCount:
        try:
            with quiet():  # fvcore.nn scripts its focal losses on import: torch's deprecation warnings
                from fvcore.nn import FlopCountAnalysis
        except ImportError as err:
            raise ImportError(f"fvcore is not installed ({err}); install it with `pip install fvcore`") from err
        wrapper = PositionalCall(model, args, kwargs)
        on_meta = any(t.is_meta for t in wrapper.tensors) or any(p.is_meta for p in model.parameters())

        def analyse() -> tuple[int, dict[str, dict[str, int]], dict[str, int]]:
            analysis = FlopCountAnalysis(wrapper, wrapper.tensors)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("no_tracer_warning")  # "none" would ignore every warning, the user's too
            return analysis.total(), analysis.by_module_and_operator(), analysis.unsupported_ops()

        with quiet(), traceable_meta_convolution() if on_meta else contextlib.nullcontext():
            # traced from an empty stack: the tracer's cost per operator grows with the depth of the caller's stack
            total, per_module, unsupported = on_fresh_stack(analyse)
        module_operators: dict[str, dict[str, int]] = {}
        for name, ops in per_module.items():
            if name == "":
                continue  # the wrapper; "model" is the user's root
            bucket: dict[str, int] = {}
            for op, value in ops.items():
                if value:
                    operator = operator_of_fvcore(op)
                    bucket[operator] = bucket.get(operator, 0) + int(value)
            if bucket or name == "model":
                module_operators[user_module_name(name)] = bucket
        module_operators.setdefault("", {})
        return RawCount(macs=int(total), module_operators=module_operators, uncounted=_uncounted(unsupported))


def make_counter() -> FvcoreCounter:
    """A fresh fvcore counter."""
    return FvcoreCounter()
