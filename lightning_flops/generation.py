"""``profile_generate``: prefill and per-token decode MACs of a real ``generate()``, counted by the torch reference.

The model's own ``generate`` runs greedily (``do_sample=False``, exactly ``max_new_tokens`` new tokens) on the real
model, under the counting engine (``counters/engine.py``: ``StepCounting``). A forward pre-hook on the model
(registered here, removed by its handle) reads the running total at every call of the model's forward: everything
before the second call is the prefill (the prompt; for an encoder-decoder the encoder too), each later call opens
one decode step. The model is left as it was: eval mode and ``no_grad`` while it runs, then training flags, hooks,
buffers, ``requires_grad`` and the RNG state restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from lightning_flops.counters.base import macs_from_flops
from lightning_flops.counters.engine import StepCounting
from lightning_flops.counters.tracing import ModuleStack
from lightning_flops.errors import FlopsConfigError
from lightning_flops.generation_report import GenerationReport
from lightning_flops.inputs import count_tokens, iter_tensors
from lightning_flops.isolation import ModelSnapshot, preserved_generators, preserved_rng, unwrap_compiled
from lightning_flops.profiling import installed_version
from lightning_flops.types import Uncounted

__all__ = ["GenerationReport", "profile_generate"]

GenerateFn = Callable[[nn.Module, Any], Any]


def _split_inputs(inputs: Any) -> dict[str, Any]:
    if isinstance(inputs, torch.Tensor):
        return {"input_ids": inputs}
    if isinstance(inputs, Mapping) and all(isinstance(k, str) for k in inputs):
        return dict(inputs)
    raise FlopsConfigError(
        "`inputs` must be a Tensor of input ids (generate(input_ids=x)) or a dict of keyword arguments "
        f"(generate(**inputs)), got {type(inputs).__name__}"
    )


def _prompt_shape(kwargs: dict[str, Any]) -> tuple[int, int]:
    """``(batch, prompt length)`` from ``input_ids`` (or ``inputs_embeds``), else the first tensor of 2+ dims."""
    for name in ("input_ids", "inputs_embeds", "input_features", "pixel_values"):
        tensor = kwargs.get(name)
        if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2:
            return int(tensor.shape[0]), int(tensor.shape[1])
    for _, tensor in iter_tensors(kwargs):
        if tensor.dim() >= 2:
            return int(tensor.shape[0]), int(tensor.shape[1])
    raise FlopsConfigError("`inputs` must hold a prompt tensor of shape [batch, length] (`input_ids`)")


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": installed_version("transformers"),
            "lightning_flops": installed_version("lightning-flops")}  # fmt: skip


def _shown(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return repr(value)


class _Marks:
    """The counter's running total (FLOPs) at every call of the model's forward."""

    def __init__(self) -> None:
        self.total: Callable[[], int] = lambda: 0
        self.at_forward: list[int] = []

    def __call__(self, module: nn.Module, args: Any) -> None:
        self.at_forward.append(self.total())

    def segments(self) -> tuple[int, tuple[int, ...]]:
        """``(prefill FLOPs, FLOPs of each decode step)``; the end of the run closes the last step."""
        ends = [*self.at_forward[1:], self.total()]
        starts = [0, *self.at_forward[1:]]
        flops = [end - start for start, end in zip(starts, ends, strict=True)]
        return flops[0], tuple(flops[1:])


@contextlib.contextmanager
def _isolated(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``no_grad`` inside; training flags, hooks, buffers, ``requires_grad``, the process's RNG and
    the model's own generators restored after."""
    snapshot = ModelSnapshot(model)
    try:
        with preserved_rng(), preserved_generators(model), torch.no_grad():
            model.eval()
            yield
    finally:
        snapshot.restore()


def _count(model: nn.Module, run: Callable[[], Any]) -> tuple[_Marks, tuple[Uncounted, ...]]:
    """Run ``run()`` once under the engine's counting with a forward pre-hook on ``model`` reading the total."""
    stack = ModuleStack(model)
    step = StepCounting(stack)
    marks = _Marks()
    marks.total = lambda: step.flops
    handle = model.register_forward_pre_hook(marks)
    try:
        with _isolated(model), stack, step:
            run()
    finally:
        handle.remove()
    return marks, step.uncounted()


