"""torch's private APIs that lightning-flops touches (checked against torch 2.13): module and hook internals,
dispatch internals, FlopCounterMode's formula table, meta kernels.

* torch modules: hook dicts (:data:`MODULE_HOOK_DICTS`, :func:`torch_global_hook_dicts`), tensor dicts
  (:func:`module_parameters`, :func:`module_buffers`), :func:`compiled_inner`, :func:`fsdp_original_class`,
  :func:`is_lazy_shape_hook`, :func:`quantized_weight_bias`.
* torch dispatch: :data:`TorchDispatchMode`, :func:`is_fake_tensor`, :func:`is_op_overload`, :func:`op_schema`,
  :func:`storage_address`; FlopCounterMode: :func:`set_module_tracker`, :func:`mark_raw_formula`,
  :func:`decomposes_implicitly`, :func:`shape_formula`, :func:`flop_counter_dispatch_mode` and
  :func:`handle_higher_order` (how FlopCounterMode counts higher-order operators, inherited),
  :func:`sdpa_backend` (the attention kernel a device would pick).
* thread-local counting modes (nothing registered with the dispatcher, nothing another thread sees):
  :func:`traceable_meta_convolution` (a function mode that lets ``torch.jit.trace``, fvcore, record convolutions on
  the meta device), :func:`fast_meta_kernels` (a dispatch mode answering with the shape-only kernels of
  :mod:`lightning_flops._meta_kernels`), :func:`on_this_thread` / :func:`carried_modes` (into fvcore's trace thread),
  :func:`torch_meta_kernel`.
* version gate: :func:`torch_checked` (``torch>=2.13,<2.14``); outside it every shim with a public fallback takes it.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.autograd import DeviceType  # noqa: F401  (torch 2.13: profiler events' device, not in __all__)
from torch.overrides import TorchFunctionMode  # torch 2.13: not in torch.overrides.__all__
from torch.utils._python_dispatch import TorchDispatchMode  # torch 2.13: base of our dispatch modes

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
    them apart; Python >= 3.11, else ``None``: the pytree route). ``None`` outside :data:`TORCH_CHECKED` too: the
    formula is then called as FlopCounterMode calls it.
    """
    if not torch_checked():
        return None
    code = getattr(formula, "__code__", None)  # nf's own code: functools.wraps copied f's names onto nf itself
    if code is not None and getattr(code, "co_qualname", "") == "shape_wrapper.<locals>.nf":
        return getattr(formula, "__wrapped__", None)
    return None


def mark_raw_formula(formula: Any) -> Any:
    """Mark a FlopCounterMode formula as taking the raw args (``_get_raw``, torch 2.13: tensors, not shapes)."""
    formula._get_raw = True
    return formula


def flop_counter_dispatch_mode() -> type | None:
    """FlopCounterMode's own dispatch mode class (``torch.utils.flop_counter._FlopCounterMode``, torch 2.13), or
    ``None`` on another torch (then callers count with the public ``FlopCounterMode`` itself).

    A subclass inherits how FlopCounterMode handles higher-order operators (``_handle_higher_order_ops``:
    ``torch.cond`` runs both branches under the mode and merges their counts, Triton kernels use the Triton formula
    registry, any other answers ``NotImplemented``), reading and writing ``self.counter.flop_counts`` (module ->
    formula key -> FLOPs, ``"Global"`` the total) and calling ``self.counter._count_flops(packet, out, args,
    kwargs)``, as FlopCounterMode's own mode does.
    """
    if not torch_checked():
        return None
    from torch.utils import flop_counter

    mode = getattr(flop_counter, "_FlopCounterMode", None)
    handles = callable(getattr(mode, "_handle_higher_order_ops", None))
    return mode if handles and callable(getattr(mode, "_execute_with_isolated_flop_counting", None)) else None


