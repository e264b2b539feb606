"""Keeping the user's model and batch exactly as they were: structural copies, snapshots and RNG state.

Every counter runs on a *structural copy* of the model: new module objects (same classes, own ``__dict__``, own
hook dicts holding only torch's functional hooks, own ``training`` flags) whose tensors are either empty meta tensors
(:func:`meta_copy`) or the model's own tensors, shared (:func:`shared_copy`, for counting in place). No tensor is
ever copied except the few that the forward is seen to write in place (:class:`WriteWatch` on a meta forward, or
in place with copy on write when no meta forward can run), so a copy costs next to no memory whatever it holds.
A ScriptModule, which cannot be copied structurally, is deep-copied with meta tensors in a meta copy, and shared
in a shared copy (the caller restores it with :class:`ModelSnapshot`); the modules around it are copied as usual, so
the user's hooks on them stay off our passes. Callables the copies hold (bound methods, closures such as
torchmetrics' wrapped ``update``) are relinked to the copies, random generators are copied in their state, and a
LightningModule's copy logs nothing.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import random
import sys
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_flops._compat import (
    HOOK_FLAG_DICTS,
    MODULE_CHILDREN_DICT,
    MODULE_HOOK_DICTS,
    MODULE_TENSOR_DICTS,
    TorchDispatchMode,
    compiled_inner,
    fsdp_original_class,
    handle_with_refs,
    is_hook_dict_key,
    is_lazy_shape_hook,
    is_op_overload,
    module_buffers,
    module_parameters,
    op_schema,
    storage_address,
)
from lightning_flops.errors import ShardedModelError
from lightning_flops.inputs import map_tensors

__all__ = [
    "ALL",
    "CopyRecord",
    "ModelSnapshot",
    "ShardedModelError",
    "ValueCheck",
    "WriteWatch",
    "meta_copy",
    "model_device",
    "preserved_generators",
    "preserved_rng",
    "restored_scripts",
    "shared_copy",
    "unwrap_compiled",
]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter, else of its first buffer; the CPU for a model without either."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (see :func:`~lightning_flops._compat.compiled_inner`), else
    ``model``."""
    inner = compiled_inner(model)
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
        self.hooks = [{k: dict(getattr(m, k)) for k in MODULE_HOOK_DICTS if hasattr(m, k)} for m in self.modules]
        self.parameters = [dict(module_parameters(m)) for m in self.modules]
        self.buffers = [dict(module_buffers(m)) for m in self.modules]
        with torch.no_grad():
            self.buffer_values = {
                id(b): b.detach().clone() for m in self.modules for b in module_buffers(m).values() if b is not None
            }
        self.requires_grad = {id(p): p.requires_grad for p in model.parameters()}

    def restore(self) -> None:
        """Put every captured property back (process-wide hooks are never touched here: ours are removed through
        their own handles, :func:`lightning_flops.counters.tracing.module_hooks_of_this_count`)."""
        for module, training, hooks, params, buffers in zip(
            self.modules, self.training, self.hooks, self.parameters, self.buffers, strict=True
        ):
            module.training = training
            for key, saved in hooks.items():
                current = getattr(module, key)
                current.clear()
                current.update(saved)
            own_params, own_buffers = module_parameters(module), module_buffers(module)
            if not isinstance(own_params, dict):
                continue  # a ScriptModule (torch 2.13 `OrderedDictWrapper`): its names are fixed and it has no clear()
            if own_params.keys() != params.keys() or any(own_params[k] is not v for k, v in params.items()):
                own_params.clear()
                own_params.update(params)
            if own_buffers.keys() != buffers.keys() or any(own_buffers[k] is not v for k, v in buffers.items()):
                own_buffers.clear()
                own_buffers.update(buffers)
        with torch.no_grad():
            for module in self.modules:
                for buffer in module_buffers(module).values():
                    saved = self.buffer_values.get(id(buffer)) if buffer is not None else None
                    if saved is not None and not buffer.is_meta and not torch.equal(buffer, saved):
                        buffer.copy_(saved)
        for param in self.model.parameters():
            wanted = self.requires_grad.get(id(param))
            if wanted is not None and param.requires_grad != wanted:
                param.requires_grad_(wanted)


