"""Keeping the user's model and batch exactly as they were: structural copies, snapshots and RNG state.

Every counter runs on a *structural copy* of the model: new module objects (same classes, own ``__dict__``, own
hook dicts holding only torch's functional hooks, own ``training`` flags) whose tensors are either empty meta tensors
(:func:`meta_copy`) or the model's own tensors, shared (:func:`shared_copy`, for counting in place). No tensor is
ever copied except the few that the forward is seen to write in place (found with version counters on a meta pass),
so a copy costs next to no memory whatever the modules hold. ScriptModules, which cannot be copied structurally,
fall back to a deepcopy (meta) or to :class:`ModelSnapshot` (in place).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random
import sys
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.hooks import RemovableHandle

from lightning_flops.inputs import map_tensors

__all__ = [
    "ALL",
    "CopyRecord",
    "ModelSnapshot",
    "ShardedModelError",
    "WriteWatch",
    "meta_copy",
    "own_global_hooks",
    "preserved_rng",
    "shared_copy",
    "unwrap_compiled",
]

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
    """Everything that counting in place may touch on a ScriptModule, captured so that :meth:`restore` puts it back.

    Used only where no structural copy can be made (a ``torch.jit.ScriptModule`` anywhere in the model): it clones
    every buffer, and cannot restore parameter values written in place or Python attributes.

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

    def restore(self) -> None:
        """Put every captured property back (process-wide hooks: see :func:`own_global_hooks`)."""
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


# ----------------------------------------------------------------------------------------------- process-wide hooks
# Modules whose process-wide hooks are ours to remove if a counter leaves one behind (FlopCounterMode's tracker).
_OUR_HOOK_MODULES = ("torch.utils.module_tracker", "torch.utils.flop_counter", "thop", "fvcore", "lightning_flops")


def _hook_owner(hook: Any) -> str:
    owner = getattr(hook, "__self__", None)
    return str(getattr(type(owner) if owner is not None else hook, "__module__", "") or "")


@contextlib.contextmanager
def own_global_hooks() -> Iterator[None]:
    """Remove the process-wide module hooks that our counters added and left behind, and nothing else.

    A hook that anyone else registers meanwhile (another thread, the user's forward) stays; the dicts are never
    cleared or refilled. The dicts are private names of ``torch.nn.modules.module`` (checked against torch 2.13).
    """
    module_globals = sys.modules["torch.nn.modules.module"]
    before = {k: set(getattr(module_globals, k)) for k in _GLOBAL_HOOK_DICTS if hasattr(module_globals, k)}
    try:
        yield
    finally:
        for key, keys in before.items():
            current = getattr(module_globals, key)
            for hook_id in [i for i in list(current) if i not in keys]:
                hook = current.get(hook_id)
                if _hook_owner(hook).startswith(_OUR_HOOK_MODULES):
                    current.pop(hook_id, None)
                    for extra in ("_global_forward_hooks_with_kwargs", "_global_forward_hooks_always_called"):
                        getattr(module_globals, extra, {}).pop(hook_id, None)


# ------------------------------------------------------------------------------------------------ structural copies
class ShardedModelError(RuntimeError):
    """A sharded (DTensor) parameter cannot be counted in place: only a meta copy has its global shape."""


#: ``clone`` argument of :func:`shared_copy` meaning "clone every tensor" (the forward's writes are unknown).
ALL: frozenset[int] = frozenset({-1})

# Hook dicts that hold ids only (a flag per hook), filtered along with the hooks they describe (torch 2.13).
_HOOK_FLAG_DICTS = {
    "_forward_hooks_with_kwargs": "_forward_hooks",
    "_forward_hooks_always_called": "_forward_hooks",
    "_forward_pre_hooks_with_kwargs": "_forward_pre_hooks",
}


def _dtensor_type() -> type | None:
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def _is_sharded(tensor: torch.Tensor) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def _original_class(cls: type) -> type:
    """The user's class of a module that FSDP2's ``fully_shard`` (or ``replicate``) re-classed.

    Both build ``type("FSDP<Cls>", (FSDPModule, Cls), ...)`` and record ``_orig_cls_mro_index`` (torch 2.13,
    ``torch/distributed/fsdp/_fully_shard/_fully_shard.py``): the copy takes the original class, without the FSDP
    methods, whose hooks are not copied either.
    """
    index = getattr(cls, "_orig_cls_mro_index", None)
    made_by_fsdp = "__deepcopy__" in cls.__dict__ and "_orig_cls_mro_index" not in cls.__dict__
    if isinstance(index, int) and made_by_fsdp and 0 < index < len(cls.__mro__):
        return cls.__mro__[index]
    return cls


