"""Shape-only meta kernels: an operator's output on meta tensors, computed from shapes and dtypes directly.

On the meta device torch runs many operators through their Python decompositions (``torch._refs`` elementwise
wrappers, ``native_batch_norm_helper``, ...): 0.2-4 ms a call, most of the time of counting a model on meta. Every
counter reads only shapes, so these kernels make the same empty outputs (same shape, dtype and strides, checked
against torch's own kernel in ``tests/test_meta_kernels.py``) without that arithmetic on nothing.

Each entry of :data:`SHAPE_ONLY_KERNELS` maps an operator overload name to a factory: given torch's own meta kernel,
it returns ours, which takes its short path only for plain inputs (meta tensors, contiguous, non-empty, concrete
sizes, one floating dtype, real Python scalars) and hands anything else to torch's kernel, errors included. This
module uses public torch names only; :func:`lightning_flops._compat.fast_meta_kernels` answers with the kernels
through a dispatch mode on the counting thread while a count runs (nothing is registered with the dispatcher).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["SHAPE_ONLY_KERNELS"]

Kernel = Callable[..., Any]

_FLOATING = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
# the dtype torch keeps statistics in (mean, inverse std of a norm), per input dtype
_OPMATH = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float32}
_SCALARS = (bool, int, float, str)  # str: keyword options such as gelu's approximate="tanh"


def _sizes(tensor: torch.Tensor) -> tuple[int, ...] | None:
    """The sizes of a plain meta tensor (contiguous, non-empty, concrete sizes), else ``None``."""
    if tensor.device.type != "meta" or not tensor.is_contiguous():
        return None
    shape = tuple(tensor.shape)
    if any(type(n) is not int or n == 0 for n in shape):
        return None
    return shape


def _plain(tensor: Any, dtypes: frozenset[torch.dtype] = _FLOATING) -> tuple[int, ...] | None:
    """The sizes of ``tensor`` when it is a plain meta tensor of one of ``dtypes``, else ``None``."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in dtypes:
        return None
    return _sizes(tensor)


