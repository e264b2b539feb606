"""Model inputs: the one tree walker over inputs and outputs (split, walk, move, slice, clone, batch size) and the
rules that take the model input out of a training batch (:func:`batch_to_input`, :func:`prepare_input`).

Every walker function here sees the same containers, in the same way: tensors inside tuples, lists, NamedTuples,
mappings and dataclass instances (frozen ones included), nested to any depth. Anything else is a leaf that is passed
through unchanged (never copied).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch

from lightning_flops.errors import FlopsConfigError

__all__ = [
    "NoInput",
    "PreparedInput",
    "UserCodeFailed",
    "batch_input",
    "batch_size_of",
    "batch_to_input",
    "call_user",
    "clone_tensors",
    "count_positions",
    "count_tokens",
    "detect_batch_size",
    "detect_tokens",
    "iter_tensors",
    "map_tensors",
    "prepare_input",
    "slice_batch",
    "split_input",
    "to_device",
]


def split_input(example_input: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)``: Tensor -> (x,), tuple/list -> positional, dict -> keywords.

    Args:
        example_input: a Tensor, a tuple/list of positional arguments or a mapping of keyword arguments.
    """
    if isinstance(example_input, torch.Tensor):
        return (example_input,), {}
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input), {}
    if isinstance(example_input, Mapping):
        if not all(isinstance(k, str) for k in example_input):
            raise FlopsConfigError("`example_input` as a dict must have str keys (keyword arguments of forward)")
        return (), dict(example_input)
    raise FlopsConfigError(
        "`example_input` must be a Tensor (model(x)), a tuple/list (model(*x)) or a dict (model(**x)), "
        f"got {type(example_input).__name__}"
    )


def _is_dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _children(value: Any) -> Iterator[tuple[str, Any]] | None:
    """``(key, child)`` pairs of a container, ``None`` for a leaf."""
    if isinstance(value, (list, tuple)):
        return ((str(i), item) for i, item in enumerate(value))
    if isinstance(value, Mapping):
        return ((str(k), item) for k, item in value.items())
    if _is_dataclass_instance(value):
        return ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    return None


def iter_tensors(value: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside ``value`` with its path (``"0"``, ``"0.image"``, ``"mask"``), depth first, in order.

    Args:
        value: a tensor or any nesting of tuples, lists, NamedTuples, mappings and dataclass instances.
        path: prefix of the paths yielded.
    """
    if isinstance(value, torch.Tensor):
        yield path, value
        return
    children = _children(value)
    if children is None:
        return
    for key, item in children:
        yield from iter_tensors(item, f"{path}.{key}" if path else key)


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """``value`` rebuilt with ``fn(t)`` in place of every tensor ``t``; containers keep their type.

    A container without tensors is returned as it is (the same object). A dataclass instance is shallow-copied and
    its fields set on the copy (its ``__init__`` and ``__post_init__`` do not run again, frozen ones included).

    Args:
        fn: applied to each tensor.
        value: a tensor or any nesting of tuples, lists, NamedTuples, mappings and dataclass instances.
    """
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        items = [map_tensors(fn, v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        if _is_namedtuple(value):
            return type(value)(*items)
        try:
            return type(value)(items)
        except TypeError:
            return tuple(items) if isinstance(value, tuple) else list(items)
    if isinstance(value, Mapping):
        items = {k: map_tensors(fn, v) for k, v in value.items()}
        if all(items[k] is v for k, v in value.items()):
            return value
        try:
            return type(value)(items)
        except TypeError:
            return items
    if _is_dataclass_instance(value):
        changed = {f.name: map_tensors(fn, getattr(value, f.name)) for f in dataclasses.fields(value)}
        if all(changed[f.name] is getattr(value, f.name) for f in dataclasses.fields(value)):
            return value
        clone = copy.copy(value)
        for name, item in changed.items():
            object.__setattr__(clone, name, item)
        return clone
    return value


def to_device(value: Any, device: str | torch.device) -> Any:
    """``value`` with every tensor moved to ``device`` (a tensor already there is the same object).

    Args:
        value: a tensor or any nesting of containers (see :func:`map_tensors`).
        device: the target device, e.g. ``"meta"``.
    """
    return map_tensors(lambda t: t.to(device), value)


def clone_tensors(value: Any) -> Any:
    """``value`` with every tensor replaced by a detached clone (meta tensors are kept: they hold no data).

    Args:
        value: a tensor or any nesting of containers (see :func:`map_tensors`).
    """
    return map_tensors(lambda t: t if t.is_meta else t.detach().clone(), value)


def detect_batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Size of dim 0 of the first tensor with a dimension (positional first); 1 when there is none.

    Args:
        args: positional arguments of ``forward``.
        kwargs: keyword arguments of ``forward``.
    """
    for _, tensor in (*iter_tensors(list(args)), *iter_tensors(kwargs)):
        if tensor.dim() > 0:
            return int(tensor.shape[0])
    return 1


def batch_size_of(
    batch: Any, model_input: Callable[[Any], Any], batch_size_fn: Callable[[Any], int] | None = None
) -> int:
    """Samples in a training batch: ``batch_size_fn(batch)``, else dim 0 of the model input taken from it.

    Args:
        batch: the batch as the dataloader gave it.
        model_input: picks the model input out of ``batch``; when it raises (no model input in the batch), the
            batch itself is measured (dim 0 of its first tensor).
        batch_size_fn: the user's own rule, used as it is when given.
    """
    if batch_size_fn is not None:
        return int(batch_size_fn(batch))
    try:
        example = model_input(batch)
    except Exception:  # no model input in the batch: dim 0 of the batch's first tensor
        example = (batch,)
    return detect_batch_size(*split_input(example))


def _token_tensor(args: tuple[Any, ...], kwargs: Mapping[str, Any], batch: int) -> torch.Tensor | None:
    """The first integer tensor of shape ``[batch, T]`` among the inputs (``input_ids``), positional first."""
    for _, tensor in (*iter_tensors(list(args), ""), *iter_tensors(dict(kwargs), "")):
        integer = not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)
        if integer and tensor.dim() == 2 and tensor.shape[0] == batch:
            return tensor
    return None