def _functional_hook(hook: Any) -> bool:
    """Whether ``hook`` is one of torch's own hooks that compute what the forward uses (kept on a copy).

    Lazy modules' shape inference, ``weight_norm``, ``spectral_norm`` and pruning set the weight the forward reads
    (torch 2.13); every other hook (the user's activation monitors, FSDP's unshard hooks) stays off our passes.
    """
    from torch.nn.modules.lazy import LazyModuleMixin
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    if isinstance(hook, (WeightNorm, SpectralNorm, BasePruningMethod)):
        return True
    return getattr(hook, "__func__", None) is LazyModuleMixin._infer_parameters


def _rebound(value: Any, old: nn.Module, new: nn.Module) -> Any:
    """A bound method of ``old`` rebound to ``new``; a wrapper (``functools.wraps``, ``torch.compile``) of one is
    replaced by the inner method rebound (counting the eager forward); anything else as it is."""
    inner, seen = value, 0
    while inner is not None and seen < 32:
        if isinstance(inner, types.MethodType) and inner.__self__ is old:
            return types.MethodType(inner.__func__, new)
        inner = inner.func if isinstance(inner, functools.partial) else getattr(inner, "__wrapped__", None)
        seen += 1
    return value


class CopyRecord:
    """What a structural copy mapped: ``(real tensor, its stand-in)`` for every tensor the copier reached."""

    def __init__(self) -> None:
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []


def _storage_key(tensor: torch.Tensor) -> int | None:
    """Identity of the storage behind ``tensor`` (shared by its views and ``.data``); ``None`` without one."""
    try:
        return int(tensor.untyped_storage()._cdata)  # torch 2.13: the StorageImpl address, stable per storage
    except Exception:
        return None


