"""Parameter counts of a model: total and trainable (packed quantized weights included), per module, of the
modules that ran, and a fingerprint of the parameters' names, shapes and dtypes."""

from __future__ import annotations

import hashlib

from torch import nn

from lightning_flops._compat import packed_params
from lightning_flops.report import ParamCount

__all__ = ["active_parameters", "model_fingerprint", "own_parameters", "param_count"]


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


def active_parameters(model: nn.Module, called: set[str]) -> int:
    """Parameter elements held directly by the modules named in ``called`` (shared weights once).

    A quantized Linear that ran counts its packed weight and bias (held by its ``_packed_params`` child).
    """
    from lightning_flops.counters.torch_dispatch import packed_parameter_count

    seen: set[int] = set()
    total = 0
    for name, module in model.named_modules():
        if name in called:
            for param in module.parameters(recurse=False):
                if id(param) not in seen:
                    seen.add(id(param))
                    total += param.numel()
            packed = packed_params(module)
            if isinstance(packed, nn.Module):
                total += packed_parameter_count(packed)
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