def detect_tokens(args: tuple[Any, ...], kwargs: dict[str, Any], batch: int) -> int | None:
    """Real tokens in the input: the nonzero entries of an ``attention_mask`` keyword of the same ``[B, T]`` shape as
    the first integer tensor of shape ``[B, T]`` (``input_ids``); without such a mask ``B * T``; ``None`` when the
    input has no such tensor.

    ``B`` must be the batch size. Padding positions (mask 0) are computed by the model, so the MACs include them, but
    they are not tokens: per-token numbers divide by the real ones. :func:`count_positions` as ``tokens_fn`` keeps
    ``B * T``; pass another ``tokens_fn`` for other layouts (packed sequences, sequence-first inputs).
    """
    tensor = _token_tensor(args, kwargs, batch)
    if tensor is None:
        return None
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(tensor.shape) and not mask.is_meta:
        return int(torch.count_nonzero(mask))
    return int(tensor.shape[0] * tensor.shape[1])


def count_positions(value: Any) -> int | None:
    """``tokens_fn`` that counts every position, padding included: ``B * T`` of the first integer ``[B, T]`` tensor
    (``B`` the size of dim 0 of the first tensor), ``None`` without one.

    Args:
        value: a model input (Tensor, tuple/list or dict) or a dict/tuple batch.

    Example::

        lf.profile_model(model, {"input_ids": ids, "attention_mask": mask}, tokens_fn=lf.count_positions)
    """
    args, kwargs = split_input(value) if isinstance(value, (torch.Tensor, tuple, list, Mapping)) else ((value,), {})
    tensor = _token_tensor(args, kwargs, detect_batch_size(args, kwargs))
    return None if tensor is None else int(tensor.shape[0] * tensor.shape[1])


def count_tokens(
    tokens_fn: Callable[[Any], int] | None, value: Any, args: tuple, kwargs: dict, batch: int
) -> int | None:
    """``tokens_fn(value)`` checked (an int >= 0 or ``None`` for no token dimension, else
    :class:`FlopsConfigError`), or :func:`detect_tokens`."""
    if tokens_fn is None:
        return detect_tokens(args, kwargs, batch)
    tokens = tokens_fn(value)
    if tokens is None:
        return None
    if isinstance(tokens, torch.Tensor) and tokens.numel() == 1 and not tokens.is_floating_point():
        tokens = int(tokens.item())
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise FlopsConfigError(f"`tokens_fn` must return an int >= 0 (tokens in the input), got {tokens!r}")
    return tokens