def handle_higher_order(mode: Any, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
    """Count the higher-order operator ``func`` as FlopCounterMode does: ``mode`` is an instance of a subclass of
    :func:`flop_counter_dispatch_mode` (its ``_handle_higher_order_ops``, torch 2.13)."""
    return mode._handle_higher_order_ops(func, types, args, kwargs)


def sdpa_backend(device: torch.device, query: Any, key: Any, value: Any, attn_mask: Any = None,
                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                 enable_gqa: bool = False) -> str | None:  # fmt: skip
    """The backend ``F.scaled_dot_product_attention`` picks on ``device`` for tensors shaped as these (meta ones
    included): ``"FLASH_ATTENTION"``, ``"MATH"``, ... (``torch._fused_sdp_choice``, torch 2.13), or ``None`` on a torch
    outside :data:`TORCH_CHECKED` or when it cannot tell.

    The choice reads shapes, dtypes, strides of the last dimension and flags only, so it is asked on stand-ins on
    ``device`` of the same shape and dtype that hold one row of memory each (every other stride 0).
    """
    if not torch_checked() or not hasattr(torch, "_fused_sdp_choice"):
        return None

    def stand_in(tensor: Any) -> Any:
        if not isinstance(tensor, torch.Tensor):
            return tensor
        last = tensor.stride(-1) if tensor.dim() else 1
        room = (tensor.shape[-1] - 1) * last + 1 if tensor.dim() and tensor.shape[-1] else 1
        with torch._C.DisableTorchFunction():
            base = torch.empty(room, dtype=tensor.dtype, device=device)
            return base.as_strided(tensor.shape, (0,) * (tensor.dim() - 1) + (last,) if tensor.dim() else ())

    try:
        from torch.nn.attention import SDPBackend

        # no torch-function mode may move the stand-ins (the counting thread's fixed-devices-on-meta mode would)
        with torch.no_grad(), torch._C.DisableTorchFunction():
            choice = torch._fused_sdp_choice(
                stand_in(query), stand_in(key), stand_in(value), stand_in(attn_mask), dropout_p, is_causal,
                scale=scale, enable_gqa=enable_gqa,
            )  # fmt: skip
        return SDPBackend(choice).name
    except (RuntimeError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ meta kernels
META_CONV_TRACING = torch_checked()  # at import; the shims read torch_checked() at each call

_aten = torch.ops.aten


# ------------------------------------------------------------------------------- thread-local counting modes
# What a count installs lives on the counting thread only: dispatch and function modes are per thread in torch
# (torch 2.13: the mode stacks are thread-local state, carried by the autograd engine into its own backward work).
# Nothing is registered with the dispatcher, so another thread's meta or FakeTensor work runs torch's own kernels.
_LOCAL = threading.local()


def _active_factories() -> list[Callable[[], contextlib.AbstractContextManager[Any]]]:
    factories = getattr(_LOCAL, "factories", None)
    if factories is None:
        factories = _LOCAL.factories = []
    return factories


@contextlib.contextmanager
def on_this_thread(factory: Callable[[], contextlib.AbstractContextManager[Any]]) -> Iterator[None]:
    """Enter ``factory()`` (a mode) on this thread and record it, so that :func:`carried_modes` enters the same in a
    worker thread this thread waits for (fvcore's trace runs on a fresh stack). Does nothing outside
    :data:`TORCH_CHECKED` (the modes stand in for torch 2.13's own paths; another torch takes those)."""
    if not torch_checked():
        yield
        return
    factories = _active_factories()
    factories.append(factory)
    try:
        with factory():
            yield
    finally:
        factories.remove(factory)


def carried_modes() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """A context manager factory that enters, on another thread, the carried counting modes active on this one
    (outermost first, as here); nothing when none is active."""
    factories = tuple(_active_factories())

    @contextlib.contextmanager
    def enter() -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for factory in factories:
                stack.enter_context(on_this_thread(factory))
            yield

    return enter


class _KernelMode(TorchDispatchMode):
    """Answers the operators of ``kernels`` with its kernel (each takes torch's operator as its fallback) and runs
    every other operator as it is. A dispatch mode: it sees the operators of this thread only."""

    def __init__(self, kernels: Mapping[Any, Callable[..., Any]]) -> None:
        super().__init__()
        self.kernels = kernels

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch 2.13 wraps a mode's __torch_dispatch__ in torch._disable_dynamo unless this says False: ~2 us on
        # every operator of the counting thread; nothing here is compiled (the forward counted is the eager one)
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kernel = self.kernels.get(func)
        if kernel is None or types or not _on_meta(args):  # a tensor subclass (FakeTensor, DTensor) keeps its rules
            return func(*args, **(kwargs or {}))
        return kernel(*args, **(kwargs or {}))


def _on_meta(args: tuple) -> bool:
    """Whether the dispatcher would run the Meta kernel for these arguments: one of the tensors (or of a list of
    tensors, ``cat``'s) is on meta. A CPU-only call (thop's arithmetic on its own counters) runs as it is."""
    first = args[0] if args else None
    if isinstance(first, torch.Tensor) and first.is_meta:
        return True
    for arg in args:
        if isinstance(arg, torch.Tensor):
            if arg.is_meta:
                return True
        elif isinstance(arg, (list, tuple)) and any(isinstance(t, torch.Tensor) and t.is_meta for t in arg):
            return True
    return False


_CONV_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_TRANSPOSE_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}


def _per_dim(value: Any, dims: int) -> list[int]:
    return [value] * dims if isinstance(value, int) else list(value)


def _convolution_as_on_cpu(transposed: bool, args: tuple, kwargs: dict) -> Any:
    """``F.conv{N}d`` / ``F.conv_transpose{N}d`` as torch 2.13 runs them on a CPU tensor: ``aten::_convolution``
    (which the tracer records, switching itself off for its meta kernel), the unbatched input given a batch of one.
    ``None`` for what that route does not cover (string padding): the caller then runs the function itself."""
    call = dict(_CONV_DEFAULTS)
    call.update(zip(_CONV_TRANSPOSE_ARGUMENTS if transposed else _CONV_ARGUMENTS, args, strict=False))
    call.update(kwargs)
    if isinstance(call["padding"], str):
        return None
    dims = call["weight"].dim() - 2
    unbatched = call["input"].dim() == dims + 1
    batched = call["input"].unsqueeze(0) if unbatched else call["input"]
    out = torch._convolution(
        batched,
        call["weight"],
        call["bias"],
        _per_dim(call["stride"], dims),
        _per_dim(call["padding"], dims),
        _per_dim(call["dilation"], dims),
        transposed,
        _per_dim(call["output_padding"], dims),
        call["groups"],
        False,  # benchmark, deterministic, cudnn_enabled, allow_tf32: as the CPU route passes them by default
        False,
        True,
        True,
    )
    return out.squeeze(0) if unbatched else out


class _TraceableConvolution(TorchFunctionMode):
    """Runs the convolution functions on meta tensors through ``aten::_convolution``, as on a CPU tensor."""

    def __init__(self) -> None:
        super().__init__()
        functional = torch.nn.functional
        self.transposed = {f: False for f in (functional.conv1d, functional.conv2d, functional.conv3d)}
        self.transposed.update(
            {f: True for f in (functional.conv_transpose1d, functional.conv_transpose2d, functional.conv_transpose3d)}
        )

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        transposed = self.transposed.get(func)
        if transposed is not None and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            out = _convolution_as_on_cpu(transposed, args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def traceable_meta_convolution() -> contextlib.AbstractContextManager[None]:
    """While active on this thread, convolutions on meta tensors run as on real ones, so a JIT trace records them.

    Checked against torch 2.13: ``aten::convolution`` is in the JIT tracer's "do not record" list (it records the
    ``aten::_convolution`` that the CompositeExplicitAutograd kernel of ``convolution`` calls). On the meta device a
    Python meta kernel for ``convolution`` takes precedence over that composite kernel, so the trace records no
    convolution and ``meta_conv`` runs while the tracer is still on, where ``tensor.shape[i]`` is a traced tensor:
    "cond must be a bool, but got a Tensor". A function mode on this thread sends ``F.conv{N}d`` and
    ``F.conv_transpose{N}d`` of meta tensors to ``torch._convolution``, exactly the route of a CPU tensor: the trace
    holds the same ``aten::_convolution`` node with the same shapes, and fvcore counts the same MACs as on CPU
    (``tests/test_fvcore_meta_tracing.py``). A function mode, not a dispatch mode (one of those active while
    ``torch.jit.trace`` runs cuts the trace off from its inputs); nothing is registered with the dispatcher. Does
    nothing outside :data:`TORCH_CHECKED`.

    Example::

        with torch.no_grad(), traceable_meta_convolution():
            FlopCountAnalysis(meta_model, meta_input).total()
    """
    return on_this_thread(_TraceableConvolution)


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


_FAST_KERNELS: dict[Any, Callable[..., Any]] | None = None


def _fast_kernels() -> dict[Any, Callable[..., Any]]:
    """Our shape-only meta kernel per operator overload (:data:`lightning_flops._meta_kernels.SHAPE_ONLY_KERNELS`),
    each falling back to the operator itself (torch's own kernel); operators whose meta kernel torch leaves to C++
    (fast already) are not answered."""
    global _FAST_KERNELS
    if _FAST_KERNELS is None:
        from lightning_flops._meta_kernels import SHAPE_ONLY_KERNELS

        kernels = {}
        for name, factory in SHAPE_ONLY_KERNELS.items():
            packet, _, overload = name.partition(".")
            op = getattr(getattr(_aten, packet, None), overload, None)
            if op is not None and torch_meta_kernel(op) is not None:
                kernels[op] = factory(op)
        _FAST_KERNELS = kernels
    return _FAST_KERNELS


def _fast_kernel_mode() -> _KernelMode:
    return _KernelMode(_fast_kernels())


def fast_meta_kernels() -> contextlib.AbstractContextManager[None]:
    """While active on this thread, the operators of :data:`lightning_flops._meta_kernels.SHAPE_ONLY_KERNELS`
    (``addmm``, elementwise operators, norms, ``cat``, ...) compute their output on meta tensors from shapes and
    dtypes directly (the same shape, dtype and strides as torch's kernel, ``tests/test_meta_kernels.py``) instead of
    running torch's Python decompositions, 0.2-4 ms a call; anything unusual goes to torch's own kernel.

    A dispatch mode on this thread (below the counting modes entered after it, which see every operator first),
    carried into fvcore's trace thread (``torch.jit._get_trace_graph`` records the same nodes under it, 4x faster
    on meta): nothing is registered with the dispatcher, so other threads' meta and FakeTensor work runs torch's
    kernels.
    Counts do not change: every counter reads shapes. Does nothing outside :data:`TORCH_CHECKED`.
    """
    return on_this_thread(_fast_kernel_mode)  # carried into fvcore's trace thread: it records the same nodes


def fast_meta_kernels_active() -> bool:
    """Whether :func:`fast_meta_kernels` is active on this thread."""
    return _fast_kernel_mode in _active_factories()


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
    ("torch", "torch.utils._python_dispatch:TorchDispatchMode", "_should_skip_dynamo", "torch 2.13"),
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
    ("torch", "source:torch.utils.flop_counter", "r = func.decompose(*args, **kwargs)", "torch 2.13"),
    ("torch", "instance:OptimizedModule", "_orig_mod", "torch 2.13"),
    ("torch", "source:torch.distributed.fsdp._fully_shard._fully_shard", "_orig_cls_mro_index", "torch 2.13"),
    ("torch", "torch.nn.modules.lazy:LazyModuleMixin", "_infer_parameters", "torch 2.13"),
    ("torch", "torch.ao.nn.quantized.dynamic:Linear", "_weight_bias", "torch 2.13"),
    ("torch", "torch:UntypedStorage", "_cdata", "torch 2.13"),
    ("torch", "instance:FlopCounterMode", "mod_tracker", "torch 2.13"),
    ("torch", "torch.utils.flop_counter", "_FlopCounterMode", "torch 2.13"),
    ("torch", "torch", "_fused_sdp_choice", "torch 2.13"),
    ("torch", "torch._C", "DisableTorchFunction", "torch 2.13"),
    ("torch", "torch.utils.flop_counter:_FlopCounterMode", "_handle_higher_order_ops", "torch 2.13"),
    ("torch", "torch.utils.flop_counter:_FlopCounterMode", "_execute_with_isolated_flop_counting", "torch 2.13"),
    ("torch", "source:torch.utils.flop_counter", "_get_raw", "torch 2.13"),
    ("torch", "source:torch.utils.flop_counter", "def shape_wrapper(f):\n    @wraps(f)\n    def nf(", "torch 2.13"),
    ("torch", "torch._decomp", "global_decomposition_table", "torch 2.13"),
    ("torch", "torch._C", "_dispatch_has_kernel_for_dispatch_key", "torch 2.13"),
    ("torch", "torch._C", "DispatchKey", "torch 2.13"),
    ("torch", "torch.autograd", "_profiler_enabled", "torch 2.13"),
    ("torch", "torch.autograd", "DeviceType", "torch 2.13"),
)