@contextlib.contextmanager
def restored_scripts(model: nn.Module) -> Iterator[None]:
    """Restore each outermost ScriptModule of ``model`` on exit (:class:`ModelSnapshot`): a shared copy shares them."""
    scripts: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.jit.ScriptModule) and not any(module in set(s.modules()) for s in scripts):
            scripts.append(module)
    snapshots = [ModelSnapshot(script) for script in scripts]
    try:
        yield
    finally:
        for snapshot in snapshots:
            snapshot.restore()


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


@contextlib.contextmanager
def preserved_generators(model: nn.Module) -> Iterator[None]:
    """Restore the state of every ``torch.Generator`` that the model's modules hold as attributes on exit.

    For a forward run on the model itself (``profile_generate``), and as a guard around ``profile_model``: its
    structural copies already draw from copies of these generators (:func:`_own_generator`), but a module shared
    into a copy as it is (a ScriptModule, which has no structural copy) keeps the model's.
    """
    generators = {
        id(value): value
        for module in model.modules()
        for value in vars(module).values()
        if isinstance(value, torch.Generator)
    }
    states = [(generator, generator.get_state()) for generator in generators.values()]
    try:
        yield
    finally:
        for generator, state in states:
            generator.set_state(state)


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # an integer dtype of each element size


def _checkable(tensor: Any) -> bool:
    return (
        type(tensor) in (torch.Tensor, nn.Parameter)  # exactly: not a subclass (uninitialized, DTensor, ...)
        and tensor.layout == torch.strided
        and not tensor.is_meta
        and not tensor.is_quantized
        and tensor.element_size() in _BITS
    )


class ValueCheck:
    """A cheap checksum of every tensor the model holds (parameters, buffers, tensor attributes), to see afterwards
    whether counting in place changed any, rather than trust that every write was seen and undone.

    The checksum of a tensor is the sum of its elements' bit patterns, wrapping in an integer dtype of the element's
    size (one read of each tensor, no copy, one synchronisation per device): any change of one element is seen, a
    permutation of elements is not.

    Args:
        model: the module whose tensors to check (submodules included).

    Example::

        check = ValueCheck(model)
        count_in_place(model)
        assert check.changed() == []
    """

    def __init__(self, model: nn.Module) -> None:
        self.named: dict[int, tuple[str, torch.Tensor]] = {}
        for prefix, module in model.named_modules():
            for attribute, value in vars(module).items():
                tensors = value.items() if attribute in MODULE_TENSOR_DICTS else [(attribute, value)]
                for name, tensor in tensors:
                    if _checkable(tensor) and id(tensor) not in self.named:
                        self.named[id(tensor)] = (f"{prefix}.{name}" if prefix else name, tensor)
        self.sums = self._sums()

    def _sums(self) -> dict[str, torch.Tensor]:
        by_device: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for _, tensor in self.named.values():
                bits = tensor.detach().view(_BITS[tensor.element_size()])
                # summed in its own dtype (wrapping): no widened copy of the tensor; one changed element still shows
                by_device.setdefault(str(tensor.device), []).append(bits.sum(dtype=bits.dtype).to(torch.int64))
        return {device: torch.stack(sums) for device, sums in by_device.items()}

    def changed(self) -> list[str]:
        """Names of the tensors whose checksum differs from the one taken at construction."""
        names: dict[str, list[str]] = {}
        for name, tensor in self.named.values():
            names.setdefault(str(tensor.device), []).append(name)
        now = self._sums()
        out = []
        for device, before in self.sums.items():
            after = now.get(device)
            if after is None or after.shape != before.shape:
                continue
            out.extend(names[device][i] for i in (after != before).nonzero().flatten().tolist())
        return out


# ------------------------------------------------------------------------------------------------ structural copies
#: ``clone`` argument of :func:`shared_copy` meaning "clone every tensor" (the forward's writes are unknown).
ALL: frozenset[int] = frozenset({-1})


def _dtensor_type() -> type | None:
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def _is_sharded(tensor: torch.Tensor) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def _functional_hook(hook: Any) -> bool:
    """Whether ``hook`` is one of torch's own hooks that compute what the forward uses (kept on a copy).

    Lazy modules' shape inference, ``weight_norm``, ``spectral_norm`` and pruning set the weight the forward reads
    (torch 2.13); every other hook (the user's activation monitors, FSDP's unshard hooks) stays off our passes.
    """
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    if isinstance(hook, (WeightNorm, SpectralNorm, BasePruningMethod)):
        return True
    return is_lazy_shape_hook(hook)


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
        return storage_address(tensor)
    except Exception:
        return None


