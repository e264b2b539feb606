"""torch's private APIs that lightning-flops touches (checked against torch 2.13): module and hook internals,
dispatch internals, FlopCounterMode's formula table, meta kernels.

* torch modules: hook dicts (:data:`MODULE_HOOK_DICTS`, :func:`torch_global_hook_dicts`), tensor dicts
  (:func:`module_parameters`, :func:`module_buffers`), :func:`compiled_inner`, :func:`fsdp_original_class`,
  :func:`is_lazy_shape_hook`, :func:`quantized_weight_bias`.
* torch dispatch: :data:`TorchDispatchMode`, :func:`is_fake_tensor`, :func:`is_op_overload`, :func:`op_schema`,
  :func:`storage_address`; FlopCounterMode: :func:`set_module_tracker`, :func:`mark_raw_formula`,
  :func:`decomposes_implicitly`, :func:`shape_formula`.
* torch meta kernels: :func:`traceable_meta_convolution` (lets ``torch.jit.trace``, fvcore, record convolutions on
  the meta device), :func:`fast_meta_kernels` (shape-only kernels of :mod:`lightning_flops._meta_kernels`),
  :func:`torch_meta_kernel`.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode  # noqa: F401  (torch 2.13: not in torch.overrides.__all__)
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: F401  (torch 2.13: base of our dispatch modes)

# FlopCounterMode's formula table and attention formulas: not in torch.utils.flop_counter.__all__ (torch 2.13)
from torch.utils.flop_counter import (  # noqa: F401
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

# ---------------------------------------------------------------------------------------------------- version gate
# The torch every shim below was checked against: torch >= 2.13, < 2.14. On any other torch a shim with a public
# fallback takes torch's own path (:func:`torch_checked` is read at each call, so a test can fake the version).
TORCH_CHECKED = ((2, 13), (2, 14))


def torch_version(version: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of ``version`` (default ``torch.__version__``): ``"2.13.0+cpu"`` -> ``(2, 13)``."""
    major, minor = (version or str(torch.__version__)).split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def torch_checked(version: str | None = None) -> bool:
    """Whether this torch (or ``version``) is within :data:`TORCH_CHECKED`, the versions the shims were checked
    against; outside it every shim with a public fallback uses the fallback."""
    lower, upper = TORCH_CHECKED
    return lower <= torch_version(version) < upper