def _broadcast(shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The broadcast of ``shapes`` (NumPy rules), or ``None`` when they do not broadcast (torch then raises)."""
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for shape in shapes:
        offset = ndim - len(shape)
        for i, n in enumerate(shape):
            current = out[offset + i]
            if n == current or n == 1:
                continue
            if current != 1:
                return None
            out[offset + i] = n
    return tuple(out)


def _empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")  # contiguous


def _like(tensor: torch.Tensor) -> torch.Tensor:
    return _empty(tensor.shape, tensor.dtype)


_SCALAR_TENSOR_DTYPES = frozenset({torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})


def _operands(values: Sequence[Any]) -> tuple[torch.dtype, list[tuple[int, ...]]] | None:
    """The result dtype and the shapes of an elementwise operator's operands, when type promotion is trivial.

    That is: every operand with dims is a plain meta tensor of one floating dtype ``D``; every 0-dim tensor (a
    wrapped Python number on CPU included) is bool, integer or floating, which never changes ``D`` (dimensioned
    operands win within a category); other operands are ``None`` or bool/int/float/str. With 0-dim tensors only,
    they must share one floating dtype. Else ``None``.
    """
    dtype = None
    shapes = []
    zero_dim = set()
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.dim() == 0:
                if value.dtype not in _FLOATING and value.dtype not in _SCALAR_TENSOR_DTYPES:
                    return None
                if value.device.type not in ("meta", "cpu"):
                    return None
                zero_dim.add(value.dtype)
                shapes.append(())
                continue
            shape = _plain(value)
            if shape is None or (dtype is not None and value.dtype != dtype):
                return None
            dtype = value.dtype
            shapes.append(shape)
        elif value is not None and not isinstance(value, _SCALARS):
            return None
    if dtype is None and len(zero_dim) == 1 and zero_dim <= _FLOATING:
        dtype = next(iter(zero_dim))  # only 0-dim tensors, of one floating dtype: theirs
    return (dtype, shapes) if dtype is not None else None


def _pointwise(result: str = "same") -> Callable[[Kernel], Kernel]:
    """An elementwise operator: the broadcast shape; the operands' floating dtype (``result="bool"``: bool).

    Short path when :func:`_operands` finds type promotion trivial. Contiguous operands give a contiguous output.
    """

    def factory(torch_kernel: Kernel) -> Kernel:
        def kernel(*args: Any, **kwargs: Any) -> Any:
            found = _operands((*args, *kwargs.values()))
            shape = _broadcast(found[1]) if found is not None else None
            if shape is None:
                return torch_kernel(*args, **kwargs)
            return _empty(shape, torch.bool if result == "bool" else found[0])  # type: ignore[index]

        return kernel

    return factory


def _where(torch_kernel: Kernel) -> Kernel:
    """``where.self(condition, self, other)``: a bool condition; the values as an elementwise operator's."""

    def kernel(condition: Any, self: Any, other: Any) -> Any:
        mask = _plain(condition, frozenset({torch.bool}))
        found = _operands((self, other))
        shape = _broadcast([mask, *found[1]]) if mask is not None and found is not None else None
        return torch_kernel(condition, self, other) if shape is None else _empty(shape, found[0])  # type: ignore[index]

    return kernel


def _masked_fill(torch_kernel: Kernel) -> Kernel:
    """``masked_fill.Scalar(self, mask, value)``: the shape of ``self`` (the mask broadcasts into it)."""

    def kernel(self: Any, mask: Any, value: Any) -> Any:
        shape, mask_shape = _plain(self), _plain(mask, frozenset({torch.bool}))
        if shape is None or mask_shape is None or not isinstance(value, _SCALARS) or isinstance(value, str):
            return torch_kernel(self, mask, value)
        return _like(self) if _broadcast((shape, mask_shape)) == shape else torch_kernel(self, mask, value)

    return kernel


def _same_as_first(dtypes: frozenset[torch.dtype] = _FLOATING, min_dim: int = 0) -> Callable[[Kernel], Kernel]:
    """An operator whose output has the shape and dtype of its first argument (``tril``, ``_safe_softmax``).

    The other arguments must be ints or ``None`` (a diagonal, a dim, ``dtype=None``).
    """

    def factory(torch_kernel: Kernel) -> Kernel:
        def kernel(self: Any, *args: Any, **kwargs: Any) -> Any:
            shape = _plain(self, dtypes)
            options = (*args, *kwargs.values())
            if shape is None or len(shape) < min_dim or any(o is not None and type(o) is not int for o in options):
                return torch_kernel(self, *args, **kwargs)
            return _like(self)

        return kernel

    return factory


_ANY_DTYPE = _SCALAR_TENSOR_DTYPES | _FLOATING


def _reduction(torch_kernel: Kernel) -> Kernel:
    """``mean.dim`` / ``sum.dim_IntList(self, dim, keepdim=False, *, dtype=None)`` over a list of dims."""

    def kernel(self: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Any:
        shape = _plain(self)
        if shape is None or dtype is not None or not isinstance(dim, (list, tuple)) or not dim:
            return torch_kernel(self, dim, keepdim, dtype=dtype)
        ndim = len(shape)
        if any(type(d) is not int or not -ndim <= d < ndim for d in dim):
            return torch_kernel(self, dim, keepdim, dtype=dtype)
        reduced = {d % ndim for d in dim}
        if len(reduced) != len(dim):
            return torch_kernel(self, dim, keepdim, dtype=dtype)
        if keepdim:
            out = [1 if i in reduced else n for i, n in enumerate(shape)]
        else:
            out = [n for i, n in enumerate(shape) if i not in reduced]
        return _empty(out, self.dtype)

    return kernel


def _cat(torch_kernel: Kernel) -> Kernel:
    """``cat(tensors, dim=0)`` of plain tensors of one dtype and rank, equal but along ``dim``."""

    def kernel(tensors: Any, dim: int = 0) -> Any:
        shapes = [_plain(t) for t in tensors] if isinstance(tensors, (list, tuple)) and tensors else [None]
        if None in shapes or type(dim) is not int or len({t.dtype for t in tensors}) != 1:
            return torch_kernel(tensors, dim)
        ndim = len(shapes[0])  # type: ignore[arg-type]
        if ndim == 0 or not -ndim <= dim < ndim or any(len(s) != ndim for s in shapes):  # type: ignore[arg-type]
            return torch_kernel(tensors, dim)
        dim %= ndim
        first = shapes[0]
        if any(s[:dim] + s[dim + 1 :] != first[:dim] + first[dim + 1 :] for s in shapes):  # type: ignore[index]
            return torch_kernel(tensors, dim)
        out = list(first)  # type: ignore[arg-type]
        out[dim] = sum(s[dim] for s in shapes)  # type: ignore[index]
        return _empty(out, tensors[0].dtype)

    return kernel


def _parameter_of(tensor: Any, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    """``tensor`` is ``None`` or a plain meta tensor of ``shape`` and ``dtype`` (a norm's weight, bias, stats)."""
    return tensor is None or (_plain(tensor) == shape and tensor.dtype == dtype)


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return _OPMATH.get(dtype, dtype)


def _batch_norm_outputs(inp: Any, weight: Any, bias: Any, mean: Any, var: Any, training: Any) -> tuple | None:
    """A batch norm's ``(output, save_mean, save_invstd)``: the output like ``input``, the saved statistics ``[C]``
    in the statistics dtype (float32 for half inputs); ``None`` for anything but plain inputs."""
    shape = _plain(inp)
    if shape is None or len(shape) < 2 or not isinstance(training, bool) or (mean is None) != (var is None):
        return None
    channels, stats = (shape[1],), _stats_dtype(inp.dtype)
    ok = _parameter_of(weight, channels, inp.dtype) and _parameter_of(bias, channels, inp.dtype)
    ok = ok and (training or mean is not None)
    ok = ok and all(t is None or (_plain(t) == channels and t.dtype in (inp.dtype, stats)) for t in (mean, var))
    return (_like(inp), _empty(channels, stats), _empty(channels, stats)) if ok else None


def _native_batch_norm(torch_kernel: Kernel) -> Kernel:
    """``native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps)``."""

    def kernel(inp: Any, weight: Any, bias: Any, mean: Any, var: Any, training: Any, *rest: Any) -> Any:
        out = _batch_norm_outputs(inp, weight, bias, mean, var, training)
        return out if out is not None else torch_kernel(inp, weight, bias, mean, var, training, *rest)

    return kernel


def _batch_norm_no_training(torch_kernel: Kernel) -> Kernel:
    """``_native_batch_norm_legit_no_training(input, weight, bias, running_mean, running_var, momentum, eps)``."""

    def kernel(inp: Any, weight: Any, bias: Any, mean: Any, var: Any, *rest: Any) -> Any:
        out = _batch_norm_outputs(inp, weight, bias, mean, var, False) if mean is not None else None
        return out if out is not None else torch_kernel(inp, weight, bias, mean, var, *rest)

    return kernel


def _batch_norm_no_stats(torch_kernel: Kernel) -> Kernel:
    """``_native_batch_norm_legit.no_stats(input, weight, bias, training, momentum, eps)``."""

    def kernel(inp: Any, weight: Any, bias: Any, training: Any, *rest: Any) -> Any:
        out = _batch_norm_outputs(inp, weight, bias, None, None, training)
        return out if out is not None else torch_kernel(inp, weight, bias, training, *rest)

    return kernel


def _layer_norm_axis(shape: tuple[int, ...] | None, normalized: Any) -> int | None:
    """Where the normalized dims start in ``shape``, when ``normalized`` is a list of ints ending ``shape``."""
    if shape is None or not isinstance(normalized, (list, tuple)) or not normalized:
        return None
    if any(type(n) is not int for n in normalized) or len(normalized) > len(shape):
        return None
    axis = len(shape) - len(normalized)
    return axis if tuple(shape[axis:]) == tuple(normalized) else None


def _native_layer_norm(torch_kernel: Kernel) -> Kernel:
    """``native_layer_norm(input, normalized_shape, weight, bias, eps)``: the output like ``input``; mean and
    inverse std of shape ``input.shape[:axis] + (1,) * len(normalized_shape)`` in the statistics dtype."""

    def kernel(inp: Any, normalized: Any, weight: Any, bias: Any, eps: Any) -> Any:
        shape = _plain(inp)
        axis = _layer_norm_axis(shape, normalized)
        if axis is None:
            return torch_kernel(inp, normalized, weight, bias, eps)
        params = tuple(normalized)
        if not (_parameter_of(weight, params, inp.dtype) and _parameter_of(bias, params, inp.dtype)):
            return torch_kernel(inp, normalized, weight, bias, eps)
        stats_shape = (*shape[:axis], *(1,) * len(params))  # type: ignore[index]
        stats = _stats_dtype(inp.dtype)
        return _like(inp), _empty(stats_shape, stats), _empty(stats_shape, stats)

    return kernel


def _plain_mask(mask: Any) -> bool:
    """A norm backward's ``output_mask``: three bools (input, weight, bias gradients wanted)."""
    return isinstance(mask, (list, tuple)) and len(mask) == 3 and all(isinstance(m, bool) for m in mask)


def _native_layer_norm_backward(torch_kernel: Kernel) -> Kernel:
    """``native_layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask)``:
    gradients like ``input``, ``weight`` and ``bias``, each when asked for and (for the last two) present."""

    def kernel(grad: Any, inp: Any, normalized: Any, mean: Any, rstd: Any, weight: Any, bias: Any, mask: Any) -> Any:
        shape = _plain(inp)
        axis = _layer_norm_axis(shape, normalized)
        if axis is None or not _plain_mask(mask) or _plain(grad) != shape or grad.dtype != inp.dtype:
            return torch_kernel(grad, inp, normalized, mean, rstd, weight, bias, mask)
        params = tuple(normalized)
        if not (_parameter_of(weight, params, inp.dtype) and _parameter_of(bias, params, inp.dtype)):
            return torch_kernel(grad, inp, normalized, mean, rstd, weight, bias, mask)
        return (
            _like(inp) if mask[0] else None,
            _like(weight) if mask[1] and weight is not None else None,
            _like(bias) if mask[2] and bias is not None else None,
        )

    return kernel


def _native_batch_norm_backward(torch_kernel: Kernel) -> Kernel:
    """``native_batch_norm_backward(grad_out, input, weight, running_mean, running_var, save_mean, save_invstd,
    train, eps, output_mask)``, affine: gradients like ``input``, ``weight`` and ``weight`` when asked for."""

    def kernel(grad: Any, inp: Any, weight: Any, *rest: Any) -> Any:
        shape = _plain(inp)
        mask = rest[-1] if rest else None
        if shape is None or len(shape) < 2 or not _plain_mask(mask) or _plain(grad) != shape or grad.dtype != inp.dtype:
            return torch_kernel(grad, inp, weight, *rest)
        if weight is None or not _parameter_of(weight, (shape[1],), inp.dtype):
            return torch_kernel(grad, inp, weight, *rest)
        return (
            _like(inp) if mask[0] else None,
            _like(weight) if mask[1] else None,
            _like(weight) if mask[2] else None,
        )

    return kernel


def _softmax_backward_data(torch_kernel: Kernel) -> Kernel:
    """``_softmax_backward_data(grad_output, output, dim, input_dtype)``: like ``grad_output`` when one dtype."""

    def kernel(grad: Any, output: Any, dim: Any, input_dtype: Any) -> Any:
        shape = _plain(grad)
        if shape is None or _plain(output) != shape or output.dtype != grad.dtype or input_dtype != grad.dtype:
            return torch_kernel(grad, output, dim, input_dtype)
        return (
            _like(grad)
            if type(dim) is int and -len(shape) <= dim < len(shape)
            else torch_kernel(grad, output, dim, input_dtype)
        )

    return kernel


def _addmm(torch_kernel: Kernel) -> Kernel:
    """``addmm(self, mat1, mat2, *, beta, alpha)``: ``[M, N]``, contiguous whatever the operands' strides, when
    ``self`` broadcasts to it and the three share one dtype (most of the cost of counting models of small linears)."""

    def kernel(self: Any, mat1: Any, mat2: Any, *, beta: Any = 1, alpha: Any = 1) -> Any:
        plain = (
            mat1.dim() == 2
            and mat2.dim() == 2
            and mat1.shape[1] == mat2.shape[0]
            and self.dtype == mat1.dtype == mat2.dtype
            and self.dim() <= 2
            and all(s in (1, n) for s, n in zip(self.shape[::-1], (mat2.shape[1], mat1.shape[0]), strict=False))
        )
        if not plain:  # anything unusual (errors, dtype mixes): torch's own kernel decides
            return torch_kernel(self, mat1, mat2, beta=beta, alpha=alpha)
        return _empty((mat1.shape[0], mat2.shape[1]), mat1.dtype)

    return kernel


_SAME = _pointwise("same")
_BOOL = _pointwise("bool")

# elementwise operators whose output keeps the floating dtype of their operands
_SAME_DTYPE = (
    "add.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "rsub.Scalar", "mul.Tensor", "mul.Scalar",
    "div.Tensor", "div.Scalar", "neg.default", "exp.default", "log.default", "sqrt.default", "rsqrt.default",
    "reciprocal.default", "abs.default", "sin.default", "cos.default", "tanh.default", "sigmoid.default",
    "silu.default", "relu.default", "gelu.default", "erf.default", "hardtanh.default", "clamp.default",
    "leaky_relu.default", "elu.default", "hardswish.default", "hardsigmoid.default", "mish.default",
    "softplus.default", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "maximum.default", "minimum.default",
    "gelu_backward.default", "threshold_backward.default", "sigmoid_backward.default",
    "tanh_backward.default",
)  # fmt: skip
# comparisons: a bool output
_TO_BOOL = (
    "gt.Tensor", "gt.Scalar", "lt.Tensor", "lt.Scalar", "ge.Tensor", "ge.Scalar", "le.Tensor", "le.Scalar",
    "eq.Tensor", "eq.Scalar", "ne.Tensor", "ne.Scalar",
)  # fmt: skip

#: aten overload name -> factory(torch's meta kernel) -> our shape-only meta kernel. Only operators whose meta kernel
#: torch runs in Python are worth listing (``tests/test_meta_kernels.py`` checks that each one is).
SHAPE_ONLY_KERNELS: dict[str, Callable[[Kernel], Kernel]] = {
    "addmm.default": _addmm,
    **dict.fromkeys(_SAME_DTYPE, _SAME),
    **dict.fromkeys(_TO_BOOL, _BOOL),
    "where.self": _where,
    "masked_fill.Scalar": _masked_fill,
    "tril.default": _same_as_first(_ANY_DTYPE, min_dim=2),
    "triu.default": _same_as_first(_ANY_DTYPE, min_dim=2),
    "_safe_softmax.default": _same_as_first(),
    "mean.dim": _reduction,
    "sum.dim_IntList": _reduction,
    "cat.default": _cat,
    "native_batch_norm.default": _native_batch_norm,
    "_native_batch_norm_legit.default": _native_batch_norm,  # the same arguments
    "_native_batch_norm_legit.no_stats": _batch_norm_no_stats,
    "_native_batch_norm_legit_no_training.default": _batch_norm_no_training,
    "native_batch_norm_backward.default": _native_batch_norm_backward,
    "native_layer_norm.default": _native_layer_norm,
    "native_layer_norm_backward.default": _native_layer_norm_backward,
    "_softmax_backward_data.default": _softmax_backward_data,
}
