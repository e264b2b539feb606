"""The one tree walker over model inputs and outputs: split, walk, move, slice, clone and detect the batch size.

Every function here sees the same containers, in the same way: tensors inside tuples, lists, NamedTuples, mappings
and dataclass instances (frozen ones included), nested to any depth. Anything else is a leaf that is passed through
unchanged (never copied).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from lightning_flops.errors import FlopsConfigError

__all__ = [
    "batch_size_of",
    "clone_tensors",
    "detect_batch_size",
    "iter_tensors",
    "map_tensors",
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


def slice_batch(value: Any, batch: int) -> tuple[Any, bool]:
    """Keep one sample (``t[:1]``, a view) of every tensor whose dim 0 is ``batch``; also says whether any was sliced.

    Args:
        value: a tensor or any nesting of containers (see :func:`map_tensors`).
        batch: the batch size: only tensors with ``shape[0] == batch`` are sliced.
    """
    sliced = False

    def one(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal sliced
        if tensor.dim() > 0 and tensor.shape[0] == batch:
            sliced = True
            return tensor[:1]
        return tensor

    return map_tensors(one, value), sliced