# ---------------------------------------------------------------------------------------------- nn.Module internals
# Per-module dicts of hooks, checked against torch 2.13 (`torch/nn/modules/module.py`).
MODULE_HOOK_DICTS = (
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
# Hook dicts that hold ids only (a flag per hook), each with the hook dict whose hooks it describes (torch 2.13).
HOOK_FLAG_DICTS = {
    "_forward_hooks_with_kwargs": "_forward_hooks",
    "_forward_hooks_always_called": "_forward_hooks",
    "_forward_pre_hooks_with_kwargs": "_forward_pre_hooks",
}
# The `__dict__` keys of a module's own tensors and children (torch 2.13), for code that copies `__dict__` itself.
MODULE_TENSOR_DICTS = ("_parameters", "_buffers")
MODULE_CHILDREN_DICT = "_modules"


def is_hook_dict_key(key: str, value: Any) -> bool:
    """Whether ``module.__dict__[key]`` is one of torch's per-module hook dicts (``_..._hooks``, torch 2.13;
    broader than :data:`MODULE_HOOK_DICTS`, so that a dict added by a later torch is filtered too)."""
    return key.startswith("_") and key.endswith("hooks") and isinstance(value, dict)


# Process-wide hook dicts in `torch.nn.modules.module`, checked against torch 2.13.
GLOBAL_HOOK_DICTS = (
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
# The global dicts that only flag a hook of `_global_forward_hooks` (dropped with it), torch 2.13.
GLOBAL_HOOK_FLAG_DICTS = ("_global_forward_hooks_with_kwargs", "_global_forward_hooks_always_called")


def torch_global_hook_dicts() -> dict[str, dict[int, Any]]:
    """``{name: dict}`` of torch's process-wide module hook dicts (the live dicts, not copies), torch 2.13."""
    module_globals = sys.modules["torch.nn.modules.module"]
    return {k: getattr(module_globals, k) for k in GLOBAL_HOOK_DICTS if hasattr(module_globals, k)}


def module_parameters(module: nn.Module) -> Any:
    """``module._parameters`` (torch 2.13): the module's own parameter dict, ``None`` entries included (live)."""
    return module._parameters


def module_buffers(module: nn.Module) -> Any:
    """``module._buffers`` (torch 2.13): the module's own buffer dict, ``None`` entries included (live)."""
    return module._buffers


def compiled_inner(model: nn.Module) -> Any:
    """The module a ``torch.compile`` wrapper holds (``OptimizedModule._orig_mod``, torch 2.13), else ``None``."""
    return getattr(model, "_orig_mod", None)


def fsdp_original_class(cls: type) -> type:
    """The user's class of a module that FSDP2's ``fully_shard`` (or ``replicate``) re-classed, else ``cls``.

    Both build ``type("FSDP<Cls>", (FSDPModule, Cls), ...)`` and record ``_orig_cls_mro_index`` (torch 2.13,
    ``torch/distributed/fsdp/_fully_shard/_fully_shard.py``).
    """
    index = getattr(cls, "_orig_cls_mro_index", None)
    made_by_fsdp = "__deepcopy__" in cls.__dict__ and "_orig_cls_mro_index" not in cls.__dict__
    if isinstance(index, int) and made_by_fsdp and 0 < index < len(cls.__mro__):
        return cls.__mro__[index]
    return cls


def is_lazy_shape_hook(hook: Any) -> bool:
    """Whether ``hook`` is a lazy module's shape inference (``LazyModuleMixin._infer_parameters``, torch 2.13)."""
    from torch.nn.modules.lazy import LazyModuleMixin

    return getattr(hook, "__func__", None) is LazyModuleMixin._infer_parameters


def quantized_weight_bias(module: nn.Module) -> tuple[Any, Any]:
    """``(weight, bias)`` of a ``torch.ao.nn.quantized`` linear (its private ``_weight_bias()``, torch 2.13)."""
    return module._weight_bias()  # type: ignore[operator]


# ----------------------------------------------------------------------------------- module classes torch keeps private
def _public_or_private(private: Callable[[], tuple[type, ...]], public: tuple[type, ...]) -> tuple[type, ...]:
    """``private()`` (base classes torch keeps private) within :data:`TORCH_CHECKED`, else ``public``: the public
    subclasses those bases had in torch 2.13 (a newer torch's new subclasses are then missed, never misread)."""
    if torch_checked():
        try:
            return private()
        except AttributeError:  # pragma: no cover - gated: only a torch outside the check gets here
            pass
    return public


def conv_module_types() -> tuple[type, ...]:
    """Every convolution module class: ``nn.modules.conv._ConvNd`` (torch 2.13), else the public ones."""
    public = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return _public_or_private(lambda: (nn.modules.conv._ConvNd,), public)


def norm_module_types() -> tuple[type, ...]:
    """Batch and instance norms: ``nn.modules.batchnorm._NormBase`` (torch 2.13), else the public ones."""
    public = (
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.SyncBatchNorm,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
    )
    return _public_or_private(lambda: (nn.modules.batchnorm._NormBase,), public)


def batch_norm_types() -> tuple[type, ...]:
    """Batch norms (whose training-mode statistics couple a batch): ``nn.modules.batchnorm._BatchNorm``
    (torch 2.13), else the public ones."""
    public = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    return _public_or_private(lambda: (nn.modules.batchnorm._BatchNorm,), public)


def pool_module_types() -> tuple[type, ...]:
    """Max, average and adaptive pooling modules: ``nn.modules.pooling._MaxPoolNd``, ``_AvgPoolNd``,
    ``_AdaptiveAvgPoolNd``, ``_AdaptiveMaxPoolNd`` (torch 2.13), else the public ones."""
    public = tuple(
        getattr(nn, f"{kind}{d}d")
        for kind in ("MaxPool", "AvgPool", "AdaptiveAvgPool", "AdaptiveMaxPool")
        for d in (1, 2, 3)
    )
    pooling = nn.modules.pooling
    return _public_or_private(
        lambda: (pooling._MaxPoolNd, pooling._AvgPoolNd, pooling._AdaptiveAvgPoolNd, pooling._AdaptiveMaxPoolNd),
        public,
    )


def packed_params(module: nn.Module) -> Any:
    """The ``_packed_params`` child of a ``torch.ao.nn.quantized`` Linear (its packed weight and bias, torch 2.13),
    else ``None``; ``None`` on a torch outside :data:`TORCH_CHECKED` (its packed weights are then not counted)."""
    return getattr(module, "_packed_params", None) if torch_checked() else None


def private_torch_functions() -> dict[str, Any]:
    """``{name: function}`` of the private Python bindings of operators that the function vocabulary labels:
    ``torch._grouped_mm``, ``torch._native_multi_head_attention`` (torch 2.13), those this torch has."""
    names = ("_grouped_mm", "_native_multi_head_attention")
    return {name: getattr(torch, name) for name in names if hasattr(torch, name)}


def handle_with_refs(handle: Any, mapped: Any) -> Any:
    """A copy of a hook's ``RemovableHandle`` whose weak references to hook dicts are ``mapped(ref)``
    (``hooks_dict_ref``, ``extra_dict_ref``: public but undocumented fields, torch 2.13)."""
    new = copy.copy(handle)
    new.hooks_dict_ref = mapped(handle.hooks_dict_ref)
    new.extra_dict_ref = tuple(mapped(r) for r in handle.extra_dict_ref)
    return new


# --------------------------------------------------------------------------------------------- dispatch internals
def is_fake_tensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``torch._subclasses.FakeTensor`` (torch 2.13; no data to read)."""
    return isinstance(tensor, torch._subclasses.FakeTensor)


def is_op_overload(func: Any) -> bool:
    """Whether ``func`` is an operator overload (``torch._ops.OpOverload``, torch 2.13), as dispatch modes see."""
    return isinstance(func, torch._ops.OpOverload)


def op_schema(func: Any) -> Any:
    """The ``FunctionSchema`` of an operator overload (``OpOverload._schema``, torch 2.13)."""
    return func._schema


def storage_address(tensor: torch.Tensor) -> int:
    """The address of the StorageImpl behind ``tensor`` (``UntypedStorage._cdata``, torch 2.13): shared by its
    views and ``.data``, stable per storage. Raises for a tensor without storage."""
    return int(tensor.untyped_storage()._cdata)


def profiler_enabled() -> bool:
    """Whether a ``torch.profiler`` / autograd profiler is running in this process (``torch.autograd.
    _profiler_enabled``, torch 2.13): a second one started inside it would take its events. Outside the checked
    versions: ``True`` when the name is gone (the split by operator is then skipped rather than risked)."""
    check = getattr(torch.autograd, "_profiler_enabled", None)
    if check is None:
        return True
    return bool(check())


def set_module_tracker(counter: Any, tracker: Any) -> None:
    """Replace ``FlopCounterMode.mod_tracker`` (torch 2.13; the ModuleTracker that hooks every module) with
    ``tracker``, an object with ``parents`` and ``__enter__``/``__exit__``."""
    counter.mod_tracker = tracker


def decomposes_implicitly(op: Any) -> bool:
    """Whether ``op.decompose()`` would decompose the overload ``op``: it has a CompositeImplicitAutograd kernel,
    in Python (``OpOverload.py_kernels``) or in the dispatcher (torch 2.13, ``OpOverload.decompose``)."""
    key = torch._C.DispatchKey.CompositeImplicitAutograd
    return key in op.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key)


def shape_formula(formula: Any) -> Any:
    """The shape formula inside one of torch's FlopCounterMode formulas, or ``None`` for any other callable.

    torch 2.13 registers most formulas through ``shape_wrapper`` (torch/utils/flop_counter.py): its ``nf`` maps
    ``get_shape`` over ``(args, kwargs, out_val)`` with pytree and calls ``f(*shapes, out_shape=..., **kwargs)``;
    ``functools.wraps`` keeps ``f`` as ``nf.__wrapped__`` and copies its names onto ``nf`` (the code object tells
    them apart; Python >= 3.11, else ``None``: the pytree route).
    """
    code = getattr(formula, "__code__", None)  # nf's own code: functools.wraps copied f's names onto nf itself
    if code is not None and getattr(code, "co_qualname", "") == "shape_wrapper.<locals>.nf":
        return getattr(formula, "__wrapped__", None)
    return None


def mark_raw_formula(formula: Any) -> Any:
    """Mark a FlopCounterMode formula as taking the raw args (``_get_raw``, torch 2.13: tensors, not shapes)."""
    formula._get_raw = True
    return formula


# ------------------------------------------------------------------------------------------------ meta kernels
# Checked against torch 2.13: `aten::convolution` is in the JIT tracer's "do not record" list (it records the
# `aten::_convolution` that the CompositeExplicitAutograd kernel of `convolution` calls). On the meta device a Python
# meta kernel for `convolution` (torch/_meta_registrations.py `meta_conv`) takes precedence over that composite
# kernel, so the trace records no convolution at all and `meta_conv` runs while the tracer is still on, where
# `tensor.shape[i]` is a traced tensor: `torch._check(... == ...)` raises "cond must be a bool, but got a Tensor".
# Older torch is left alone (fvcore then counts convolutional models on their own device).
META_CONV_TRACING = torch_checked()  # at import; the shims read torch_checked() at each call

_aten = torch.ops.aten


def _convolution_through_composite(*args: Any, **kwargs: Any) -> Any:
    # the path a CPU or CUDA tensor takes: convolution -> _convolution, which the tracer records (and switches itself
    # off for, so that the meta kernel of `_convolution` sees plain integer shapes)
    return _aten.convolution.default._op_dk(torch._C.DispatchKey.CompositeExplicitAutograd, *args, **kwargs)


@contextlib.contextmanager
def traceable_meta_convolution() -> Iterator[None]:
    """While active, ``aten::convolution`` on meta tensors runs as on real ones, so a JIT trace records it.

    The meta kernel of ``aten::convolution`` is overridden by one that calls its ``CompositeExplicitAutograd``
    kernel, exactly the route of a CPU tensor; the trace then holds the same ``aten::_convolution`` node with the same
    shapes, and fvcore counts the same MACs as on CPU (``tests/test_fvcore_meta_tracing.py``). The override is
    removed on exit, restoring torch's own meta kernel. Does nothing on torch older than 2.13 (not checked).

    Example::

        with torch.no_grad(), traceable_meta_convolution():
            FlopCountAnalysis(meta_model, meta_input).total()
    """
    if not torch_checked():
        yield
        return
    with _meta_kernel_override("convolution", _convolution_through_composite):
        yield


@contextlib.contextmanager
def _meta_kernel_override(op_name: str, kernel: Callable[..., Any]) -> Iterator[None]:
    """While active, ``kernel`` is the Meta kernel of ``aten::{op_name}``; torch's own is back on exit."""
    with _meta_kernels_override({op_name: kernel}):
        yield


@contextlib.contextmanager
def _meta_kernels_override(kernels: Mapping[str, Callable[..., Any]]) -> Iterator[None]:
    """While active, ``kernels[name]`` is the Meta kernel of ``aten::{name}`` (an overload name such as
    ``"add.Tensor"``); torch's own kernels are back on exit."""
    import torch.library

    keys = {f"aten/{name}/Meta" for name in kernels}
    had_keys = keys & torch.library._impls  # torch 2.13: the set of "namespace/op/key" overridden from Python
    library = torch.library.Library("aten", "IMPL")  # a temporary override, destroyed below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": on purpose, undone below
            for name, kernel in kernels.items():
                library.impl(name, kernel, "Meta")
        yield
    finally:
        library._destroy()  # the dispatcher falls back to torch's own meta kernels
        # _destroy() (and the finalizer that runs again when `library` dies) drops the keys from torch's record of
        # Python overrides, although torch's own meta library still holds them: forget ours, keep torch's on record
        library._op_impls.clear()
        torch.library._impls.update(had_keys)


def torch_meta_kernel(op: Any) -> Callable[..., Any] | None:
    """The Python function torch registers as the Meta kernel of the overload ``op``, or ``None`` when torch leaves
    it to C++ (torch 2.13: ``activate_meta()`` in torch/_meta_registrations.py registers the first of the
    ``torch._decomp.global_decomposition_table`` entries "meta", "post_autograd", "pre_autograd" that holds ``op``,
    over the C++ meta kernel, except for CompositeImplicitAutograd and view operators and a few listed there)."""
    import torch._decomp

    if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd") or op.is_view:
        return None
    for kind in ("meta", "post_autograd", "pre_autograd"):
        kernel = torch._decomp.global_decomposition_table[kind].get(op)
        if kernel is not None:
            return kernel
    return None


_FAST_KERNELS: dict[str, Callable[..., Any]] | None = None


def _fast_kernels() -> dict[str, Callable[..., Any]]:
    """Our shape-only meta kernel per overload name (:data:`lightning_flops._meta_kernels.SHAPE_ONLY_KERNELS`),
    each falling back to torch's Python meta kernel; operators that torch leaves to C++ are not overridden."""
    global _FAST_KERNELS
    if _FAST_KERNELS is None:
        from lightning_flops._meta_kernels import SHAPE_ONLY_KERNELS

        kernels = {}
        for name, factory in SHAPE_ONLY_KERNELS.items():
            packet, _, overload = name.partition(".")
            op = getattr(getattr(_aten, packet, None), overload, None)
            fallback = torch_meta_kernel(op) if op is not None else None
            if fallback is not None:  # the dispatcher names a default overload by its packet alone
                kernels[packet if overload == "default" else name] = factory(fallback)
        _FAST_KERNELS = kernels
    return _FAST_KERNELS


@contextlib.contextmanager
def fast_meta_kernels() -> Iterator[None]:
    """While active, the operators of :data:`lightning_flops._meta_kernels.SHAPE_ONLY_KERNELS` (``addmm``,
    elementwise operators, norms, ``cat``, ...) compute their output on meta tensors from shapes and dtypes directly
    (the same shape, dtype and strides as torch's kernel, ``tests/test_meta_kernels.py``) instead of running torch's
    Python decompositions, 0.2-4 ms a call; anything unusual goes to torch's own kernel.

    Counts do not change: every counter reads shapes, and FlopCounterMode sees each operator above its meta kernel.
    A process-wide override while active, restored on exit. Does nothing on torch older than 2.13 (not checked).
    """
    if not torch_checked():
        yield
        return
    with _meta_kernels_override(_fast_kernels()):
        yield


# (library, where, name, checked against): every private name this module relies on. `where` is a module path, or
# "module:Class" for an attribute of a class, "instance:<what>" for an attribute set on each instance (checked on
# one made in the test), or "source:module" for a name that module's source sets on objects it makes.
# tests/test_compat.py resolves each entry.
PRIVATE_APIS: tuple[tuple[str, str, str, str], ...] = (
    # torch: nn.Module internals
    *(
        ("torch", "instance:nn.Module", name, "torch 2.13")
        for name in (*MODULE_TENSOR_DICTS, MODULE_CHILDREN_DICT, *MODULE_HOOK_DICTS)
    ),
    *(("torch", "torch.nn.modules.module", name, "torch 2.13") for name in GLOBAL_HOOK_DICTS),
    # RemovableHandle's (public, undocumented) weak references to the dicts it removes from, torch 2.13
    ("torch", "instance:RemovableHandle", "hooks_dict_ref", "torch 2.13"),
    ("torch", "instance:RemovableHandle", "extra_dict_ref", "torch 2.13"),
    ("torch", "torch.utils._python_dispatch", "TorchDispatchMode", "torch 2.13"),
    ("torch", "torch.overrides", "TorchFunctionMode", "torch 2.13"),
    *(
        ("torch", "torch.utils.flop_counter", name, "torch 2.13")
        for name in ("flop_registry", "sdpa_flop_count", "sdpa_backward_flop_count")
    ),
    ("torch", "torch.nn.modules.conv", "_ConvNd", "torch 2.13"),
    ("torch", "torch.nn.modules.batchnorm", "_NormBase", "torch 2.13"),
    ("torch", "torch.nn.modules.batchnorm", "_BatchNorm", "torch 2.13"),
    *(
        ("torch", "torch.nn.modules.pooling", name, "torch 2.13")
        for name in ("_MaxPoolNd", "_AvgPoolNd", "_AdaptiveAvgPoolNd", "_AdaptiveMaxPoolNd")
    ),
    ("torch", "instance:QuantizedLinear", "_packed_params", "torch 2.13"),
    ("torch", "torch", "_grouped_mm", "torch 2.13"),
    ("torch", "torch", "_native_multi_head_attention", "torch 2.13"),
    ("torch", "torch._subclasses", "FakeTensor", "torch 2.13"),
    ("torch", "torch._ops", "OpOverload", "torch 2.13"),
    ("torch", "instance:OpOverload", "_schema", "torch 2.13"),
    ("torch", "instance:OpOverload", "_op_dk", "torch 2.13"),
    ("torch", "source:torch.utils.flop_counter", "r = func.decompose(*args, **kwargs)", "torch 2.13"),
    ("torch", "instance:OptimizedModule", "_orig_mod", "torch 2.13"),
    ("torch", "source:torch.distributed.fsdp._fully_shard._fully_shard", "_orig_cls_mro_index", "torch 2.13"),
    ("torch", "torch.nn.modules.lazy:LazyModuleMixin", "_infer_parameters", "torch 2.13"),
    ("torch", "torch.ao.nn.quantized.dynamic:Linear", "_weight_bias", "torch 2.13"),
    ("torch", "torch:UntypedStorage", "_cdata", "torch 2.13"),
    ("torch", "instance:FlopCounterMode", "mod_tracker", "torch 2.13"),
    ("torch", "source:torch.utils.flop_counter", "_get_raw", "torch 2.13"),
    ("torch", "source:torch.utils.flop_counter", "def shape_wrapper(f):\n    @wraps(f)\n    def nf(", "torch 2.13"),
    ("torch", "torch.library", "_impls", "torch 2.13"),
    ("torch", "torch.library:Library", "_destroy", "torch 2.13"),
    ("torch", "instance:torch.library.Library", "_op_impls", "torch 2.13"),
    ("torch", "torch._decomp", "global_decomposition_table", "torch 2.13"),
    ("torch", "torch._C", "_dispatch_has_kernel_for_dispatch_key", "torch 2.13"),
    ("torch", "torch._C", "DispatchKey", "torch 2.13"),
    ("torch", "torch.autograd", "_profiler_enabled", "torch 2.13"),
)