class WriteWatch(TorchDispatchMode):
    """Records which watched tensors an operator writes in place (``Tensor(a!)`` in its schema, or running stats).

    Matching is by storage, so a write through a view or ``.data`` is seen; version counters are not enough
    (``native_batch_norm`` updates running statistics with no alias annotation and no version bump, torch 2.13).

    Args:
        tensors: ``{key: tensor}`` to watch; :attr:`hit` collects the keys written.
        snapshot: clone each watched tensor just before its first write, for :meth:`restore` (real tensors only).

    Higher-order operators never raise here (that would happen inside the user's ``forward``, where a
    ``try``/``except`` takes another path): ``torch.cond`` runs both branches under this mode, as FlopCounterMode
    does (the predicate may be a meta tensor), and returns the first's output; any other runs on beneath this mode.
    """

    supports_higher_order_operators = True

    def __init__(self, tensors: dict[int, torch.Tensor], snapshot: bool = False) -> None:
        super().__init__()
        self.tensors = tensors
        self.snapshot = snapshot
        self.keys: dict[int, int] = {}
        for key, tensor in tensors.items():
            storage = _storage_key(tensor)
            if storage is not None:
                self.keys[storage] = key
        self.hit: set[int] = set()
        self.saved: dict[int, torch.Tensor] = {}

    def _mark(self, value: Any) -> None:
        for tensor in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(tensor, torch.Tensor):
                key = self.keys.get(_storage_key(tensor) or 0)
                if key is not None:
                    self.hit.add(key)
                    if self.snapshot and key not in self.saved:  # copy on first write: the value before it
                        self.saved[key] = self.tensors[key].detach().clone()

    def restore(self) -> None:
        """With ``snapshot=True``: write back the value each written tensor had before its first write."""
        with torch.no_grad():
            for key, value in self.saved.items():
                self.tensors[key].detach().copy_(value)
        self.saved.clear()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not is_op_overload(func):
            if func is torch.ops.higher_order.cond:
                _, true_branch, false_branch, operands = args
                with self:
                    out = true_branch(*operands)
                    false_branch(*operands)
                return out
            return func(*args, **kwargs)
        schema = op_schema(func)
        for index, argument in enumerate(schema.arguments):
            value = kwargs.get(argument.name) if argument.kwarg_only or index >= len(args) else args[index]
            if argument.alias_info is not None and argument.alias_info.is_write:
                self._mark(value)
            elif argument.name in ("running_mean", "running_var") and "batch_norm" in schema.name:
                self._mark(value)  # written in training mode; marking it in eval too only costs a small clone
        return func(*args, **kwargs)


_SCALARS = frozenset({bool, int, float, complex, str, bytes})


def _no_log(*args: Any, **kwargs: Any) -> None:
    """``log`` / ``log_dict`` of a LightningModule's copy: what our passes compute is never logged."""


def _is_lightning_module(module: nn.Module) -> bool:
    """Whether ``module`` is a Lightning ``LightningModule`` (checked by name: no Lightning import here)."""
    return any(
        cls.__name__ == "LightningModule" and cls.__module__.split(".")[0] in ("lightning", "pytorch_lightning")
        for cls in type(module).__mro__
    )


