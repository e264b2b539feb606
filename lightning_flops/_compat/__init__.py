"""Every private API of torch, thop, fvcore and Lightning that lightning-flops touches: here, and nowhere else.

One module per library, each name checked against a version (torch 2.13, lightning 2.6.6, thop 0.1.1, fvcore 0.1.5):

* :mod:`lightning_flops._compat.torch`: module and hook internals, dispatch internals, FlopCounterMode shims, meta
  kernels.
* :mod:`lightning_flops._compat.thop`: thop's rule table, parameter count and printers.
* :mod:`lightning_flops._compat.fvcore`: nothing (public API only).
* :mod:`lightning_flops._compat.lightning`: hyperparameter logging internals (imported lazily).

This package re-exports every name, so ``from lightning_flops._compat import X`` works for all of them.
:data:`PRIVATE_APIS` lists every private name these shims rely on, and ``tests/test_compat.py`` resolves each one,
so that an upgrade that removes or reshapes one fails there, loudly, naming it.
"""

from __future__ import annotations

from lightning_flops._compat import fvcore as _fvcore
from lightning_flops._compat import lightning as _lightning
from lightning_flops._compat import thop as _thop
from lightning_flops._compat import torch as _torch
from lightning_flops._compat.lightning import (
    LIGHTNING_CHECKED,
    callback_state_key,
    default_hp_metric,
    lightning_checked,
    logs_hyperparams,
    run_hparams,
    tensorboard_hparams,
)
from lightning_flops._compat.thop import (
    thop_printers_muted,
    thop_rules,
    thop_without_parameter_count,
)
from lightning_flops._compat.torch import (
    GLOBAL_HOOK_DICTS,
    GLOBAL_HOOK_FLAG_DICTS,
    HOOK_FLAG_DICTS,
    META_CONV_TRACING,
    MODULE_CHILDREN_DICT,
    MODULE_HOOK_DICTS,
    MODULE_TENSOR_DICTS,
    TORCH_CHECKED,
    DeviceType,
    TorchDispatchMode,
    TorchFunctionMode,
    batch_norm_types,
    carried_modes,
    compiled_inner,
    conv_module_types,
    decomposes_implicitly,
    fast_meta_kernels,
    fast_meta_kernels_active,
    flop_counter_dispatch_mode,
    flop_registry,
    fsdp_original_class,
    handle_higher_order,
    handle_with_refs,
    is_fake_tensor,
    is_hook_dict_key,
    is_lazy_shape_hook,
    is_op_overload,
    mark_raw_formula,
    module_buffers,
    module_parameters,
    norm_module_types,
    on_this_thread,
    op_schema,
    packed_params,
    pool_module_types,
    private_torch_functions,
    profiler_enabled,
    quantized_weight_bias,
    sdpa_backend,
    sdpa_backward_flop_count,
    sdpa_flop_count,
    set_module_tracker,
    shape_formula,
    storage_address,
    torch_checked,
    torch_global_hook_dicts,
    torch_meta_kernel,
    torch_version,
    traceable_meta_convolution,
)

__all__ = [
    "GLOBAL_HOOK_DICTS",
    "GLOBAL_HOOK_FLAG_DICTS",
    "HOOK_FLAG_DICTS",
    "LIGHTNING_CHECKED",
    "META_CONV_TRACING",
    "MODULE_CHILDREN_DICT",
    "MODULE_HOOK_DICTS",
    "MODULE_TENSOR_DICTS",
    "PRIVATE_APIS",
    "TORCH_CHECKED",
    "DeviceType",
    "TorchDispatchMode",
    "TorchFunctionMode",
    "batch_norm_types",
    "callback_state_key",
    "carried_modes",
    "compiled_inner",
    "conv_module_types",
    "decomposes_implicitly",
    "default_hp_metric",
    "fast_meta_kernels",
    "fast_meta_kernels_active",
    "flop_counter_dispatch_mode",
    "flop_registry",
    "fsdp_original_class",
    "handle_higher_order",
    "handle_with_refs",
    "is_fake_tensor",
    "is_hook_dict_key",
    "is_lazy_shape_hook",
    "is_op_overload",
    "lightning_checked",
    "logs_hyperparams",
    "mark_raw_formula",
    "module_buffers",
    "module_parameters",
    "norm_module_types",
    "on_this_thread",
    "op_schema",
    "packed_params",
    "pool_module_types",
    "private_torch_functions",
    "profiler_enabled",
    "quantized_weight_bias",
    "run_hparams",
    "sdpa_backend",
    "sdpa_backward_flop_count",
    "sdpa_flop_count",
    "set_module_tracker",
    "shape_formula",
    "storage_address",
    "tensorboard_hparams",
    "thop_printers_muted",
    "thop_rules",
    "thop_without_parameter_count",
    "torch_checked",
    "torch_global_hook_dicts",
    "torch_meta_kernel",
    "torch_version",
    "traceable_meta_convolution",
]

# (library, where, name, checked against): every private name the shims rely on, all libraries (see
# lightning_flops._compat.torch.PRIVATE_APIS for the format); tests/test_compat.py resolves each entry.
PRIVATE_APIS: tuple[tuple[str, str, str, str], ...] = (
    *_torch.PRIVATE_APIS,
    *_thop.PRIVATE_APIS,
    *_fvcore.PRIVATE_APIS,
    *_lightning.PRIVATE_APIS,
)
