"""The counting engine: FlopCounterMode's rule with torch's formulas and ours, each FLOP booked to a module and an
operator, every kernel without a formula listed. One engine serves the torch counter (a forward), the training-step
count (forward + backward) and the step observer (a real training step).

- :func:`count` counts ``fn()`` and returns a :class:`Count`;
- :class:`StepCounting` is the same counting as a context manager entered and left by the caller (the step
  observer enters it before a real step and leaves it before the optimizer step).

The formulas are torch's ``flop_registry`` plus :data:`lightning_flops.counters.formulas.FORMULAS`, nothing else.
Every kernel that runs without a formula is checked against the reviewed zero-MAC list
(:mod:`lightning_flops.vocabulary`: views, copies, factories, indexing, reductions, norms, ...; kernels torch tags
``pointwise``; view kernels). Anything else, in any namespace (custom ops from ``torch.library`` included), is listed
as :class:`~lightning_flops.types.Uncounted` with its module and calls: the count is never zero in silence.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_flops._compat import (
    TorchDispatchMode,
    TorchFunctionMode,
    decomposes_implicitly,
    flop_counter_dispatch_mode,
    flop_registry,
    handle_higher_order,
    is_op_overload,
    mark_raw_formula,
    sdpa_backend,
    set_module_tracker,
    shape_formula,
)
from lightning_flops.counters.formulas import FORMULAS
from lightning_flops.counters.tracing import FunctionLabeler, ModuleStack, operator_of_module
from lightning_flops.types import Uncounted
from lightning_flops.vocabulary import NO_FORMULA, REVIEWED_UNCOUNTED, operator_of_aten, zero_mac_reason

__all__ = ["Count", "DeviceKernels", "StepCounting", "count", "flop_counter_mode", "packet_name"]

aten = torch.ops.aten


def packet_name(packet: Any) -> str:
    """``aten._grouped_mm`` -> ``_grouped_mm``; another namespace keeps it: ``quantized::linear_dynamic``."""
    name = str(packet)
    namespace, dot, bare = name.partition(".")
    if not dot:
        return name  # a higher-order operator (flex_attention)
    return bare if namespace == "aten" else f"{namespace}::{bare}"


@dataclass(frozen=True)
class Count:
    """What :func:`count` measured, in FLOPs (2 per MAC, torch's unit).

    Args:
        flops: the total, FlopCounterMode's rule with our formulas.
        own: FLOPs per module name (innermost module, ``""`` the root or outside any module) and operator label.
        calls: calls per labelled torch function (``einsum``, ``linear``, ...).
        uncounted: kernels that ran without a formula and are not on the zero-MAC list.
    """

    flops: int
    own: dict[str, dict[str, int]]
    calls: dict[str, int]
    uncounted: tuple[Uncounted, ...]


class _Tally:
    """The counts, laid out as FlopCounterMode keeps them (``flop_counts``: key -> formula key -> FLOPs), so that
    FlopCounterMode's handling of higher-order operators, which saves, swaps and merges this table, applies to them
    unchanged: ``"Global"`` holds the total by overload packet (as FlopCounterMode's), ``(module name,)`` the FLOPs
    booked to that module by operator label.

    The formulas (``flop_registry``, FlopCounterMode's name for them) are set by the counting mode that uses it.
    """

    def __init__(self) -> None:
        self.flop_registry: dict[Any, Callable[..., int]] = {}
        self.flop_counts: defaultdict[Any, defaultdict[Any, int]] = defaultdict(lambda: defaultdict(int))

    def _count_flops(self, packet: Any, out: Any, args: tuple, kwargs: dict) -> Any:
        """FlopCounterMode's name and contract (its higher-order handling calls it for Triton kernels)."""
        formula = self.flop_registry.get(packet)
        if formula is not None:
            self.flop_counts["Global"][packet] += formula(*args, **kwargs, out_val=out)
        return out

    @property
    def total(self) -> int:
        """FLOPs of every formula key under ``"Global"``."""
        return sum(self.flop_counts["Global"].values()) if "Global" in self.flop_counts else 0

    @property
    def own(self) -> dict[str, dict[str, int]]:
        """FLOPs per module name and operator label."""
        return {key[0]: dict(ops) for key, ops in self.flop_counts.items() if isinstance(key, tuple)}


class _Recorder:
    """Wraps every formula so that each FLOP count is also booked to a module and an operator (in ``tally``)."""

    def __init__(self, stack: ModuleStack | None, labeler: FunctionLabeler) -> None:
        self.stack = stack
        self.labeler = labeler
        self.tally = _Tally()

    def wrap(self, packet: Any, formula: Callable[..., int]) -> Callable[..., int]:
        fallback = operator_of_aten(packet_name(packet))
        on_shapes = shape_formula(formula)

        def recorded(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            shapes = _flat_shapes(args, kwargs, out_val) if on_shapes is not None else None
            if shapes is not None:  # what torch's shape_wrapper computes, without a pytree walk per call
                flops = on_shapes(*shapes[0], out_shape=shapes[2], **shapes[1])
            else:
                flops = formula(*args, out_val=out_val, **kwargs)
            name, module = self.stack.current if self.stack is not None else ("", None)
            operator = self.labeler.label or fallback
            if module is not None and operator in ("linear", "matmul") and operator_of_module(module) == "rnn":
                operator = "rnn"  # LSTM/GRU decomposed into matrix products (meta device, CPU GRU)
            self.tally.flop_counts[(name,)][operator] += flops
            return flops

        return mark_raw_formula(recorded)  # FlopCounterMode passes tensors through; the wrapped formula shapes them

    def mapping(self) -> dict[Any, Callable[..., int]]:
        formulas = {**flop_registry, **FORMULAS}
        return {packet: self.wrap(packet, formula) for packet, formula in formulas.items()}


def _shape_of(value: Any) -> Any:
    """A tensor's shape; a plain list or tuple of tensors and leaves mapped likewise; any other container (nested,
    a dict, a NamedTuple or other tuple subclass: pytree may walk into them) gives ``_NESTED``; a leaf itself."""
    if isinstance(value, torch.Tensor):
        return value.shape
    if type(value) in (list, tuple):
        if any(isinstance(v, (list, tuple, dict)) for v in value):
            return _NESTED
        return type(value)(v.shape if isinstance(v, torch.Tensor) else v for v in value)
    if isinstance(value, (list, tuple, dict)):
        return _NESTED
    return value


_NESTED = object()


def _flat_shapes(args: tuple, kwargs: dict, out: Any) -> tuple[tuple, dict, Any] | None:
    """``(args, kwargs, out)`` with each tensor replaced by its shape, as torch's ``shape_wrapper`` maps them with
    pytree, when nothing is nested deeper than one list or tuple; ``None`` otherwise (then torch's own wrapper runs)."""
    new_args = tuple(_shape_of(a) for a in args)
    new_kwargs = {k: _shape_of(v) for k, v in kwargs.items()}
    new_out = _shape_of(out)
    if _NESTED in new_args or _NESTED in new_kwargs.values() or new_out is _NESTED:
        return None
    return new_args, new_kwargs, new_out


def _zero_reason(func: Any, name: str) -> str | None:
    """Why the kernel ``func`` may count 0 without being listed, or ``None`` when it must be listed."""
    reason = zero_mac_reason(name)
    if reason is not None:
        return reason
    packet = func.overloadpacket
    if any(torch.Tag.pointwise in getattr(packet, overload).tags for overload in packet.overloads()):
        # tags are per overload (add.Tensor is tagged, add.default on Python scalars is not): the family decides
        return "elementwise (torch tags it pointwise): a convention"
    if func.is_view:
        return "view: no arithmetic"
    return None


class _KernelWatch(TorchDispatchMode):
    """Sees every kernel that really runs (below the counting mode's decompositions) and keeps those without a
    formula.

    Entered before the counting mode, so it sits beneath it on the mode stack: the counting mode decomposes what it
    can and every kernel that executes then passes here once. A kernel with no formula that is not on the reviewed
    zero-MAC list is recorded with the innermost module it ran in.
    """

    def __init__(self, stack: ModuleStack | None, counted: set[Any]) -> None:
        super().__init__()
        self.stack = stack
        self.counted = counted
        self.missed: dict[tuple[str, str, str], int] = {}
        self._verdicts: dict[Any, str | None] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if is_op_overload(func):
            packet = func.overloadpacket
            if packet not in self._verdicts:
                name = packet_name(packet)
                if packet in self.counted:
                    self._verdicts[packet] = None
                elif name in REVIEWED_UNCOUNTED:
                    self._verdicts[packet] = f"{NO_FORMULA}: {REVIEWED_UNCOUNTED[name]}"
                else:
                    self._verdicts[packet] = None if _zero_reason(func, name) is not None else NO_FORMULA
            reason = self._verdicts[packet]
            if reason is not None:
                module = self.stack.current[0] if self.stack is not None else ""
                key = (packet_name(packet), module, reason)
                self.missed[key] = self.missed.get(key, 0) + 1
        return func(*args, **kwargs)

    def uncounted(self) -> tuple[Uncounted, ...]:
        """What ran without a formula, one entry per kernel and module, in the order first seen."""
        return tuple(
            Uncounted(operator=op, module=module, calls=n, reason=reason)
            for (op, module, reason), n in self.missed.items()
        )


class _GlobalOnlyTracker:
    """Stands in for FlopCounterMode's ModuleTracker: books every FLOP to ``"Global"``, registers no hooks."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnlyTracker:
        return self

    def __exit__(self, *args: Any) -> None:
        return None


# FlopCounterMode leaves these to the tensor's own policy (nested tensors): it answers NotImplemented (torch 2.13)
_METADATA_OPS = frozenset(
    getattr(packet, overload)
    for packet, overload in (
        (aten.sym_is_contiguous, "default"), (aten.is_contiguous, "default"), (aten.is_contiguous, "memory_format"),
        (aten.is_strides_like_format, "default"), (aten.is_non_overlapping_and_dense, "default"),
        (aten.size, "default"), (aten.sym_size, "default"), (aten.stride, "default"), (aten.sym_stride, "default"),
        (aten.storage_offset, "default"), (aten.sym_storage_offset, "default"), (aten.numel, "default"),
        (aten.sym_numel, "default"), (aten.dim, "default"), (torch.ops.prim.layout, "default"),
    )
    if hasattr(packet, overload)
)  # fmt: skip

_PRIM_DEVICE = torch.ops.prim.device.default


#: FlopCounterMode's own dispatch mode (torch 2.13), whose handling of higher-order operators ours inherits; on
#: another torch the engine counts with the public FlopCounterMode itself (:func:`_counting_mode`)
_FLOP_COUNTER_DISPATCH_MODE = flop_counter_dispatch_mode() or TorchDispatchMode


class _ReferenceMode(_FLOP_COUNTER_DISPATCH_MODE):  # type: ignore[misc,valid-type]
    """FlopCounterMode's counting rule, as ``_FlopCounterMode.__torch_dispatch__`` applies it (torch 2.13), at a
    fraction of its cost per operator (measured: 117 us a call there, most of the time of counting small modules).

    The rule, unchanged: the metadata queries FlopCounterMode skips are left alone; every other operator is first
    decomposed when it has a CompositeImplicitAutograd kernel (re-entering this mode, so that its parts are counted),
    else run, and counted with the formula of its overload packet when the registry has one. What is cheaper: no
    pytree walk, no torch._dynamo guard around each call, and whether an operator decomposes is looked up once.
    ``tests/test_reference_mode.py`` checks that totals equal FlopCounterMode's on every operator and model tested.

    A higher-order operator goes to FlopCounterMode's own handling, inherited (``torch.cond``: both branches run
    under this mode and their counts are merged as FlopCounterMode merges them; a Triton kernel: its formula; any
    other: ``NotImplemented``, torch then raises as it does under FlopCounterMode). Nothing is raised through the
    user's code to count again: ``fn`` runs once.

    Args:
        registry: formula per overload packet, each called as FlopCounterMode calls it:
            ``formula(*args, **kwargs, out_val=out)``.
        tally: where the counts go (FlopCounterMode's ``flop_counts`` layout).
    """

    supports_higher_order_operators = True  # so that they reach __torch_dispatch__

    def __init__(self, registry: dict[Any, Callable[..., int]], tally: _Tally) -> None:
        TorchDispatchMode.__init__(self)
        tally.flop_registry = registry
        self.counter = tally  # FlopCounterMode's mode keeps its counter here; the inherited handling reads it
        self._decomposes: dict[Any, bool] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA_OPS:
            return NotImplemented
        if not is_op_overload(func):
            return handle_higher_order(self, func, types, args, kwargs)
        if func is not _PRIM_DEVICE:
            decomposes = self._decomposes.get(func)
            if decomposes is None:
                decomposes = self._decomposes[func] = decomposes_implicitly(func)
            if decomposes:
                with self:
                    result = func.decompose(*args, **kwargs)
                if result is not NotImplemented:
                    return result
        return self.counter._count_flops(func.overloadpacket, func(*args, **kwargs), args, kwargs)

    def get_total_flops(self) -> int:
        """FLOPs counted so far (FlopCounterMode's name for it)."""
        return self.counter.total


def flop_counter_mode(mapping: dict[Any, Callable[..., int]]) -> Any:
    """FlopCounterMode with ``mapping`` as its formulas and no module tracker (a total only)."""
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    # A private attribute (lightning_flops._compat.set_module_tracker): FlopCounterMode's ModuleTracker puts
    # grad hooks on module inputs and raises "Expected gradient function to be set" when a module gets a view of a
    # parameter made under no_grad (`self.query.expand(...)`). Its per-module table is unused (ModuleStack books
    # modules), and the total it keeps under "Global" is the same without it.
    set_module_tracker(counter, _GlobalOnlyTracker())
    return counter


def count(fn: Callable[[], Any], model: torch.nn.Module | None = None) -> Count:
    """Run ``fn()`` and count it: FlopCounterMode's rule with torch's formulas and ours.

    Counts with :class:`_ReferenceMode` (FlopCounterMode's rule, cheaper per operator; higher-order operators as
    FlopCounterMode handles them); on a torch other than 2.13, with FlopCounterMode itself. ``fn`` runs once.

    Args:
        fn: the work to count (a forward call, or forward and backward of a training step).
        model: when given, FLOPs and uncounted kernels are booked to its ``named_modules()`` names; otherwise all
            to the root ``""``.

    Example::

        result = count(lambda: model(x), model)
        result.flops, result.own["fc"]["linear"], result.uncounted
    """
    labeler = FunctionLabeler()
    stack = ModuleStack(model) if model is not None else None
    step = StepCounting(stack, recorder=_Recorder(stack, labeler))
    with stack if stack is not None else contextlib.nullcontext(), labeler, step:
        fn()
    return Count(step.flops, step.recorder.tally.own, labeler.calls, step.uncounted())


def _counting_mode(mapping: dict[Any, Callable[..., int]], tally: _Tally) -> Any:
    """The engine's counting mode on torch 2.13; FlopCounterMode itself on any other torch."""
    if flop_counter_dispatch_mode() is None:  # read at each count: a test may fake the torch version
        return flop_counter_mode(mapping)
    return _ReferenceMode(mapping, tally)


def _sdpa_arguments(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[Any, ...]:
    """``F.scaled_dot_product_attention``'s arguments, bound by name."""
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa


class DeviceKernels(TorchFunctionMode):
    """While tensors are on meta, runs the backend-dependent kernels that ``device`` would run, so that a count on
    meta is the count of that device's step.

    On meta, ``F.scaled_dot_product_attention`` picks its math fallback (``bmm``, softmax, ``bmm``); on CPU it picks
    ``_scaled_dot_product_flash_attention_for_cpu`` where it can, whose backward recomputes ``QK^T`` (torch's formula
    counts it). This mode asks which backend ``device`` picks for these shapes
    (:func:`~lightning_flops._compat.sdpa_backend`) and, for CPU flash, calls that kernel on the meta tensors, as the
    CPU's own ``scaled_dot_product_attention`` does (a boolean mask made additive first). Anything else runs as it is.
    A mode of the counting thread only.

    Args:
        device: the device whose kernels to run (the model's own); only ``cpu`` changes anything today.

    Example::

        with DeviceKernels(torch.device("cpu")):
            meta_model(meta_input).sum().backward()  # attention as the CPU runs it
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is _SDPA and self.device.type == "cpu":
            query, key, value, mask, dropout_p, is_causal, scale, gqa = _sdpa_arguments(*args, **kwargs)
            if isinstance(query, torch.Tensor) and query.device.type == "meta":
                backend = sdpa_backend(self.device, query, key, value, mask, dropout_p, is_causal, scale, gqa)
                if backend == "FLASH_ATTENTION":
                    if mask is not None and mask.dtype == torch.bool:  # as the CPU kernel's caller converts it
                        mask = torch.zeros_like(mask, dtype=query.dtype).masked_fill(~mask, float("-inf"))
                    flash = aten._scaled_dot_product_flash_attention_for_cpu
                    return flash(query, key, value, dropout_p, is_causal, attn_mask=mask, scale=scale)[0]
        return func(*args, **kwargs)


_SDPA = torch.nn.functional.scaled_dot_product_attention


class StepCounting:
    """The engine's counting as a context manager: every kernel run between ``__enter__`` and ``__exit__`` is
    counted with torch's formulas and ours, over the kernel watch; one total, no hook of its own.

    Args:
        stack: the module stack uncounted kernels are booked to (``None``: module ``""``); entered by the caller.
        device: when the step runs on meta, the device whose backend-dependent kernels to count
            (:class:`DeviceKernels`); ``None`` counts the kernels as they run.
        recorder: what also books each FLOP to a module and an operator (:func:`count`); by default a recorder
            that books nothing beyond the total.

    Example::

        with StepCounting() as step:
            model(x).sum().backward()
        step.flops, step.uncounted()
    """

    def __init__(
        self, stack: ModuleStack | None = None, device: torch.device | None = None, recorder: _Recorder | None = None
    ) -> None:
        self.recorder = recorder if recorder is not None else _Recorder(None, FunctionLabeler())
        mapping = self.recorder.mapping()
        self.watch = _KernelWatch(stack, set(mapping))
        self.counter = _counting_mode(mapping, self.recorder.tally)
        self.kernels = DeviceKernels(device) if device is not None else contextlib.nullcontext()
        self._entered = contextlib.ExitStack()

    def __enter__(self) -> StepCounting:
        with contextlib.ExitStack() as entering:  # what entered is left again if a later one fails
            entering.enter_context(self.kernels)
            entering.enter_context(self.watch)  # before the counting mode, so that it sits beneath it
            entering.enter_context(self.counter)
            self._entered = entering.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._entered.__exit__(*exc)  # counting mode, kernel watch, device kernels: the reverse order

    @property
    def flops(self) -> int:
        """FLOPs counted so far."""
        return int(self.counter.get_total_flops())

    def uncounted(self) -> tuple[Uncounted, ...]:
        """Kernels that ran without a formula and are not on the zero-MAC list."""
        return self.watch.uncounted()
