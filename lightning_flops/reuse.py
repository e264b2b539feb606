"""When a stored report may stand for a new count: the reuse key of ``FlopsMonitor`` (pure functions, no state).

A report is reused (a second fit with the same monitor, a resumed fit) only when the key of what it was profiled on
is identical to the key of what would be profiled now.
"""

from __future__ import annotations

import hashlib
import json
import types
from collections.abc import Callable, Mapping
from typing import Any

from lightning_flops.inputs import iter_tensors, split_input

__all__ = ["callable_key", "code_digest", "input_specs", "reuse_key"]


def input_specs(example: Any) -> list[list[Any]]:
    """``[path, shape, dtype]`` of every tensor of a model input, as :class:`~lightning_flops.report.InputSpec`.

    Args:
        example: a Tensor, a tuple/list of positional arguments or a dict of keyword arguments.
    """
    args, kwargs = split_input(example)
    return [[path, list(t.shape), str(t.dtype)] for path, t in (*iter_tensors(list(args)), *iter_tensors(kwargs))]


def code_digest(code: types.CodeType) -> str:
    """Digest of a code object's bytecode, names and constants (nested functions included, addresses excluded).

    Args:
        code: a function's ``__code__``.
    """
    digest = hashlib.sha256(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        digest.update(code_digest(const).encode() if isinstance(const, types.CodeType) else repr(const).encode())
    return digest.hexdigest()[:16]


def callable_key(fn: Any) -> str | None:
    """A text that changes when a rule changes: its qualified name, a digest of its code and its captured values.

    Args:
        fn: a function, a class, a ``functools.partial`` or a callable object (``None`` gives ``None``).
    """
    if fn is None:
        return None
    if isinstance(fn, type) or not callable(fn):
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    code = getattr(fn, "__code__", None)
    if code is None:  # functools.partial and callable objects: their repr shows their arguments (or their address)
        return f"{name}:{fn!r}"
    captured = [cell.cell_contents for cell in (getattr(fn, "__closure__", None) or ())]
    defaults = getattr(fn, "__defaults__", None)
    return f"{name}#{code_digest(code)}:{captured!r}:{defaults!r}"


def reuse_key(
    fingerprint: str,
    options: Mapping[str, Any],
    example: Any,
    train_input: Callable[[], Any] | None,
    batch_size: int | None,
    custom_ops: Mapping[type, Callable[..., float]] | None,
    tokens_fn: Callable[[Any], Any] | None,
    tokens: Any,
    parts: Any,
) -> str | None:
    """Everything a report depends on, as JSON: a stored report is reused only when this is identical.

    ``None`` when an input cannot be described (then nothing is reused; profiling meets the same problem and
    reports it).

    Args:
        fingerprint: the model's fingerprint (:func:`~lightning_flops.parameters.model_fingerprint`).
        options: the profile options (counters, mode, limit, flag_on, strict).
        example: the input that would be profiled now.
        train_input: gives the training-step input when it differs from ``example`` (a fixed ``example_input``).
        batch_size: ``batch_size_fn(batch)``, or ``None``.
        custom_ops: the rules: type and rule names plus a digest of each rule's code and captured values.
        tokens_fn: the user's ``tokens_fn``.
        tokens: ``tokens_fn(batch)``, or ``None``.
        parts: the parts as given.
    """
    try:
        specs = input_specs(example)
        train_specs = input_specs(train_input()) if train_input is not None else None
    except Exception:
        return None
    key = {
        "fingerprint": fingerprint,
        **dict(options),
        "inputs": specs,
        "train_inputs": train_specs,
        "batch_size": batch_size,
        "rules": sorted([callable_key(kind), callable_key(rule)] for kind, rule in (custom_ops or {}).items()),
        "tokens_fn": callable_key(tokens_fn),
        "tokens": tokens,
        "parts": parts,
    }
    return json.dumps(key, sort_keys=True, default=repr)
