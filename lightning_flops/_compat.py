"""Private APIs of torch that lightning-flops touches, each in one place, with the version checked.

* :func:`traceable_meta_convolution`: lets ``torch.jit.trace`` (fvcore) record convolutions on the meta device.
* :func:`fast_meta_kernels`: shape-only meta kernels for hot operators whose torch meta kernel is a slow Python
  decomposition (``addmm``: every ``nn.Linear`` on 2-d input, GPT-2's ``Conv1D``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["META_CONV_TRACING", "fast_meta_kernels", "traceable_meta_convolution"]


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


# Checked against torch 2.13: `aten::convolution` is in the JIT tracer's "do not record" list (it records the
# `aten::_convolution` that the CompositeExplicitAutograd kernel of `convolution` calls). On the meta device a Python
# meta kernel for `convolution` (torch/_meta_registrations.py `meta_conv`) takes precedence over that composite
# kernel, so the trace records no convolution at all and `meta_conv` runs while the tracer is still on, where
# `tensor.shape[i]` is a traced tensor: `torch._check(... == ...)` raises "cond must be a bool, but got a Tensor".
# Older torch is left alone (fvcore then counts convolutional models on their own device).
META_CONV_TRACING = _torch_version() >= (2, 13)

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
    if not META_CONV_TRACING:
        yield
        return
    import torch.library

    key = "aten/convolution/Meta"
    had_key = key in torch.library._impls  # torch 2.13: the set of (namespace/op/key) overridden from Python
    library = torch.library.Library("aten", "IMPL")  # a temporary override, destroyed below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": on purpose, undone below
            library.impl("convolution", _convolution_through_composite, "Meta")
        yield
    finally:
        library._destroy()  # the dispatcher falls back to torch's own meta kernel
        # _destroy() (and the finalizer that runs again when `library` dies) drops the key from torch's record of
        # Python overrides, although torch's own meta library still holds one: forget ours, keep torch's on record
        library._op_impls.clear()
        if had_key:
            torch.library._impls.add(key)


# Checked against torch 2.13: `activate_meta()` in torch/_meta_registrations.py registers the Python decomposition of
# `aten::addmm` (torch/_decomp/decompositions.py, through torch._prims elementwise metas) as its meta kernel, over the
# C++ structured one; it costs ~0.5 ms a call on an idle core, most of the time of counting a model of small linears.
def _addmm_meta(self: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, *, beta: Any = 1, alpha: Any = 1) -> Any:
    plain = (
        mat1.dim() == 2
        and mat2.dim() == 2
        and mat1.shape[1] == mat2.shape[0]
        and self.dtype == mat1.dtype == mat2.dtype
        and self.dim() <= 2
        and all(s in (1, n) for s, n in zip(self.shape[::-1], (mat2.shape[1], mat1.shape[0]), strict=False))
    )
    if not plain:  # anything unusual (errors, dtype mixes): torch's own kernel decides
        return _ADDMM_DECOMPOSITION(self, mat1, mat2, beta=beta, alpha=alpha)
    return torch.empty((mat1.shape[0], mat2.shape[1]), dtype=mat1.dtype, device="meta")  # contiguous, as torch's


_ADDMM_DECOMPOSITION: Any = None


@contextlib.contextmanager
def fast_meta_kernels() -> Iterator[None]:
    """While active, ``aten::addmm`` on meta tensors computes its output shape directly (same shape, dtype and
    strides as torch's meta kernel, ``tests/test_compat.py``) instead of running torch's Python decomposition.

    Counts do not change: every counter reads shapes, and FlopCounterMode sees ``addmm`` above the meta kernel.
    Does nothing on torch older than 2.13 (not checked).
    """
    global _ADDMM_DECOMPOSITION
    if not META_CONV_TRACING:
        yield
        return
    import torch._decomp
    import torch.library

    if _ADDMM_DECOMPOSITION is None:
        _ADDMM_DECOMPOSITION = torch._decomp.global_decomposition_table["post_autograd"][_aten.addmm.default]
    key = "aten/addmm/Meta"
    had_key = key in torch.library._impls
    library = torch.library.Library("aten", "IMPL")  # a temporary override, destroyed below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": on purpose, undone below
            library.impl("addmm", _addmm_meta, "Meta")
        yield
    finally:
        library._destroy()
        library._op_impls.clear()  # see traceable_meta_convolution
        if had_key:
            torch.library._impls.add(key)
