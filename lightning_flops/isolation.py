"""Keeping the user's model exactly as it was: snapshots, RNG state, and meta copies that share no memory.

After profiling, these are as before: parameters and buffers (values and the set of names), forward/backward and
state-dict hooks of every module, the process-wide module hooks, per-module ``training`` flags, ``requires_grad``,
and the RNG state of Python, NumPy (when imported), the CPU and every initialised CUDA device. Python attributes
that a model's own ``forward`` mutates cannot be restored.
"""

from __future__ import annotations

import contextlib
import copy
import random
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["ModelSnapshot", "meta_copy", "preserved_rng", "unwrap_compiled"]

# Per-module dicts of hooks, checked against torch 2.13 (`torch/nn/modules/module.py`).
_MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
# Process-wide hook dicts in `torch.nn.modules.module`, checked against torch 2.13: a private API, touched here only.
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``, torch 2.13), else ``model``."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


class ModelSnapshot:
    """Everything that counting may touch on a model, captured so that :meth:`restore` puts it back.

    Args:
        model: the module to capture (all submodules included).

    Example::

        snapshot = ModelSnapshot(model)
        try:
            run_counter(model)
        finally:
            snapshot.restore()
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = list(model.modules())
        self.training = [m.training for m in self.modules]
        self.hooks = [{k: dict(getattr(m, k)) for k in _MODULE_HOOK_DICTS if hasattr(m, k)} for m in self.modules]
        self.parameters = [dict(m._parameters) for m in self.modules]
        self.buffers = [dict(m._buffers) for m in self.modules]
        with torch.no_grad():
            self.buffer_values = {
                id(b): b.detach().clone() for m in self.modules for b in m._buffers.values() if b is not None
            }
        self.requires_grad = {id(p): p.requires_grad for p in model.parameters()}
        module_globals = sys.modules["torch.nn.modules.module"]
        self.global_hooks = {
            k: dict(getattr(module_globals, k)) for k in _GLOBAL_HOOK_DICTS if hasattr(module_globals, k)
        }

    def restore(self) -> None:
        """Put every captured property back."""
        module_globals = sys.modules["torch.nn.modules.module"]
        for key, saved in self.global_hooks.items():
            current = getattr(module_globals, key)
            current.clear()
            current.update(saved)
        for module, training, hooks, params, buffers in zip(
            self.modules, self.training, self.hooks, self.parameters, self.buffers, strict=True
        ):
            module.training = training
            for key, saved in hooks.items():
                current = getattr(module, key)
                current.clear()
                current.update(saved)
            if not isinstance(module._parameters, dict):
                continue  # a ScriptModule (torch 2.13 `OrderedDictWrapper`): its names are fixed and it has no clear()
            if module._parameters.keys() != params.keys() or any(
                module._parameters[k] is not v for k, v in params.items()
            ):
                module._parameters.clear()
                module._parameters.update(params)
            if module._buffers.keys() != buffers.keys() or any(module._buffers[k] is not v for k, v in buffers.items()):
                module._buffers.clear()
                module._buffers.update(buffers)
        with torch.no_grad():
            for module in self.modules:
                for buffer in module._buffers.values():
                    saved = self.buffer_values.get(id(buffer)) if buffer is not None else None
                    if saved is not None and not buffer.is_meta and not torch.equal(buffer, saved):
                        buffer.copy_(saved)
        for param in self.model.parameters():
            wanted = self.requires_grad.get(id(param))
            if wanted is not None and param.requires_grad != wanted:
                param.requires_grad_(wanted)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the RNG state of Python, NumPy (if imported), the CPU and each initialised CUDA device on exit."""
    python_state = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python_state)
        if numpy is not None and numpy_state is not None:
            numpy.random.set_state(numpy_state)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device, made without copying any weight.

    ``copy.deepcopy`` runs with a memo that already maps every parameter and buffer to an empty meta tensor, so the
    weights are never duplicated; shared parameters stay shared. Raises whatever ``deepcopy`` raises for models
    holding uncopyable attributes: the caller then counts in place.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None and id(param) not in memo:
                memo[id(param)] = nn.Parameter(
                    torch.empty_like(param, device="meta"), requires_grad=param.requires_grad
                )
        for buffer in module._buffers.values():
            if buffer is not None and id(buffer) not in memo:
                memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(model, memo)