class WriteWatch(TorchDispatchMode):
    """Records which watched tensors an operator writes in place (``Tensor(a!)`` in its schema, or running stats).

    Matching is by storage, so a write through a view or ``.data`` is seen; version counters are not enough
    (``native_batch_norm`` updates running statistics with no alias annotation and no version bump, torch 2.13).

    Args:
        tensors: ``{key: tensor}`` to watch; :attr:`hit` collects the keys written.
    """

    def __init__(self, tensors: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.keys: dict[int, int] = {}
        for key, tensor in tensors.items():
            storage = _storage_key(tensor)
            if storage is not None:
                self.keys[storage] = key
        self.hit: set[int] = set()

    def _mark(self, value: Any) -> None:
        for tensor in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(tensor, torch.Tensor):
                key = self.keys.get(_storage_key(tensor) or 0)
                if key is not None:
                    self.hit.add(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        schema = func._schema
        for index, argument in enumerate(schema.arguments):
            value = kwargs.get(argument.name) if argument.kwarg_only or index >= len(args) else args[index]
            if argument.alias_info is not None and argument.alias_info.is_write:
                self._mark(value)
            elif argument.name in ("running_mean", "running_var") and "batch_norm" in schema.name:
                self._mark(value)  # written in training mode; marking it in eval too only costs a small clone
        return func(*args, **kwargs)


class _Copier:
    """Builds a structural copy of a module tree; ``tensor_fn(real)`` gives each tensor's stand-in."""

    def __init__(self, tensor_fn: Callable[[torch.Tensor], torch.Tensor], record: CopyRecord | None) -> None:
        self.tensor_fn = tensor_fn
        self.record = record
        self.tensors: dict[int, torch.Tensor] = {}
        self.modules: dict[int, nn.Module] = {}

    def tensor(self, real: torch.Tensor) -> torch.Tensor:
        twin = self.tensors.get(id(real))
        if twin is None:
            twin = self.tensors[id(real)] = self.tensor_fn(real)
            if self.record is not None and twin is not real:
                self.record.pairs.append((real, twin))
        return twin

    def value(self, value: Any) -> Any:
        """A plain attribute: tensors mapped (also inside tuples, lists, dicts and dataclasses); a top-level list,
        dict or set is a new container, so that the forward's appends stay on the copy (no tensor is copied)."""
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        mapped = map_tensors(self.tensor, value) if not isinstance(value, (set, frozenset)) else value
        if mapped is value and isinstance(value, (list, dict, set)):
            return copy.copy(value)
        return mapped

    def module(self, real: nn.Module) -> nn.Module:
        twin = self.modules.get(id(real))
        if twin is not None:
            return twin
        twin = object.__new__(_original_class(type(real)))
        self.modules[id(real)] = twin
        source = real.__dict__
        state: dict[str, Any] = {}
        for key, value in source.items():
            if key == "_parameters" or key == "_buffers":
                state[key] = {n: None if t is None else self.tensor(t) for n, t in value.items()}
            elif key == "_modules":
                state[key] = {n: None if m is None else self.module(m) for n, m in value.items()}
            elif key in _HOOK_FLAG_DICTS:
                continue  # filled below, from the hooks kept
            elif key.endswith("hooks") and key.startswith("_") and isinstance(value, dict):
                kept = {i: _rebound(h, real, twin) for i, h in value.items() if _functional_hook(h)}
                state[key] = type(value)(kept) if isinstance(value, dict) else kept
            elif key == "forward" or isinstance(value, types.MethodType):
                state[key] = _rebound(value, real, twin)
            elif isinstance(value, RemovableHandle):
                continue  # remapped below, once the copy's hook dicts exist
            else:
                state[key] = self.value(value)
        for key, hooks_key in _HOOK_FLAG_DICTS.items():
            if key in source:
                state[key] = type(source[key])((i, f) for i, f in source[key].items() if i in state.get(hooks_key, {}))
        for key, value in source.items():
            if isinstance(value, RemovableHandle):
                state[key] = _remapped_handle(value, source, state)
        twin.__dict__.update(state)
        return twin


def _remapped_handle(handle: RemovableHandle, source: dict[str, Any], state: dict[str, Any]) -> RemovableHandle:
    """A handle pointing at the copy's hook dicts where ``handle`` points at the original's (torch 2.13 fields)."""
    by_id = {id(v): state[k] for k, v in source.items() if isinstance(v, dict) and k in state}

    def mapped(ref: weakref.ReferenceType) -> weakref.ReferenceType:
        target = ref()
        twin = by_id.get(id(target)) if target is not None else None
        return weakref.ref(twin) if twin is not None else ref

    new = copy.copy(handle)
    new.hooks_dict_ref = mapped(handle.hooks_dict_ref)
    new.extra_dict_ref = tuple(mapped(r) for r in handle.extra_dict_ref)
    return new


def _has_script_module(model: nn.Module) -> bool:
    return any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def _meta_tensor(real: torch.Tensor) -> torch.Tensor:
    """An empty meta stand-in: global shape for a DTensor, a fresh uninitialized one for a lazy parameter."""
    from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

    if isinstance(real, UninitializedParameter):
        return UninitializedParameter(requires_grad=real.requires_grad, device="meta", dtype=real.dtype)
    if isinstance(real, UninitializedBuffer):
        return UninitializedBuffer(requires_grad=real.requires_grad, device="meta", dtype=real.dtype)
    if _is_sharded(real):
        twin = torch.empty(tuple(real.shape), dtype=real.dtype, device="meta")
    else:
        twin = torch.empty_like(real, device="meta")
    if isinstance(real, nn.Parameter):
        return nn.Parameter(twin, requires_grad=real.requires_grad)
    return twin


def meta_copy(model: nn.Module, record: CopyRecord | None = None) -> nn.Module:
    """A structural copy of ``model`` on the meta device: every tensor it reaches is an empty meta tensor.

    Parameters, buffers and plain tensor attributes of every module (also inside list/dict attributes) become meta
    tensors; nothing is copied (shared tensors and modules stay shared); sharded (DTensor) parameters take their
    global shape; lazy parameters stay uninitialized. The copy runs none of the user's hooks and the real model's
    state is unreachable from it, except through other objects its attributes refer to (shared, not copied).

    Args:
        model: the module to copy.
        record: filled with each real tensor and its meta stand-in, to see afterwards what the forward wrote.
    """
    if _has_script_module(model):
        return _deepcopy_to_meta(model)
    return _Copier(_meta_tensor, record).module(model)


def _shared_tensor(real: torch.Tensor, clone: frozenset[int] | set[int]) -> torch.Tensor:
    from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

    if _is_sharded(real):
        raise ShardedModelError(
            "the model holds sharded (DTensor) parameters (FSDP2 / tensor parallel): it is counted on a meta copy "
            "with its global shapes only, never in place"
        )
    if isinstance(real, UninitializedParameter):
        return UninitializedParameter(requires_grad=real.requires_grad, device=real.device, dtype=real.dtype)
    if isinstance(real, UninitializedBuffer):
        return UninitializedBuffer(requires_grad=real.requires_grad, device=real.device, dtype=real.dtype)
    if clone is not ALL and id(real) not in clone:
        return real
    with torch.no_grad():
        twin = real.detach().clone()
    if isinstance(real, nn.Parameter):
        return nn.Parameter(twin, requires_grad=real.requires_grad)
    return twin


def shared_copy(model: nn.Module, clone: frozenset[int] | set[int] = frozenset()) -> nn.Module:
    """A structural copy of ``model`` that shares its tensors, for counting in place.

    The copy has its own module objects, ``__dict__``, hooks (torch's functional ones only) and flags, so that
    counters, the forward's attribute writes (``self.calls += 1``) and thop's buffers stay on the copy. Tensors are
    the model's own, except those whose ``id`` is in ``clone`` (or all, with :data:`ALL`): the ones the forward
    writes in place get a private clone, so the real values never change.

    Args:
        model: the module to copy.
        clone: ids of the real tensors to clone, or :data:`ALL`.

    Raises:
        ShardedModelError: the model holds sharded (DTensor) parameters.
    """
    return _Copier(lambda t: _shared_tensor(t, clone), None).module(model)


def _deepcopy_to_meta(model: nn.Module) -> nn.Module:
    """ScriptModules only: ``copy.deepcopy`` with a memo mapping each parameter and buffer to a meta tensor."""
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
