"""Torch-side helpers shared by the counter adapters: module tracking, functional labels, call adapters."""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from lightning_flops._compat import TorchFunctionMode, carried_modes, thop_printers_muted
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


# ------------------------------------------------------------------------------------------- the counting thread
# Per thread: which thread a count belongs to (a worker of on_fresh_stack belongs to the thread that waits for it) and
# whether thop's and fvcore's output is muted there. Process-wide hooks fire on every thread: ours book only calls
# made for their own count.
_THREAD = threading.local()


def counting_thread() -> int:
    """The id of the thread whose count this thread runs: its own, or for a worker of :func:`on_fresh_stack`, the
    thread that waits for it."""
    owner = getattr(_THREAD, "owner", None)
    return owner if owner is not None else threading.get_ident()


@contextlib.contextmanager
def module_hooks_of_this_count(
    pre: Callable[[nn.Module, Any], None] | None = None, post: Callable[[nn.Module, Any, Any], None] | None = None
) -> Iterator[None]:
    """Process-wide forward pre/post hooks (one each, not one per module) that see only the modules run for the
    count of this thread (:func:`counting_thread`), registered and removed through their own handles only: a module
    another thread runs meanwhile is not booked, and another thread's global hooks (a ``ModuleTracker``) stay."""
    owner = counting_thread()
    handles = []
    try:
        if pre is not None:

            def filtered_pre(mod: nn.Module, args: Any) -> None:
                if counting_thread() == owner:
                    pre(mod, args)

            handles.append(register_module_forward_pre_hook(filtered_pre))
        if post is not None:

            def filtered_post(mod: nn.Module, args: Any, output: Any) -> None:
                if counting_thread() == owner:
                    post(mod, args, output)

            handles.append(register_module_forward_hook(filtered_post, always_call=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


class ModuleStack:
    """Tracks which named module is running, with one process-wide forward pre/post hook pair filtered by module
    identity (registering two hooks on every submodule cost more than the count itself on models of many modules)
    and by thread (:func:`module_hooks_of_this_count`: only this count's calls are booked, whatever other threads
    run meanwhile; the pair is removed through its own handles).

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
        self._hooks: contextlib.ExitStack | None = None

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

        self._hooks = contextlib.ExitStack()
        self._hooks.enter_context(module_hooks_of_this_count(push, pop))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._hooks is not None:
            self._hooks.close()
            self._hooks = None
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


def _muted_here() -> bool:
    return getattr(_THREAD, "muted", 0) > 0


class _ThreadMutedPattern:
    """A warning filter's regex that matches only on a thread inside :func:`quiet` (``warnings`` calls ``.match``
    on a filter's message and module patterns): an ``"ignore"`` filter with it ignores there and nowhere else."""

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern = re.compile(pattern, flags)

    def match(self, text: str) -> Any:
        return _muted_here() and self.pattern.match(text)


# What thop and fvcore say that is noise here, as ("ignore", message, category, module, lineno) warning filters
_QUIET_FILTERS = (
    ("ignore", None, Warning, _ThreadMutedPattern(_QUIET_MODULES), 0),
    ("ignore", _ThreadMutedPattern(""), torch.jit.TracerWarning, None, 0),
    *(("ignore", _ThreadMutedPattern(m, re.IGNORECASE), DeprecationWarning, None, 0) for m in _QUIET_MESSAGES),
)
_QUIET_LOCK = threading.Lock()
_quiet_users = 0


def _install_quiet() -> None:
    """Put the thread-aware filters at the front of ``warnings.filters``; under ``_QUIET_LOCK``."""
    for item in reversed(_QUIET_FILTERS):
        if not any(f is item for f in warnings.filters):
            warnings.filters.insert(0, item)


def _remove_quiet() -> None:
    """Take out what :func:`_install_quiet` added; under ``_QUIET_LOCK``, when no thread is quiet any more."""
    warnings.filters[:] = [f for f in warnings.filters if not any(f is item for item in _QUIET_FILTERS)]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the prints and warnings of thop and fvcore on this thread (and the fvcore trace thread it waits for),
    and nothing else.

    ``sys.stdout`` is not swapped (another thread's output, and the user's model's, still show). thop's printers
    are stood in for, inside thop's own modules, by printers that print nothing on a quiet thread and are the
    originals on every other thread (:func:`lightning_flops._compat.thop_printers_muted`); the warning filters added
    match on a quiet thread only (from thop/fvcore modules, the tracer's, the deprecations listed in
    ``_QUIET_MESSAGES``), so the user's warnings and every other thread's still show. Both are put in place by the
    first thread to enter and taken back by the last to leave.
    """
    global _quiet_users
    _THREAD.muted = getattr(_THREAD, "muted", 0) + 1
    with _QUIET_LOCK:
        _quiet_users += 1
        _install_quiet()
    try:
        with thop_printers_muted(_muted_here):
            yield
    finally:
        with _QUIET_LOCK:
            _quiet_users -= 1
            if _quiet_users == 0:
                _remove_quiet()
        _THREAD.muted -= 1


class ProfileInterrupted(BaseException):
    """Raised inside :func:`on_fresh_stack`'s thread when the waiting thread was interrupted (Ctrl-C, a signal)."""


def _end_and_wait(worker: threading.Thread, done: threading.Event) -> None:
    """End ``worker`` early and wait until it is ``done``: never leave a thread inside torch behind.

    A thread still running torch when the interpreter shuts down crashes the process (SIGABRT / SIGSEGV instead of
    Lightning's clean exit 1 after Ctrl-C). :class:`ProfileInterrupted` is raised in it once, at its next Python
    bytecode (every operator of a count passes through Python: the counting modes and hooks), so its ``finally``
    blocks put everything back as after any failed count; further interrupts meanwhile only wait again.
    """
    if worker.ident is not None and not done.is_set():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(ProfileInterrupted))
    while not done.is_set() and worker.is_alive():  # alive: the exception may land before `done` is set
        with contextlib.suppress(BaseException):  # a second Ctrl-C: the thread is already ending, keep waiting
            done.wait(0.1)


def on_fresh_stack(fn: Callable[[], _T]) -> _T:
    """``fn()`` run in a new thread, whose Python stack is empty, and waited for: its result, or its exception.

    torch's JIT tracer (fvcore traces with it) records the Python source location of every node it adds by walking
    the caller's whole stack, so each traced operator costs time in proportion to the stack depth: measured with
    torch 2.13 on a chain of 200 convolutions, 0.13 s traced from a shallow stack, 0.9 s from 200 frames deeper.
    Inside ``Trainer.fit`` a callback runs some 50 frames deep. The counts do not depend on where the trace starts.
    ``FlopsMonitor`` runs its whole profile this way too: the thread's allocations come from another glibc arena and
    leave the training thread's heap alone.

    Torch's per-thread state that a count depends on is carried into the thread: grad mode, inference mode, the
    modes of the count active here (:func:`lightning_flops._compat.carried_modes`: the shape-only meta kernels, the
    traceable meta convolution, fixed devices on meta), which count it belongs to (:func:`counting_thread`, for the
    module hooks), whether it is :func:`quiet` and, when CUDA is initialized, the current CUDA device and stream (a
    DDP rank's ``torch.cuda.set_device``). Not carried: a ``with torch.device(...)`` default-device context
    (tensors the forward makes without a device go to the CPU) and autocast (it changes dtypes, not MACs).

    When the waiting thread is interrupted (Ctrl-C, a signal handler that raises), the work thread is ended early and
    waited for before the interrupt goes on (see :func:`_end_and_wait`).
    """
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    device = torch.cuda.current_device() if cuda else None
    stream = torch.cuda.current_stream(device) if device is not None else None
    modes = carried_modes()
    owner, muted = counting_thread(), getattr(_THREAD, "muted", 0)
    outcome: list[Any] = []
    done = threading.Event()  # not Thread.join: an interrupted join marks a live thread stopped (Python < 3.13)

    def run() -> None:
        _THREAD.owner, _THREAD.muted = owner, muted  # this worker runs the waiting thread's count
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
        finally:
            done.set()

    worker = threading.Thread(target=run, name="lightning-flops-trace", daemon=True)
    worker.start()
    try:
        done.wait()
    except BaseException:  # Ctrl-C (KeyboardInterrupt) or a signal handler's SystemExit while the thread works
        _end_and_wait(worker, done)
        raise
    worker.join()  # it has nothing left to do
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
