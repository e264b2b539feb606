"""Parameter counts of a model: total and trainable (packed quantized weights included), per module, the ones the
operators of a forward read (active), and a fingerprint of the parameters' names, shapes and dtypes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lightning_flops._compat import TorchDispatchMode, is_fake_tensor, is_op_overload, packed_params
from lightning_flops.report import ParamCount

__all__ = [
    "SLICE_READS",
    "ParameterReads",
    "active_parameters",
    "active_per_token",
    "model_fingerprint",
    "own_parameters",
    "param_count",
    "read_parameters",
]

aten = torch.ops.aten

#: ``{parameter name: indices along dim 0 that were read, or None for the whole tensor}``.
Reads = dict[str, "set[int] | None"]
#: ``rule(args, kwargs, position) -> indices along dim 0 read, or None (the whole tensor)``: how an operator reads
#: only some slices of a parameter it gets whole as argument ``position`` (a fused-experts tensor ``[E, ...]``).
SliceRule = Callable[[tuple, dict, int], "Iterable[int] | None"]


def param_count(model: nn.Module) -> ParamCount:
    """Parameter elements of ``model`` (shared weights once) and of those with ``requires_grad``.

    Parameters of lazy modules that are not initialized yet are not counted. Quantized Linear layers
    (``torch.ao.quantization.quantize_dynamic``) keep their weight and bias packed, outside ``model.parameters()``:
    their elements are counted in ``total`` and ``packed`` (never trainable).
    """
    from lightning_flops.counters.torch_dispatch import packed_parameter_count

    params = [p for p in model.parameters() if not isinstance(p, nn.parameter.UninitializedParameter)]
    packed = packed_parameter_count(model)
    return ParamCount(
        total=sum(p.numel() for p in params) + packed,
        trainable=sum(p.numel() for p in params if p.requires_grad),
        packed=packed,
    )


def active_parameters(model: nn.Module, called: set[str], reads: Reads | None = None) -> int:
    """Parameter elements the profiled call used (shared weights once).

    With ``reads`` (from :class:`ParameterReads`): the parameters an operator read, a parameter read in slices along
    dim 0 (the experts of a fused-experts tensor) counting those slices only. Without: the parameters held directly by
    the modules named in ``called`` (a weight used without calling its module is missed). Either way a quantized
    Linear that ran counts its packed weight and bias (held by its ``_packed_params`` child, not a parameter).

    Args:
        model: the profiled model (or a copy with the same parameter names).
        called: ``named_modules()`` names of the modules that ran.
        reads: ``{parameter name: slices read or None}``, or ``None`` when the reads were not recorded.
    """
    from lightning_flops.counters.torch_dispatch import packed_parameter_count

    total = 0
    if reads is not None:
        for name, param in model.named_parameters():
            if name in reads and not isinstance(param, nn.parameter.UninitializedParameter):
                slices = reads[name]
                total += param.numel() if slices is None else param.numel() // param.shape[0] * len(slices)
    seen: set[int] = set()
    for name, module in model.named_modules():
        if name in called:
            if reads is None:
                for param in module.parameters(recurse=False):
                    if id(param) not in seen:
                        seen.add(id(param))
                        total += param.numel()
            packed = packed_params(module)
            if isinstance(packed, nn.Module):
                total += packed_parameter_count(packed)
    return total


# ------------------------------------------------------------------------------------------- parameter reads
def _readable(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.device.type != "meta" and not is_fake_tensor(tensor)


def _select_slices(args: tuple, kwargs: dict, position: int) -> Iterable[int] | None:
    # aten::select.int(Tensor(a) self, int dim, SymInt index): one slice when dim 0 of the parameter is selected
    tensor, dim, index = args[0], args[1], args[2]
    if position != 0 or dim not in (0, -tensor.dim()) or not isinstance(index, int):
        return None
    return (index % tensor.shape[0],)


def _index_slices(args: tuple, kwargs: dict, position: int) -> Iterable[int] | None:
    # aten::index.Tensor(Tensor self, Tensor?[] indices): rows of dim 0 picked by one integer or boolean index
    indices = args[1]
    if position != 0 or not indices or indices[0] is None or any(i is not None for i in indices[1:]):
        return None
    index = indices[0]
    if not _readable(index) or index.is_floating_point():
        return None
    if index.dtype == torch.bool:
        index = index.nonzero()[:, 0] if index.dim() else index.new_zeros(0, dtype=torch.long)
    size = args[0].shape[0]
    return {int(i) % size for i in index.flatten().tolist()}


def _grouped_mm_slices(args: tuple, kwargs: dict, position: int) -> Iterable[int] | None:
    # aten::_grouped_mm(Tensor self [M, K], Tensor mat2 [G, K, N], Tensor? offs): the groups (experts) that got rows
    offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
    if position != 1 or args[0].dim() != 2 or args[1].dim() != 3 or not _readable(offs):
        return None
    ends = [0, *offs.tolist()]
    return {g for g in range(len(ends) - 1) if ends[g + 1] > ends[g]}


#: Operators that read only some slices along dim 0 of a parameter they get whole (the experts of a fused-experts
#: tensor that received tokens), by overload packet. A parameter reached through views that keep its dim 0
#: (``transpose(1, 2)``, ``detach``) counts as whole for these rules too. Other operators read the whole tensor.
SLICE_READS: dict[Any, SliceRule] = {
    aten.select: _select_slices,
    aten.index: _index_slices,
    **({aten._grouped_mm: _grouped_mm_slices} if hasattr(aten, "_grouped_mm") else {}),
}


def _balanced_slices(func: Any, args: tuple, position: int) -> Iterable[int] | None:
    """A meta ``_grouped_mm`` under ``moe_routing="balanced"``: ``min(rows, experts)`` experts receive rows."""
    from lightning_flops.moe import balanced_experts

    if func.overloadpacket is not getattr(aten, "_grouped_mm", None) or position != 1:
        return None
    if args[0].dim() != 2 or args[1].dim() != 3:
        return None
    return range(balanced_experts(args[0].shape[0], args[1].shape[0]))


def _slice_rows(func: Any, args: tuple, kwargs: dict, position: int) -> int | None:
    """Rows of activations that met the slices of a parameter read by ``func`` at argument ``position``: the rows a
    ``_grouped_mm`` routed (all of them on meta), or the rows of ``mm`` / ``addmm`` with a selected expert."""
    packet = func.overloadpacket
    if packet is getattr(aten, "_grouped_mm", None) and position == 1 and args[0].dim() == 2:
        offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
        return int(offs[-1]) if _readable(offs) and offs.numel() else int(args[0].shape[0])
    if packet is aten.mm and position == 1:
        return int(args[0].shape[0])
    if packet is aten.addmm and position == 2:
        return int(args[1].shape[0])
    return None


def _keeps_dim0(func: Any, args: tuple, out: Any) -> bool:
    """Whether the view ``func`` keeps dim 0 of its input as its own dim 0 (same size, not moved)."""
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or args[0].dim() == 0 or out.shape[0] != args[0].shape[0]:
        return False
    packet = func.overloadpacket
    if packet in (aten.transpose, aten.swapaxes, aten.swapdims):
        return all(d % args[0].dim() != 0 for d in args[1:3])
    if packet is aten.permute:
        return args[1][0] % args[0].dim() == 0
    return packet in (aten.detach, aten.alias, aten.view, aten._unsafe_view, aten._reshape_alias, aten.as_strided)


class ParameterReads(TorchDispatchMode):
    """Records which parameters of ``model`` the operators of a forward read, by tensor identity.

    A view of a parameter (``weight.t()``, ``experts[3]``) reads nothing itself: the operator that consumes it reads
    the parameter (for ``select`` on dim 0, only that slice). Operators in :data:`SLICE_READS` read slices of a
    parameter along dim 0. Entered before a counter's own dispatch modes, it sits beneath them and sees the kernels
    that run after their decompositions. Thread-local like every dispatch mode; nothing process-wide.

    It also keeps, per parameter read in slices, the rows of activations that met those slices (:attr:`rows`: the
    rows a ``_grouped_mm`` routed, or the rows of a matrix product with a selected expert): with the number of token
    positions they give the experts one token passes through (:func:`active_per_token`).

    Args:
        model: the module whose ``named_parameters()`` are watched (the copy a counter runs on).
        routing: ``"balanced"``: a meta ``_grouped_mm`` (group sizes unknown) reads ``min(rows, experts)`` experts
            (:mod:`lightning_flops.moe`); ``None``: it reads the whole tensor.

    Example::

        with ParameterReads(model) as reads:
            model(x)
        reads.read  # {"encoder.weight": None, "experts.gate_up_proj": {0, 3}, ...}
    """

    def __init__(self, model: nn.Module, routing: str | None = None) -> None:
        super().__init__()
        self.routing = routing
        self.read: Reads = {}
        self.rows: dict[str, int] = {}  # parameter read in slices -> rows that met its slices (None: unknown)
        self.rows_unknown: set[str] = set()
        self.failed: str | None = None  # why recording stopped (then the reads are incomplete)
        # id of a parameter or of a view of one -> (parameter name, slices or None, dim 0 is the parameter's whole
        # dim 0); views are kept alive so that their ids are not reused
        self._sources: dict[int, tuple[str, frozenset[int] | None, bool]] = {
            id(p): (name, None, True) for name, p in model.named_parameters()
        }
        self._alive: list[torch.Tensor] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.failed is not None:
            return out
        sources = self._sources
        for value in args:  # the fast path: most operators touch no parameter
            if id(value) in sources or (type(value) in (list, tuple) and any(id(v) in sources for v in value)):
                break
        else:
            if not kwargs or not any(id(v) in sources for v in kwargs.values()):
                return out
        try:
            if is_op_overload(func):
                self._record(func, args, kwargs, out)
        except Exception as err:  # bookkeeping must never break the count: the reads are then unknown
            self.failed = f"{type(err).__name__}: {err}"
        return out

    def _record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        sources = self._sources
        found = []
        for position, value in enumerate(args):
            values = value if type(value) in (list, tuple) else (value,)
            found += [(position, sources[id(v)]) for v in values if id(v) in sources]
        found += [(-1, sources[id(v)]) for v in kwargs.values() if id(v) in sources]
        rule = SLICE_READS.get(func.overloadpacket)
        if func.is_view and isinstance(out, torch.Tensor) and found[0][0] == 0:  # a view reads nothing yet
            name, slices, whole_dim0 = found[0][1]
            picked = rule(args, kwargs, 0) if rule is not None and whole_dim0 and slices is None else None
            if picked is not None:
                sources[id(out)] = (name, frozenset(picked), False)
            else:
                sources[id(out)] = (name, slices, slices is None and whole_dim0 and _keeps_dim0(func, args, out))
            self._alive.append(out)
            return
        for position, (name, slices, whole_dim0) in found:
            picked = rule(args, kwargs, position) if rule is not None and whole_dim0 and slices is None else None
            if picked is None and whole_dim0 and slices is None and self.routing == "balanced":
                picked = _balanced_slices(func, args, position)
            slices = slices if picked is None else frozenset(picked)
            self._mark(name, slices)
            if slices is not None:
                rows = _slice_rows(func, args, kwargs, position)
                if rows is None:
                    self.rows_unknown.add(name)
                else:
                    self.rows[name] = self.rows.get(name, 0) + rows

    def _mark(self, name: str, slices: frozenset[int] | None) -> None:
        if name in self.read and self.read[name] is None:
            return
        if slices is None:
            self.read[name] = None
        else:
            self.read.setdefault(name, set()).update(slices)  # type: ignore[union-attr]


def read_parameters(reads: Mapping[str, ParameterReads]) -> Reads | None:
    """The reads of the first recorder that completed, or ``None``."""
    return next((r.read for r in reads.values() if r.failed is None), None)


def active_per_token(model: nn.Module, recorder: ParameterReads | None, positions: int | None) -> int | None:
    """Parameter elements one token passes through: every parameter read whole, plus, of a parameter read in slices
    along dim 0 (a fused-experts tensor ``[E, ...]``), ``rows / positions`` slices (``top_k`` for top-k routing:
    every token position meets ``k`` experts; at most ``E``); a slice read outside a matrix product (rows unknown)
    counts as read. DeepSeek-V3: the shared parts plus 8 of 256 experts in each of its 58 MoE layers.

    Args:
        model: the profiled model (or a copy with the same parameter names).
        recorder: the reads of the torch count; ``None`` (or a recorder that failed) gives ``None``.
        positions: token positions of the forward (``B * T``, padding included: the router sees them all);
            ``None`` when the input has no token dimension (then only a model without sliced reads has a value).

    Example::

        active_per_token(model, reads, positions=2 * 16)  # 37,552,282,624 for DeepSeek-V3's own config
    """
    if recorder is None or recorder.failed is not None:
        return None
    total = 0
    for name, param in model.named_parameters():
        slices = recorder.read.get(name, False)
        if slices is False or isinstance(param, nn.parameter.UninitializedParameter):
            continue
        if slices is None:
            total += param.numel()
            continue
        per_slice = param.numel() // param.shape[0]
        rows = recorder.rows.get(name)
        if name in recorder.rows_unknown or rows is None:
            total += per_slice * len(slices)
        elif not positions:
            return None
        else:
            total += round(per_slice * min(param.shape[0], rows / positions))
    return total


def own_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter elements per module that holds parameters itself (a shared weight counts at its first name);
    parameters of lazy modules that are not initialized yet are not counted."""
    out: dict[str, int] = {}
    for name, param in model.named_parameters():
        if isinstance(param, nn.parameter.UninitializedParameter):
            continue
        module = name.rpartition(".")[0]
        out[module] = out.get(module, 0) + param.numel()
    return out


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model class and its parameters' names, shapes and dtypes."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, param in model.named_parameters():
        lazy = isinstance(param, nn.parameter.UninitializedParameter)
        digest.update(f"{name}:{'lazy' if lazy else tuple(param.shape)}:{param.dtype}".encode())
    return digest.hexdigest()[:16]
