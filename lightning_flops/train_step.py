"""FLOPs of one training step (forward + backward) counted with the torch counter on a meta copy of the model.

The count runs on :func:`~lightning_flops.isolation.meta_copy` of the model, so the real parameters, their ``.grad``
(gradient accumulation included), buffers and RNG state are never touched and no weight is copied. Backward runs
from the sum of the floating-point outputs that require grad: the loss itself costs next to nothing beside the
model's matrix products, which is all the torch counter counts. Autograd skips the gradient of inputs that do not
require grad, so the first layer's input gradient is not counted (as in the real step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_flops.counters.torch_dispatch import count_flops
from lightning_flops.inputs import iter_tensors, split_input, to_device
from lightning_flops.isolation import meta_copy, preserved_rng, unwrap_compiled

__all__ = ["train_step_flops"]


def train_step_flops(model: nn.Module, example_input: Any) -> int:
    """FLOPs (2 x MACs) of forward + backward of ``model`` on ``example_input``, for the whole batch.

    The model keeps its current train/eval flags (inside ``fit`` it is in training mode). Raises whatever the meta
    copy or the meta forward/backward raises (e.g. ``.item()`` in ``forward``): the caller decides what to do.

    Args:
        model: the module whose ``forward`` the training step calls.
        example_input: a Tensor (``model(x)``), a tuple/list (``model(*x)``) or a dict (``model(**x)``).

    Example::

        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        flops = train_step_flops(model, torch.randn(8, 64))
        assert flops == 2 * (3 * 8 * (64 * 128 + 128 * 10) - 8 * 64 * 128)  # fwd + weight grads + input grads
    """
    args, kwargs = split_input(example_input)
    copy = meta_copy(unwrap_compiled(model))
    args, kwargs = to_device(args, "meta"), to_device(kwargs, "meta")

    def step() -> None:
        with torch.enable_grad():
            output = copy(*args, **kwargs)
            losses = [t.sum() for _, t in iter_tensors(output) if t.is_floating_point() and t.requires_grad]
            if losses:
                torch.stack(losses).sum().backward()

    with preserved_rng():
        total, _, _ = count_flops(step)
    return int(total)