def slice_batch(value: Any, batch: int, keep: int = 1) -> tuple[Any, bool]:
    """Keep ``keep`` samples (``t[:keep]``, a view) of every tensor whose dim 0 is ``batch``; also says whether any
    was sliced.

    Args:
        value: a tensor or any nesting of containers (see :func:`map_tensors`).
        batch: the batch size: only tensors with ``shape[0] == batch`` are sliced.
        keep: the samples to keep.
    """
    sliced = False

    def one(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal sliced
        if tensor.dim() > 0 and tensor.shape[0] == batch:
            sliced = True
            return tensor[:keep]
        return tensor

    return map_tensors(one, value), sliced


# ------------------------------------------------------------------ the input rules of a training batch
class NoInput(Exception):
    """No model input could be taken from the batch; the message says why."""


class UserCodeFailed(Exception):
    """``input_fn(batch)``, ``batch_size_fn(batch)`` or ``tokens_fn(batch)`` raised: the user's error, kept whole in
    ``error`` (not our bug: a failure to report).

    Args:
        what: the argument whose callable raised, e.g. ``"input_fn"``.
        error: the exception it raised.
    """

    def __init__(self, what: str, error: Exception) -> None:
        super().__init__(f"`{what}` raised {type(error).__name__}: {error}")
        self.what = what
        self.error = error


def call_user(what: str, fn: Callable[[Any], Any], batch: Any) -> Any:
    """``fn(batch)``; its exception is wrapped in :class:`UserCodeFailed`.

    Args:
        what: the argument ``fn`` was given as (named in the error).
        fn: the user's callable.
        batch: the batch as the dataloader gave it.
    """
    try:
        return fn(batch)
    except Exception as err:
        raise UserCodeFailed(what, err) from err


def batch_to_input(module: torch.nn.Module, batch: Any) -> Any:
    """The default input rules for a batch; raises :class:`NoInput` when none fits.

    A Tensor batch is the input; a tuple/list batch gives as many leading elements as ``forward`` has required
    positional parameters; a dict batch gives the keys that match ``forward``'s parameter names (all of them when
    ``forward`` takes ``**kwargs``).

    Args:
        module: the LightningModule whose ``forward`` takes the input.
        batch: the batch as the dataloader gave it.
    """
    from lightning.pytorch import LightningModule  # lightning only where a LightningModule is met

    if type(module).forward is LightningModule.forward:
        raise NoInput(f"{type(module).__name__} does not implement `forward`")
    if isinstance(batch, torch.Tensor):
        return batch
    parameters = list(inspect.signature(module.forward).parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if isinstance(batch, (tuple, list)) and not hasattr(batch, "_fields"):
        if not required:
            raise NoInput("`forward` has no required positional parameter to fill from a tuple/list batch")
        if len(required) > len(batch):
            raise NoInput(f"`forward` needs {len(required)} positional arguments, the batch has {len(batch)} items")
        return tuple(batch[: len(required)])
    if isinstance(batch, Mapping):
        if any(p.kind == p.VAR_KEYWORD for p in parameters):
            return dict(batch)
        names = {p.name for p in parameters if p.kind != p.VAR_POSITIONAL}
        chosen = {k: v for k, v in batch.items() if k in names}
        missing = [p.name for p in required if p.name not in chosen]
        if not chosen or missing:
            raise NoInput(
                f"the dict batch keys {sorted(map(str, batch))} do not cover `forward`'s parameters "
                f"{[p.name for p in parameters]}"
            )
        return chosen
    raise NoInput(f"a batch of type {type(batch).__name__} has no default rule")


def batch_input(module: Any, batch: Any, input_fn: Callable[[Any], Any] | None) -> Any:
    """The model input of ``batch`` on the module's device: ``input_fn(batch)``, else :func:`batch_to_input`.

    Raises :class:`NoInput` saying why nothing fits, :class:`UserCodeFailed` when ``input_fn`` raises.

    Args:
        module: the LightningModule (its ``forward`` and ``device``).
        batch: the batch as the dataloader gave it.
        input_fn: the user's rule, or ``None``.
    """
    if input_fn is not None:
        return to_device(call_user("input_fn", input_fn, batch), module.device)
    return to_device(batch_to_input(module, batch), module.device)


class PreparedInput(NamedTuple):
    """What a profile of one batch takes: the input, and what the user's callables said about the batch.

    Args:
        example: the model input to profile.
        from_batch: whether ``example`` was taken from the batch (only then do ``batch_size_fn`` and ``tokens_fn``
            of the batch describe it).
        batch_size: ``batch_size_fn(batch)``, or ``None``.
        tokens_fn: the rule ``profile_model`` gets: one returning ``tokens_fn(batch)`` (called once) when the input
            was taken from the batch, else the user's ``tokens_fn`` (applied to a fixed input) or ``None``.
    """

    example: Any
    from_batch: bool
    batch_size: int | None
    tokens_fn: Callable[[Any], Any] | None


def prepare_input(
    module: Any,
    batch: Any,
    input_fn: Callable[[Any], Any] | None = None,
    example_input: Any = None,
    batch_size_fn: Callable[[Any], int] | None = None,
    tokens_fn: Callable[[Any], Any] | None = None,
) -> PreparedInput:
    """The input rules of ``FlopsMonitor``: ``input_fn(batch)``; else ``example_input``; else the default batch rules
    (:func:`batch_to_input`); else ``module.example_input_array``. Each user callable is called once.

    Raises :class:`NoInput` when no input fits and :class:`UserCodeFailed` when a user callable raises.

    Args:
        module: the LightningModule (``forward``, ``device``, ``example_input_array``).
        batch: the batch as the dataloader gave it.
        input_fn: ``input_fn(batch)`` returns the model input.
        example_input: a fixed input, profiled instead of the batch.
        batch_size_fn: ``batch_size_fn(batch)`` returns the samples in the batch.
        tokens_fn: ``tokens_fn(batch)`` returns the tokens in the batch.
    """
    if example_input is not None:
        example, from_batch = to_device(example_input, module.device), False
    else:
        try:
            example, from_batch = batch_input(module, batch, input_fn), True
        except NoInput:
            fallback = module.example_input_array
            if fallback is None or input_fn is not None:
                raise
            example, from_batch = to_device(fallback, module.device), False
    batch_size = None
    if batch_size_fn is not None and from_batch:
        batch_size = call_user("batch_size_fn", batch_size_fn, batch)
    if tokens_fn is not None and from_batch:
        tokens = call_user("tokens_fn", tokens_fn, batch)  # it describes the batch, not the input
        return PreparedInput(example, from_batch, batch_size, lambda _: tokens)
    return PreparedInput(example, from_batch, batch_size, tokens_fn)