def profile_generate(
    model: nn.Module,
    inputs: Any,
    max_new_tokens: int = 8,
    generate_fn: GenerateFn | None = None,
    tokens_fn: Callable[[Any], int] | None = None,
    **generate_kwargs: Any,
) -> GenerationReport:
    """MACs of a greedy ``generate()`` call: the prefill and every decode step, counted by the torch reference.

    Runs ``model.generate(**inputs, max_new_tokens=N, min_new_tokens=N, do_sample=False, **generate_kwargs)`` on the
    real model (eval, ``no_grad``; training flags, hooks, buffers, ``requires_grad`` and RNG state restored after),
    counted like ``profile_model``'s torch counter, and splits the count at every call of the model's own forward:
    the first call (with the encoder of an encoder-decoder) is the prefill, each later call one decode step.

    Args:
        model: a model with ``generate`` (a Hugging Face ``GenerationMixin``), or any module with ``generate_fn``.
        inputs: a Tensor of input ids, or a dict of keyword arguments of ``generate`` (``input_ids``,
            ``attention_mask``, ...).
        max_new_tokens: tokens to generate per sample (>= 1); generation never stops earlier.
        generate_fn: ``generate_fn(model, inputs)`` runs the generation instead of ``model.generate`` (a model
            without ``generate``); it must call ``model``'s forward once per new token.
        tokens_fn: ``tokens_fn(inputs)`` gives the real prompt tokens of the batch (``report.tokens``); ``None``
            sums the ``attention_mask`` when one is passed, else ``batch * prompt length``.
        generate_kwargs: more keyword arguments of ``generate`` (``pad_token_id``, ``use_cache``, ...).

    Example::

        gen = profile_generate(model, {"input_ids": ids, "attention_mask": mask}, max_new_tokens=8)
        gen.prefill_macs, gen.decode_macs, gen.macs_per_new_token()
    """
    if not isinstance(model, nn.Module):
        raise FlopsConfigError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise FlopsConfigError(f"`max_new_tokens` must be an int >= 1, got {max_new_tokens!r}")
    if generate_fn is not None and not callable(generate_fn):
        raise FlopsConfigError(f"`generate_fn` must be None or a callable (model, inputs), got {generate_fn!r}")
    if tokens_fn is not None and not callable(tokens_fn):
        raise FlopsConfigError(f"`tokens_fn` must be None or a callable taking the inputs, got {tokens_fn!r}")
    fixed = {"max_new_tokens", "min_new_tokens", "do_sample"} & set(generate_kwargs)
    if fixed:
        raise FlopsConfigError(
            f"`{sorted(fixed)[0]}` is set by profile_generate (max_new_tokens=N, min_new_tokens=N, do_sample=False); "
            "pass `max_new_tokens` only"
        )
    model = unwrap_compiled(model)
    if generate_fn is None and not callable(getattr(model, "generate", None)):
        raise FlopsConfigError(f"`model` ({type(model).__name__}) has no `generate`: pass `generate_fn(model, inputs)`")
    kwargs = _split_inputs(inputs)
    batch, prompt = _prompt_shape(kwargs)

    def run() -> None:
        if generate_fn is not None:
            generate_fn(model, inputs)
            return
        model.generate(
            **kwargs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
            **generate_kwargs,
        )  # fmt: skip

    marks, uncounted = _count(model, run)
    if not marks.at_forward:
        raise RuntimeError(
            f"generation never called the forward of `model` ({type(model).__name__}): pass the module whose forward "
            "`generate` calls once per token"
        )
    prefill, decode = marks.segments()
    config = getattr(model, "config", None)
    tokens = count_tokens(tokens_fn, inputs, (), kwargs, batch)
    if tokens is None and tokens_fn is None:
        tokens = batch * prompt  # a prompt of embeddings or features: every position
    return GenerationReport(
        model=type(model).__qualname__,
        batch_size=batch,
        prompt_tokens=prompt,
        new_tokens=len(marks.at_forward),
        prefill_macs=macs_from_flops(prefill),
        decode_macs=tuple(macs_from_flops(f) for f in decode),
        tokens=tokens,
        encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
        attention=str(getattr(config, "_attn_implementation", None) or ""),
        params=sum(p.numel() for p in model.parameters()),
        uncounted=uncounted,
        generate_kwargs={k: _shown(v) for k, v in generate_kwargs.items()},
        versions=_versions(),
    )
