"""FLOPs of one training step (forward + backward) with the torch counter.

Two ways, one formula set (the torch counter's, CPU fixups included):

- :func:`train_step_flops` counts a model on an example input without changing it. It runs on
  :func:`~lightning_flops.isolation.meta_copy` of the model (no weight copied), with the kernels the model's own
  device would pick where they depend on the device (attention: CPU flash, whose backward recomputes ``QK^T``;
  :class:`~lightning_flops.counters.engine.DeviceKernels`); a CPU model with an RNN or ``nn.MultiheadAttention``
  (fused CPU kernels a meta count cannot reproduce) is counted as the real model is. When the meta copy cannot run
  (``.item()``, ``nonzero``, data-dependent MoE routing, ...) it runs on the real model with
  ``torch.autograd.grad``, which returns the gradients instead of accumulating them into ``.grad``, and puts the
  buffers (BatchNorm statistics) and the RNG state back.
- :class:`StepObserver` counts the real training step as it happens: a dispatch mode that only counts, entered
  before the step and left before the optimizer step. It registers no hook and changes no tensor, so weights,
  gradients and optimizer state are bit-identical to a run without it, and a MoE counts the experts that really ran.

Backward runs from the sum of the floating-point outputs that require grad (the loss costs next to nothing beside
the model's matrix products) to every leaf the loss depends on that requires grad, as ``loss.backward()`` does:
parameters, inputs that require grad (inside a dict or list too, leaf or not) and tensors made to require grad inside
``forward``. Autograd skips the gradient of inputs that need none, so the first layer's input gradient is counted
only when that input requires grad (as in the real step).

Both ways count with the counting engine (:class:`~lightning_flops.counters.engine.StepCounting`), as the torch
counter does: every kernel of the forward or the backward that has no formula and is not on the
reviewed zero-MAC list is returned as :class:`~lightning_flops.types.Uncounted`, so the training-step count never
counts zero in silence either. :func:`train_step_count` books them to the module they ran in (backward kernels run
outside any module: ``""``); :class:`StepObserver` registers no hook, so its entries carry the module ``""``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_flops._compat import fast_meta_kernels
from lightning_flops.counters.engine import StepCounting
from lightning_flops.counters.tracing import ModuleStack
from lightning_flops.inputs import iter_tensors, map_tensors, split_input
from lightning_flops.isolation import ModelSnapshot, meta_copy, model_device, preserved_rng, unwrap_compiled
from lightning_flops.on_meta import fixed_devices_on_meta
from lightning_flops.report import FlopsReport
from lightning_flops.types import Uncounted

__all__ = ["StepObserver", "observation_refused", "train_step_count", "train_step_flops"]


class StepObserver:
    """Counts the FLOPs of whatever runs between :meth:`start` and :meth:`stop` (a real training step).

    The mode only counts: every operator runs as it would without it, so the step's results are unchanged.
    ``start`` and ``stop`` may be called from different places (Lightning hooks); :meth:`stop` is safe to call
    twice or without ``start``.

    Example::

        observer = StepObserver()
        observer.start()
        loss = model(x).sum()
        loss.backward()
        flops = observer.stop()  # forward + backward, before optimizer.step()
    """

    def __init__(self) -> None:
        self._mode: StepCounting | None = None
        self.flops: int | None = None
        #: kernels of the observed step without a formula (module ``""``: the observer registers no hook)
        self.uncounted: tuple[Uncounted, ...] = ()

    @property
    def running(self) -> bool:
        """Whether the mode is entered."""
        return self._mode is not None

    def start(self) -> None:
        """Enter the counting mode."""
        if self._mode is not None:
            return
        mode = StepCounting()
        mode.__enter__()
        self._mode = mode

    def stop(self) -> int | None:
        """Leave the counting mode; returns the FLOPs counted (``None`` when it never started).

        The kernels counted as 0 without a formula are in :attr:`uncounted` afterwards.
        """
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.__exit__(None, None, None)
            self.flops = mode.flops
            self.uncounted = mode.uncounted()
        return self.flops


def observation_refused(report: FlopsReport) -> str | None:
    """Why the real training step must not be observed, or ``None`` when observing it is known to be safe.

    :class:`StepObserver` runs the user's real step under a Python dispatch mode; a forward that fails under one
    (a check for active modes, a tensor subclass or extension that refuses them) would then fail inside the real
    training step. It is known to be safe only when the torch counter, which runs the forward under such a mode, ran
    this forward without error in ``report``.

    Args:
        report: the profile of the first training batch.
    """
    torch_result = report.counters.get("torch")
    if torch_result is None:
        return "the torch counter did not run (it is not in `counters`), so the training step is not observed"
    if not torch_result.ok:
        return (
            f"the torch counter failed on this forward ({torch_result.error}), so the real training step is not "
            "observed under its counting mode"
        )
    return None


def _grad_input(tensor: torch.Tensor, device: str | None = None) -> torch.Tensor:
    """The step's stand-in for an input ``tensor`` (on ``device`` when given), cut from the caller's graph.

    A floating tensor that requires grad becomes a fresh leaf that requires grad, behind a ``clone`` when the original
    was not a leaf (an in-place operation in ``forward`` then works as on the original); the backward computes its
    gradient as the real step computes the gradient of the original.
    """
    moved = tensor.detach().to(device) if device is not None else tensor.detach()
    if not (tensor.requires_grad and moved.is_floating_point()):
        return moved if device is not None else tensor
    leaf = moved.requires_grad_(True) if device is not None else moved.clone().requires_grad_(True)
    return leaf if tensor.is_leaf else leaf.clone()


def _step_inputs(value: Any, device: str | None = None) -> Any:
    """``value`` with every tensor mapped by :func:`_grad_input`."""
    return map_tensors(lambda t: _grad_input(t, device), value)


def _leaves(root: torch.Tensor) -> list[torch.Tensor]:
    """Every leaf tensor that requires grad and that ``root`` depends on: parameters, inputs and tensors made to
    require grad inside ``forward`` (``hidden_states.requires_grad = True``), found by walking the autograd graph
    (public ``grad_fn``, ``next_functions``; the leaf of an ``AccumulateGrad`` node is its ``variable``)."""
    leaves: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    todo = [root.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            leaves.setdefault(id(variable), variable)
            continue
        todo.extend(child for child, _ in node.next_functions)
    return list(leaves.values())


def _forward_backward(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device | None = None
) -> tuple[int, tuple[Uncounted, ...]]:
    """Count forward + backward of ``model(*args, **kwargs)``; gradients are returned by autograd and dropped.

    The backward computes the gradient of every leaf the loss depends on that requires grad, as ``loss.backward()``
    does, without accumulating into any ``.grad``.

    Args:
        device: on meta, the device whose backend-dependent kernels to count (the model's own).

    Returns:
        ``(FLOPs, uncounted kernels)``, the latter booked to ``model``'s module names (forward hooks, removed after).
    """
    stack = ModuleStack(model)
    mode = StepCounting(stack, device)
    with stack, torch.enable_grad(), mode:
        output = model(*args, **kwargs)
        losses = [t.sum() for _, t in iter_tensors(output) if t.is_floating_point() and t.requires_grad]
        if losses:
            loss = torch.stack(losses).sum()
            targets = _leaves(loss)
            if targets:
                torch.autograd.grad(loss, targets, allow_unused=True)
    return mode.flops, mode.uncounted()


#: modules whose CPU training step runs fused kernels that a meta count cannot reproduce: the RNNs run
#: ``mkldnn_rnn_layer``, whose backward computes the first layer's input gradient too; ``nn.MultiheadAttention``
#: calls SDPA inside ``F.multi_head_attention_forward``, out of reach of
#: :class:`~lightning_flops.counters.engine.DeviceKernels`
_CPU_FUSED_MODULES = (nn.RNNBase, nn.MultiheadAttention)


def _runs_unlike_meta(model: nn.Module, device: torch.device) -> bool:
    """Whether a meta count of ``model``'s step would differ from its device's: a CPU model with a module of
    :data:`_CPU_FUSED_MODULES`."""
    if device.type != "cpu":
        return False
    return any(isinstance(module, _CPU_FUSED_MODULES) for module in model.modules())


def train_step_flops(model: nn.Module, example_input: Any) -> int:
    """FLOPs (2 x MACs) of forward + backward of ``model`` on ``example_input``, for the whole batch.

    The counterpart of Lightning's ``measure_flops``, without changing the model: parameters, ``.grad`` (gradient
    accumulation included), buffers, ``requires_grad``, train/eval flags and the RNG state are as before. The model
    keeps its current train/eval flags (inside ``fit`` it is in training mode). Inputs that require grad get their
    gradient counted, as in the real step. :func:`train_step_count` also returns the kernels counted as 0.

    Args:
        model: the module whose ``forward`` the training step calls.
        example_input: a Tensor (``model(x)``), a tuple/list (``model(*x)``) or a dict (``model(**x)``).

    Example::

        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        flops = train_step_flops(model, torch.randn(8, 64))
        assert flops == 2 * (3 * 8 * (64 * 128 + 128 * 10) - 8 * 64 * 128)  # fwd + weight grads + input grads
    """
    return train_step_count(model, example_input)[0]


def train_step_count(model: nn.Module, example_input: Any) -> tuple[int, tuple[Uncounted, ...]]:
    """:func:`train_step_flops` and the kernels of that step (forward or backward) that counted 0 without a formula.

    A kernel is listed when it ran, has no formula (torch's or ours) and is not on the reviewed zero-MAC list
    (:mod:`lightning_flops.vocabulary`), as the torch counter's ``uncounted`` is; forward kernels carry their module
    name, backward kernels ``""`` (they run outside any module's forward).

    Args:
        model: the module whose ``forward`` the training step calls.
        example_input: a Tensor (``model(x)``), a tuple/list (``model(*x)``) or a dict (``model(**x)``).

    Example::

        flops, uncounted = train_step_count(model, torch.randn(8, 64))
        assert uncounted == ()  # every kernel had a formula or is a reviewed zero
    """
    model = unwrap_compiled(model)
    args, kwargs = split_input(example_input)
    device = model_device(model)
    if not _runs_unlike_meta(model, device):  # else the meta copy would count kernels other than the device's
        with preserved_rng():
            try:
                copy = meta_copy(model)
                with fast_meta_kernels(), fixed_devices_on_meta():  # shapes only; tensors made on a fixed device: meta
                    return _forward_backward(copy, _step_inputs(args, "meta"), _step_inputs(kwargs, "meta"), device)
            except Exception:  # data-dependent code (.item(), nonzero, routing) cannot run on meta: count the model
                pass
    snapshot = ModelSnapshot(model)
    try:
        with preserved_rng():
            return _forward_backward(model, _step_inputs(args), _step_inputs(kwargs))
    finally:
        snapshot.restore()
