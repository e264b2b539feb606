"""What a forward does while it is counted on meta: the tensors it makes on a fixed device go to meta too, and a
pass that still fails says where (the module and the torch function that raised).

A forward that builds a tensor with ``device="cpu"`` (DFormer's decoder: ``torch.rand(..., device="cpu")``) or moves
one with ``.to("cpu")`` would mix devices on a meta copy ("Tensor on device meta is not on the expected device cpu")
and send every counter to a real run. :func:`fixed_devices_on_meta` is a function mode of the counting thread (torch's
mode stacks are per thread: no other thread sees it) that makes such tensors on meta instead: shapes and dtypes are
what they would be, no data and no random numbers are drawn, and the counts are those of a real run
(``tests/test_on_meta.py``). Tensors made without a device are left to torch's default device, as in a real run, and
so are tensors made from the caller's data (``torch.tensor(values, device="cpu")``: the forward may read them back).

Example::

    with fixed_devices_on_meta():
        meta_model(meta_input)  # torch.rand(3, device="cpu") inside makes a meta tensor
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from lightning_flops._compat import TorchFunctionMode, on_this_thread

__all__ = ["FAILED_WHERE", "fixed_devices_on_meta", "locate_failure"]

#: attribute set on an exception raised while counting on meta: ``"module 'dec.head', torch.add"``
FAILED_WHERE = "lightning_flops_where"
_OPERATOR = "lightning_flops_operator"
_MOVES = frozenset({torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda})
_HOST_ONLY = ("generator", "pin_memory")  # a CPU generator or pinned memory cannot make a meta tensor
# tensors made from the caller's data keep their device: the forward may read that data back (``.tolist()``)
_FROM_DATA = frozenset({torch.tensor, torch.as_tensor, torch.asarray})


def _is_meta(device: Any) -> bool:
    return str(device).split(":")[0] == "meta"


def _function_name(func: Any) -> str:
    owner = getattr(func, "__objclass__", None) or getattr(func, "__self__", None)
    name = getattr(func, "__name__", None) or repr(func)
    if isinstance(owner, type) and (owner in torch.Tensor.__mro__ or issubclass(owner, torch.Tensor)):
        return f"Tensor.{name}"
    module = getattr(func, "__module__", None) or "torch"
    return f"{'torch' if module.startswith('torch._C') else module}.{name}"


def _moved_to_meta(func: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """``(args, kwargs)`` of ``x.to(...)`` / ``x.cpu()`` / ``x.cuda()`` on a meta tensor that keep it on meta (the
    dtype it asks for kept), else ``None``."""
    if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_meta:
        return None
    if func is not torch.Tensor.to:
        return (args[0], "meta"), {}
    rest, kwargs = list(args[1:]), dict(kwargs)
    if rest and isinstance(rest[0], torch.Tensor):  # x.to(other): other's dtype, on meta
        rest[0:1] = ["meta", rest[0].dtype]
    elif rest and isinstance(rest[0], (str, torch.device, int)) and not isinstance(rest[0], bool):
        rest[0] = "meta"
    if "device" in kwargs:
        kwargs["device"] = "meta"
    return (args[0], *rest), kwargs


class _FixedDevicesToMeta(TorchFunctionMode):
    """Sends every torch function's ``device=`` (and the moves of meta tensors) to meta; names the torch function
    that raised on the exception (:data:`_OPERATOR`, the innermost call the forward made)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and not _is_meta(device) and func not in _FROM_DATA:
            kwargs = {k: v for k, v in kwargs.items() if k not in _HOST_ONLY}
            kwargs["device"] = "meta"
        elif func in _MOVES:
            moved = _moved_to_meta(func, args, kwargs)
            if moved is not None:
                args, kwargs = moved
                func = torch.Tensor.to
        try:
            return func(*args, **kwargs)
        except Exception as err:
            if not hasattr(err, _OPERATOR):
                setattr(err, _OPERATOR, _function_name(func))
            raise


def fixed_devices_on_meta() -> contextlib.AbstractContextManager[None]:
    """While active on this thread (and carried into fvcore's trace thread), tensors the forward makes on a fixed
    device are made on meta. A no-op outside the torch versions checked (:func:`lightning_flops._compat.
    torch_checked`)."""
    return on_this_thread(_FixedDevicesToMeta)


def locate_failure(err: BaseException, model: nn.Module) -> None:
    """Set ``err.lightning_flops_where`` (:data:`FAILED_WHERE`) to the module of ``model`` whose code raised (the
    innermost one on the traceback) and the torch function that did, when they are known."""
    if getattr(err, FAILED_WHERE, None):
        return
    names = {id(module): name for name, module in model.named_modules()}
    module = None
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            module = names[id(owner)]
            break
    parts = []
    if module is not None:
        parts.append(f"module {module!r}" if module else "the root module")
    operator = getattr(err, _OPERATOR, None)
    if operator:
        parts.append(operator)
    if parts:
        setattr(err, FAILED_WHERE, ", ".join(parts))