def _own_generator(value: Any) -> Any:
    """A copy of a random generator (torch, ``random.Random``, NumPy) in its current state, else ``None``: the copy
    draws from its own, so the model's generators are never advanced by our passes."""
    if isinstance(value, torch.Generator):
        twin = torch.Generator(device=value.device)
        twin.set_state(value.get_state())
        return twin
    if isinstance(value, random.Random):
        return copy.deepcopy(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(
        value, (numpy.random.Generator, numpy.random.RandomState, numpy.random.BitGenerator)
    ):
        return copy.deepcopy(value)
    return None


class _Copier:
    """Builds a structural copy of a module tree; ``tensor_fn(real)`` gives each tensor's stand-in.

    Args:
        tensor_fn: the stand-in of a real tensor.
        record: filled with each real tensor and its stand-in.
        meta: a meta copy (a ScriptModule is deep-copied onto meta); else a shared copy (a ScriptModule is the
            model's own, shared: the caller restores it with :class:`ModelSnapshot`).
    """

    def __init__(
        self, tensor_fn: Callable[[torch.Tensor], torch.Tensor], record: CopyRecord | None, meta: bool
    ) -> None:
        self.tensor_fn = tensor_fn
        self.record = record
        self.meta = meta
        self.tensors: dict[int, torch.Tensor] = {}
        self.modules: dict[int, nn.Module] = {}
        self.relink: list[tuple[nn.Module, str]] = []  # (copy, attribute): callables that may refer to the model

    def copy(self, model: nn.Module) -> nn.Module:
        """The copy of ``model``; callables in the copies' ``__dict__`` refer to the copies, not to the model."""
        twin = self.module(model)
        for module, key in self.relink:
            module.__dict__[key] = self.relinked(module.__dict__[key], 0)
        return twin

    def tensor(self, real: torch.Tensor) -> torch.Tensor:
        twin = self.tensors.get(id(real))
        if twin is None:
            twin = self.tensors[id(real)] = self.tensor_fn(real)
            if self.record is not None:
                self.record.pairs.append((real, twin))
        return twin

    def value(self, value: Any) -> Any:
        """A plain attribute: tensors mapped (also inside tuples, lists, dicts and dataclasses); a top-level list,
        dict or set is a new container, so that the forward's appends stay on the copy (no tensor is copied); a
        random generator is copied in its state."""
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if value is None or type(value) in _SCALARS:  # most of a module's attributes: nothing to walk
            return value
        generator = _own_generator(value)
        if generator is not None:
            return generator
        mapped = map_tensors(self.tensor, value) if not isinstance(value, (set, frozenset)) else value
        if mapped is value and isinstance(value, (list, dict, set)):
            return copy.copy(value)
        return mapped

    def relinked(self, value: Any, depth: int) -> Any:
        """``value`` referring to the copies where it refers to modules of the model: a module, a bound method of
        one, or a closure over them (torchmetrics wraps ``update`` in a closure over the metric), to any depth up
        to 8; anything else as it is."""
        if isinstance(value, nn.Module):
            twin = self.modules.get(id(value))
            return twin if twin is not None else value
        if isinstance(value, types.MethodType):
            owner = self.relinked(value.__self__, depth + 1) if isinstance(value.__self__, nn.Module) else None
            return (
                types.MethodType(value.__func__, owner) if owner is not None and owner is not value.__self__ else value
            )
        if not isinstance(value, types.FunctionType) or not value.__closure__ or depth > 8:
            return value
        contents = []
        for cell in value.__closure__:
            try:
                contents.append(cell.cell_contents)
            except ValueError:  # an empty cell
                contents.append(_EMPTY)
        linked = [c if c is _EMPTY else self.relinked(c, depth + 1) for c in contents]
        if all(a is b for a, b in zip(contents, linked, strict=True)):
            return value
        cells = tuple(types.CellType() if c is _EMPTY else types.CellType(c) for c in linked)
        twin = types.FunctionType(value.__code__, value.__globals__, value.__name__, value.__defaults__, cells)
        twin.__kwdefaults__ = value.__kwdefaults__
        twin.__qualname__, twin.__module__, twin.__doc__ = value.__qualname__, value.__module__, value.__doc__
        twin.__dict__.update(value.__dict__)
        if "__wrapped__" in value.__dict__:
            twin.__wrapped__ = self.relinked(value.__dict__["__wrapped__"], depth + 1)
        return twin

    def script(self, real: torch.jit.ScriptModule) -> nn.Module:
        """A ScriptModule, which has no structural copy: on meta a deep copy with meta tensors (the same stand-ins
        as the rest of the copy), else the model's own."""
        if not self.meta:
            self.modules[id(real)] = real
            return real
        memo: dict[int, Any] = {}
        for module in real.modules():
            for tensor in (*module_parameters(module).values(), *module_buffers(module).values()):
                if tensor is not None:
                    memo[id(tensor)] = self.tensor(tensor)
        twin = copy.deepcopy(real, memo)
        self.modules[id(real)] = twin
        return twin

    def module(self, real: nn.Module) -> nn.Module:
        twin = self.modules.get(id(real))
        if twin is not None:
            return twin
        if isinstance(real, torch.jit.ScriptModule):
            return self.script(real)
        twin = object.__new__(fsdp_original_class(type(real)))
        self.modules[id(real)] = twin
        source = real.__dict__
        state: dict[str, Any] = {}
        for key, value in source.items():
            if key in MODULE_TENSOR_DICTS:
                state[key] = {n: None if t is None else self.tensor(t) for n, t in value.items()}
            elif key == MODULE_CHILDREN_DICT:
                state[key] = {n: None if m is None else self.module(m) for n, m in value.items()}
            elif key in HOOK_FLAG_DICTS:
                continue  # filled below, from the hooks kept
            elif is_hook_dict_key(key, value):
                if not value:
                    state[key] = type(value)()  # most hook dicts are empty
                    continue
                kept = {i: _rebound(h, real, twin) for i, h in value.items() if _functional_hook(h)}
                state[key] = type(value)(kept) if isinstance(value, dict) else kept
            elif key == "forward" or isinstance(value, types.MethodType):
                state[key] = _rebound(value, real, twin)
                self.relink.append((twin, key))
            elif isinstance(value, RemovableHandle):
                continue  # remapped below, once the copy's hook dicts exist
            elif isinstance(value, types.FunctionType) and value.__closure__:
                state[key] = value
                self.relink.append((twin, key))  # once every module has its copy
            else:
                state[key] = self.value(value)
        for key, hooks_key in HOOK_FLAG_DICTS.items():
            if key in source:
                state[key] = type(source[key])((i, f) for i, f in source[key].items() if i in state.get(hooks_key, {}))
        for key, value in source.items():
            if isinstance(value, RemovableHandle):
                state[key] = _remapped_handle(value, source, state)
        if _is_lightning_module(real):
            state["log"] = state["log_dict"] = _no_log  # the copy shares the trainer: it must log nothing into it
        twin.__dict__.update(state)
        return twin


_EMPTY = object()


def _remapped_handle(handle: RemovableHandle, source: dict[str, Any], state: dict[str, Any]) -> RemovableHandle:
    """A handle pointing at the copy's hook dicts where ``handle`` points at the original's (torch 2.13 fields)."""
    by_id = {id(v): state[k] for k, v in source.items() if isinstance(v, dict) and k in state}

    def mapped(ref: weakref.ReferenceType) -> weakref.ReferenceType:
        target = ref()
        twin = by_id.get(id(target)) if target is not None else None
        return weakref.ref(twin) if twin is not None else ref

    return handle_with_refs(handle, mapped)


def _plain_contiguous(tensor: torch.Tensor) -> bool:
    """A strided, contiguous, not quantized ``torch.Tensor`` or ``nn.Parameter`` (no subclass)."""
    return (
        type(tensor) in (torch.Tensor, nn.Parameter)
        and tensor.layout == torch.strided
        and not tensor.is_quantized
        and tensor.is_contiguous()
    )


def _meta_tensor(real: torch.Tensor) -> torch.Tensor:
    """An empty meta stand-in: global shape for a DTensor, a fresh uninitialized one for a lazy parameter."""
    from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

    if isinstance(real, UninitializedParameter):
        return UninitializedParameter(requires_grad=real.requires_grad, device="meta", dtype=real.dtype)
    if isinstance(real, UninitializedBuffer):
        return UninitializedBuffer(requires_grad=real.requires_grad, device="meta", dtype=real.dtype)
    if _is_sharded(real) or _plain_contiguous(real):
        # a plain contiguous tensor: what empty_like gives, without its Python meta kernel (~50 us, torch 2.13)
        twin = torch.empty(tuple(real.shape), dtype=real.dtype, device="meta")
    else:
        twin = torch.empty_like(real, device="meta")  # the same strides where the layout is dense
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
    return _Copier(_meta_tensor, record, meta=True).copy(model)


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


def shared_copy(
    model: nn.Module, clone: frozenset[int] | set[int] = frozenset(), record: CopyRecord | None = None
) -> nn.Module:
    """A structural copy of ``model`` that shares its tensors, for counting in place.

    The copy has its own module objects, ``__dict__``, hooks (torch's functional ones only) and flags, so that
    counters, the forward's attribute writes (``self.calls += 1``) and thop's buffers stay on the copy. Tensors are
    the model's own, except those whose ``id`` is in ``clone`` (or all, with :data:`ALL`): the ones the forward
    writes in place get a private clone, so the real values never change.

    Args:
        model: the module to copy.
        clone: ids of the real tensors to clone, or :data:`ALL`.
        record: filled with each real tensor and what the copy holds instead (itself where shared).

    Raises:
        ShardedModelError: the model holds sharded (DTensor) parameters.
    """
    return _Copier(lambda t: _shared_tensor(t, clone), record, meta=False).copy(model)
