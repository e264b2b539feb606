"""Torch-side helpers shared by the counter adapters: module tracking, functional labels, call adapters."""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from lightning_flops._compat import THOP_PRINT_NAMES, THOP_PRINTING_MODULES, TorchFunctionMode, carried_modes
from lightning_flops.inputs import iter_tensors
from lightning_flops.vocabulary import function_labels, operator_of_module

__all__ = [
    "FunctionLabeler",
    "ModuleStack",
    "PositionalCall",
    "on_fresh_stack",
    "operator_of_module",
    "user_module_name",
]

_T = TypeVar("_T")


class FunctionLabeler(TorchFunctionMode):
    """Remembers which public torch function (``einsum``, ``matmul``, ``linear``, ...) is running.

    The outermost labelled call wins: while it runs, the mode is off for nested calls (torch pops a function mode
    during its own ``__torch_function__``), so the aten kernels beneath inherit its label.
    """

    def __init__(self) -> None:
        super().__init__()
        self.label: str | None = None
        self.calls: dict[str, int] = {}
        self._labels = function_labels()

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
    """Tracks which named module is running, with one process-wide forward pre/post hook pair filtered by module
    identity (registering two hooks on every submodule cost more than the count itself on models of many modules).

    Process-wide hooks run before a module's own hooks: the ops of a module's own forward pre-hooks are booked to it,
    those of its own forward hooks to its parent (counters run on structural copies, which hold none of the user's
    hooks). ScriptModules run no Python hooks: their ops go to the parent.

    Args:
        model: the module whose ``named_modules()`` names are reported.
        wrapped: ``model`` is a :class:`PositionalCall`: report the names of the user's model inside it.
    """

    def __init__(self, model: nn.Module, wrapped: bool = False) -> None:
        self.model = model
        self.wrapped = wrapped
        self.stack: list[tuple[str, nn.Module]] = []
        self.called: set[str] = set()
        self.calls: dict[str, int] = {}
        self._handles: list[Any] = []

    @property
    def current(self) -> tuple[str, nn.Module | None]:
        """Name and module of the innermost running module (``""`` and ``None`` outside any)."""
        return self.stack[-1] if self.stack else ("", None)

    def __enter__(self) -> ModuleStack:
        names = {
            id(module): user_module_name(name) if self.wrapped else name
            for name, module in self.model.named_modules(remove_duplicate=True)
        }
        wrapper = self.model if self.wrapped else None  # it and the user's root share the name "": count the root

        def push(mod: nn.Module, args: Any) -> None:
            name = names.get(id(mod))
            if name is None:
                return  # a module outside the model (another model, or one made during the forward)
            self.stack.append((name, mod))
            self.called.add(name)
            if mod is not wrapper:
                self.calls[name] = self.calls.get(name, 0) + 1

        def pop(mod: nn.Module, args: Any, output: Any) -> None:
            if self.stack and self.stack[-1][1] is mod:
                self.stack.pop()

        self._handles = [register_module_forward_pre_hook(push), register_module_forward_hook(pop, always_call=True)]
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


# What thop and fvcore say that is noise here, and only that: their own modules' warnings, the deprecations they
# trigger in torch / distutils, and the tracer's warnings (fvcore traces with torch.jit.trace). Checked against
# thop 0.1.1 (MIT) and fvcore 0.1.5 with torch 2.13.
_QUIET_MODULES = r"(thop|fvcore)(\.|$)"
_QUIET_MESSAGES = (
    r"distutils Version classes are deprecated",  # thop.profile uses distutils' LooseVersion
    r"`torch\.jit\.(script|trace)\w*` is deprecated",  # fvcore.nn scripts its focal losses on import, traces
)
# thop's modules that print, and their printers (thop internals: lightning_flops._compat); muted inside them only
_PRINTING_MODULES = THOP_PRINTING_MODULES
_PRINT_NAMES = THOP_PRINT_NAMES
_MISSING = object()


def _discard(*args: Any, **kwargs: Any) -> None:
    """A ``print`` that prints nothing."""


@contextlib.contextmanager
def _muted_prints(names: tuple[str, ...]) -> Iterator[None]:
    """Shadow ``print`` (and thop's colour printers) inside the named, already imported modules.

    ``sys.stdout`` is left alone, so the output of the user's code and of other threads still shows.
    """
    patched: list[tuple[Any, str, Any]] = []
    for name in names:
        module = sys.modules.get(name)
        if module is None:
            continue
        for attr in _PRINT_NAMES:
            if attr == "print" or attr in vars(module):
                patched.append((module, attr, vars(module).get(attr, _MISSING)))
                setattr(module, attr, _discard)
    try:
        yield
    finally:
        for module, attr, previous in reversed(patched):
            if previous is _MISSING:
                vars(module).pop(attr, None)
            else:
                setattr(module, attr, previous)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the prints and warnings of thop and fvcore, and nothing else.

    ``sys.stdout`` is not swapped (another thread's output, and the user's model's, still show): thop's prints are
    muted inside thop's own modules. Warnings are ignored only when raised from thop/fvcore modules, for the tracer
    and for the deprecations listed in ``_QUIET_MESSAGES``; the user's own warnings still show. The warning filters
    are restored on exit (``warnings.catch_warnings``, which like every filter change is process-wide while active).
    """
    with warnings.catch_warnings(), _muted_prints(_PRINTING_MODULES):
        warnings.filterwarnings("ignore", module=_QUIET_MODULES)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        for message in _QUIET_MESSAGES:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        yield


def on_fresh_stack(fn: Callable[[], _T]) -> _T:
    """``fn()`` run in a new thread, whose Python stack is empty, and waited for: its result, or its exception.

    torch's JIT tracer (fvcore traces with it) records the Python source location of every node it adds by walking
    the caller's whole stack, so each traced operator costs time in proportion to the stack depth: measured with
    torch 2.13 on a chain of 200 convolutions, 0.13 s traced from a shallow stack, 0.9 s from 200 frames deeper.
    Inside ``Trainer.fit`` a callback runs some 50 frames deep. The counts do not depend on where the trace starts.
    ``FlopsMonitor`` runs its whole profile this way too: the thread's allocations come from another glibc arena and
    leave the training thread's heap alone.

    Torch's per-thread state that a count depends on is carried into the thread: grad mode, inference mode, the
    counting modes active here (:func:`lightning_flops._compat.carried_modes`: shape-only meta kernels, the traceable
    meta convolution) and, when CUDA is initialized, the current CUDA device and stream (a DDP rank's
    ``torch.cuda.set_device``). Not carried:
    a ``with torch.device(...)`` default-device context (tensors the forward makes without a device go to the CPU)
    and autocast (it changes dtypes, not MACs).
    """
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    device = torch.cuda.current_device() if cuda else None
    stream = torch.cuda.current_stream(device) if device is not None else None
    modes = carried_modes()
    outcome: list[Any] = []

    def run() -> None:
        try:
            with contextlib.ExitStack() as state:
                if device is not None:
                    torch.cuda.set_device(device)  # per thread
                    state.enter_context(torch.cuda.stream(stream))
                state.enter_context(torch.inference_mode(inference))
                state.enter_context(torch.set_grad_enabled(grad))
                state.enter_context(modes())
                outcome.append((True, fn()))
        except BaseException as err:  # handed to the caller, traceback included
            outcome.append((False, err))

    worker = threading.Thread(target=run, name="lightning-flops-trace", daemon=True)
    worker.start()
    worker.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
