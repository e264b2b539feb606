"""Torch-side helpers shared by the counter adapters: module tracking, functional labels, call adapters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_flops.inputs import iter_tensors

__all__ = ["FunctionLabeler", "ModuleStack", "PositionalCall", "operator_of_module", "user_module_name"]

_MODULE_OPERATORS: tuple[tuple[tuple[type, ...], str], ...] = (
    ((nn.modules.conv._ConvNd,), "conv"),
    ((nn.Linear, nn.Bilinear), "linear"),
    ((nn.MultiheadAttention,), "attention"),
    ((nn.RNNBase, nn.RNNCellBase), "rnn"),
    (
        (
            nn.modules.batchnorm._NormBase,
            nn.LayerNorm,
            nn.GroupNorm,
            nn.LocalResponseNorm,
            *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
        ),
        "norm",
    ),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin), "softmax"),
    (
        (
            nn.modules.pooling._MaxPoolNd,
            nn.modules.pooling._AvgPoolNd,
            nn.modules.pooling._AdaptiveAvgPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd,
        ),
        "pool",
    ),
    ((nn.Upsample, nn.PixelShuffle), "interpolate"),
    (
        (
            nn.ReLU,
            nn.ReLU6,
            nn.LeakyReLU,
            nn.PReLU,
            nn.GELU,
            nn.SiLU,
            nn.Sigmoid,
            nn.Tanh,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.ELU,
            nn.Mish,
        ),
        "activation",
    ),
)


def operator_of_module(module: nn.Module) -> str:
    """The vocabulary operator of a module type (``conv``, ``linear``, ``norm``, ...); ``other`` when unknown."""
    for types, operator in _MODULE_OPERATORS:
        if isinstance(module, types):
            return operator
    return "other"


def _function_labels() -> dict[Any, str]:
    labels: dict[Any, str] = {}
    candidates = {
        "einsum": [torch.einsum],
        "matmul": [
            torch.matmul,
            torch.bmm,
            torch.mm,
            torch.baddbmm,
            torch.addmm,
            torch.Tensor.matmul,
            torch.Tensor.__matmul__,
            torch.Tensor.__rmatmul__,
            torch.Tensor.bmm,
            torch.Tensor.mm,
        ],
        "linear": [F.linear, F.bilinear],
        "conv": [F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d],
        "attention": [
            F.scaled_dot_product_attention,
            F.multi_head_attention_forward,
            getattr(torch, "_native_multi_head_attention", None),
        ],
    }
    for label, functions in candidates.items():
        for function in functions:
            if function is not None:
                labels[function] = label
    return labels


class FunctionLabeler(TorchFunctionMode):
    """Remembers which public torch function (``einsum``, ``matmul``, ``linear``, ...) is running.

    The outermost labelled call wins: while it runs, the mode is off for nested calls (torch pops a function mode
    during its own ``__torch_function__``), so the aten kernels beneath inherit its label.
    """

    def __init__(self) -> None:
        super().__init__()
        self.label: str | None = None
        self.calls: dict[str, int] = {}
        self._labels = _function_labels()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        label = self._labels.get(func)
        if label is None or self.label is not None:
            return func(*args, **kwargs)
        self.calls[label] = self.calls.get(label, 0) + 1
        self.label = label
        try:
            return func(*args, **kwargs)
        finally:
            self.label = None


class ModuleStack:
    """Tracks which named module is running, with forward pre/post hooks on every submodule of ``model``.

    Args:
        model: the module whose ``named_modules()`` names are reported.
        wrapped: ``model`` is a :class:`PositionalCall`: report the names of the user's model inside it.
    """

    def __init__(self, model: nn.Module, wrapped: bool = False) -> None:
        self.model = model
        self.wrapped = wrapped
        self.stack: list[tuple[str, nn.Module]] = []
        self.called: set[str] = set()
        self._handles: list[Any] = []

    @property
    def current(self) -> tuple[str, nn.Module | None]:
        """Name and module of the innermost running module (``""`` and ``None`` outside any)."""
        return self.stack[-1] if self.stack else ("", None)

    def __enter__(self) -> ModuleStack:
        for name, module in self.model.named_modules(remove_duplicate=True):
            stripped = user_module_name(name) if self.wrapped else name

            def push(mod: nn.Module, args: Any, name: str = stripped) -> None:
                self.stack.append((name, mod))
                self.called.add(name)

            def pop(mod: nn.Module, args: Any, output: Any) -> None:
                if self.stack and self.stack[-1][1] is mod:
                    self.stack.pop()

            with contextlib.suppress(RuntimeError):  # ScriptModules refuse hooks: their ops go to the parent
                self._handles.append(module.register_forward_pre_hook(push))
                self._handles.append(module.register_forward_hook(pop, always_call=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.stack.clear()  # `called` stays readable after exit


def user_module_name(name: str) -> str:
    """The user's ``named_modules()`` name of a module seen inside a :class:`PositionalCall` (``model.a`` -> ``a``)."""
    if name in ("", "model"):
        return ""
    return name.removeprefix("model.")


class PositionalCall(nn.Module):
    """Calls ``model(*args, **kwargs)`` from positional tensors only, for tracers that take a tuple of tensors.

    Tensors of ``args`` and ``kwargs`` become positional inputs of this module's ``forward``; other values are bound
    as constants. ``train()``/``eval()`` on the wrapper do not reach the model (thop calls them on its root).

    Args:
        model: the module to call.
        args: the positional example input.
        kwargs: the keyword example input.
    """

    def __init__(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self._args = list(args)
        self._kwargs = dict(kwargs)
        self._slots = [("arg", i) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        self._slots += [("kw", k) for k, v in kwargs.items() if isinstance(v, torch.Tensor)]

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The positional inputs that :meth:`forward` expects."""
        return tuple(self._args[i] if kind == "arg" else self._kwargs[i] for kind, i in self._slots)

    def forward(self, *tensors: torch.Tensor) -> Any:
        args, kwargs = list(self._args), dict(self._kwargs)
        for (kind, key), tensor in zip(self._slots, tensors, strict=True):
            if kind == "arg":
                args[key] = tensor
            else:
                kwargs[key] = tensor
        output = self.model(*args, **kwargs)
        if isinstance(output, torch.Tensor):
            return output
        # JIT tracers (fvcore) take tensors and tuples of them only: hand them the tensors of a structured output
        # (tuples, dicts, dataclasses, HF ModelOutput) in order; cache objects (DynamicCache, ...) and None drop out
        tensors = tuple(tensor for _, tensor in iter_tensors(output))
        return tensors if tensors else output  # nothing to hand over: let the tracer say what it cannot take

    def train(self, mode: bool = True) -> PositionalCall:
        return self


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the prints and warnings of third-party counters."""
    import io
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
