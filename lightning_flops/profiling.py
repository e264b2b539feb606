"""``profile_model``: run every counter on one example input, without changing the model, and build the report."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any

import torch
from torch import nn

from lightning_flops._compat import fast_meta_kernels
from lightning_flops.comparison import apply_rules, compute_gaps
from lightning_flops.counters.base import COUNTER_NAMES, RawCount, get_counter
from lightning_flops.errors import CounterError, FlopsConfigError
from lightning_flops.isolation import ModelSnapshot, meta_copy, preserved_rng, to_device, unwrap_compiled
from lightning_flops.report import CounterResult, FlopsReport, InputSpec, ParamCount

__all__ = [
    "DEVICES",
    "FLAG_ON",
    "MODES",
    "error_text",
    "iter_tensors",
    "profile_model",
    "split_input",
    "validate_options",
]

MODES = ("eval", "train")
FLAG_ON = ("core", "total")
DEVICES = (None, "meta", "model")

Rule = Callable[[nn.Module, tuple[Any, ...], Any], float]


def validate_options(
    counters: Sequence[str],
    limit: float,
    flag_on: str,
    mode: str,
    custom_ops: Mapping[type, Rule] | None,
    device: str | None = None,
    batch_size: int | None = None,
    strict: bool = False,
) -> tuple[str, ...]:
    """Check the options shared by :func:`profile_model` and ``FlopsMonitor``; raise :class:`FlopsConfigError`.

    Returns:
        The counters as a tuple.
    """
    if isinstance(counters, str) or not isinstance(counters, Sequence):
        raise FlopsConfigError(f"`counters` must be a sequence of names from {COUNTER_NAMES}, got {counters!r}")
    counters = tuple(counters)
    if not counters:
        raise FlopsConfigError(f"`counters` must name at least one counter from {COUNTER_NAMES}, got an empty sequence")
    unknown = [c for c in counters if c not in COUNTER_NAMES]
    if unknown:
        raise FlopsConfigError(f"`counters` must be names from {COUNTER_NAMES}, got unknown {unknown!r}")
    if len(set(counters)) != len(counters):
        raise FlopsConfigError(f"`counters` must not repeat a name, got {counters!r}")
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or math.isnan(limit) or limit < 0:
        raise FlopsConfigError(f"`limit` must be a number >= 0 (a relative gap, e.g. 0.01 for 1%), got {limit!r}")
    if flag_on not in FLAG_ON:
        raise FlopsConfigError(f"`flag_on` must be one of {FLAG_ON}, got {flag_on!r}")
    if mode not in MODES:
        raise FlopsConfigError(f"`mode` must be one of {MODES}, got {mode!r}")
    if device not in DEVICES:
        raise FlopsConfigError(f"`device` must be one of {DEVICES}, got {device!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise FlopsConfigError(f"`batch_size` must be None or an int >= 1, got {batch_size!r}")
    if not isinstance(strict, bool):
        raise FlopsConfigError(f"`strict` must be True or False, got {strict!r}")
    if custom_ops is not None:
        if not isinstance(custom_ops, Mapping):
            raise FlopsConfigError(
                f"`custom_ops` must be a dict {{nn.Module subclass: rule(module, inputs, output) -> MACs}}, "
                f"got {type(custom_ops).__name__}"
            )
        for key, rule in custom_ops.items():
            if not (isinstance(key, type) and issubclass(key, nn.Module)) or not callable(rule):
                raise FlopsConfigError(
                    f"`custom_ops` keys must be nn.Module subclasses and values callables, got {key!r}: {rule!r}"
                )
    return counters


def split_input(example_input: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)``: Tensor -> (x,), tuple/list -> positional, dict -> keywords."""
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


def iter_tensors(value: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside tuples, lists, dicts and dataclasses, with its path (``"0"``, ``"0.image"``, ``"mask"``)."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from iter_tensors(item, f"{path}.{i}" if path else str(i))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from iter_tensors(item, f"{path}.{key}" if path else str(key))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from iter_tensors(getattr(value, field.name), f"{path}.{field.name}" if path else field.name)


def detect_batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Size of dim 0 of the first tensor with a dimension (positional first); 1 when there is none."""
    for _, tensor in (*iter_tensors(list(args), ""), *iter_tensors(kwargs, "")):
        if tensor.dim() > 0:
            return int(tensor.shape[0])
    return 1


def _slice_batch(value: Any, batch: int) -> tuple[Any, bool]:
    """Keep one sample of every tensor whose dim 0 is ``batch``; also says whether anything was sliced."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape[0] == batch:
            return value[:1], True
        return value, False
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        items = [_slice_batch(v, batch) for v in value]
        return type(value)(v for v, _ in items), any(s for _, s in items)
    if isinstance(value, dict):
        items = {k: _slice_batch(v, batch) for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, any(s for _, s in items.values())
    return value, False


def _model_device(model: nn.Module) -> str:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return str(tensor.device) if tensor is not None else "cpu"


def _batch_coupled(model: nn.Module, mode: str) -> bool:
    """Whether samples of a batch affect each other's compute (BatchNorm statistics in training mode)."""
    return mode == "train" and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not model.training) for m in model.modules()
    )


@contextlib.contextmanager
def _rule_hooks(model: nn.Module, custom_ops: Mapping[type, Rule] | None, sink: dict[str, float]) -> Iterator[None]:
    """Evaluate ``custom_ops`` rules on every call of a matching module, summing MACs per module name."""
    handles = []
    if custom_ops:
        for name, module in model.named_modules():
            rule = custom_ops.get(type(module))
            if rule is None:
                continue

            def hook(mod: nn.Module, inputs: Any, output: Any, name: str = name, rule: Rule = rule) -> None:
                sink[name] = sink.get(name, 0) + float(rule(mod, inputs, output))

            handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Session:
    """One profile_model call: the model, the input and options shared by every counter run."""

    def __init__(self, model: nn.Module, args: tuple, kwargs: dict, mode: str, custom_ops: Any, batch: int) -> None:
        self.model, self.args, self.kwargs, self.mode, self.custom_ops = model, args, kwargs, mode, custom_ops
        self.batch = batch
        self.torch_meta_macs: int | None = None
        self._meta_model: nn.Module | None = None

    def _prepared(self, target: nn.Module) -> None:
        if self.mode == "eval":
            target.eval()
        elif not target.training:  # "train" on an eval-mode model: train it all, as fit would (restored after)
            target.train()

    def count(self, counter: Any, placement: str, args: tuple, kwargs: dict) -> tuple[RawCount, dict[str, float], str]:
        rule_macs: dict[str, float] = {}
        if placement == "meta":
            target = self._shared_meta_copy()
            args, kwargs = to_device(args, "meta"), to_device(kwargs, "meta")
            try:
                with torch.no_grad(), fast_meta_kernels(), _rule_hooks(target, self.custom_ops, rule_macs):
                    raw = counter.count(target, args, kwargs)
            except BaseException:
                self._meta_model = None  # a failed counter may have left hooks or buffers: the next gets a fresh copy
                raise
            return raw, rule_macs, "meta"
        snapshot = ModelSnapshot(self.model)
        try:
            self._prepared(self.model)
            with torch.no_grad(), _rule_hooks(self.model, self.custom_ops, rule_macs):
                raw = counter.count(self.model, args, kwargs)
        finally:
            snapshot.restore()
        return raw, rule_macs, _model_device(self.model)

    def _shared_meta_copy(self) -> nn.Module:
        """One meta copy for every counter of this call: deep-copying the module tree is most of the per-module cost
        of counting on meta, and the counters leave nothing on it (thop's buffers and every hook are removed)."""
        if self._meta_model is None:
            self._meta_model = meta_copy(self.model)
            self._prepared(self._meta_model)
        return self._meta_model

    def one_sample_inputs(self) -> tuple[tuple, dict] | None:
        """One sample of the input, when it costs exactly 1/batch of the whole batch (checked with the torch counter
        on meta); ``None`` when the model couples samples, nothing can be sliced or the check cannot run."""
        if self.batch <= 1 or _batch_coupled(self.model, self.mode):
            return None
        one_args, sliced_a = _slice_batch(self.args, self.batch)
        one_kwargs, sliced_k = _slice_batch(self.kwargs, self.batch)
        if not (sliced_a or sliced_k):
            return None
        torch_counter = get_counter("torch")
        try:
            if self.torch_meta_macs is None:
                self.torch_meta_macs = self.count(torch_counter, "meta", self.args, self.kwargs)[0].macs
            one = self.count(torch_counter, "meta", one_args, one_kwargs)[0].macs
        except Exception:
            return None
        return (one_args, one_kwargs) if one > 0 and one * self.batch == self.torch_meta_macs else None


def error_text(err: BaseException) -> str:
    """``"<Type>: <first line of the message>"``, at most 400 characters of message."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(message) > 400:
        message = message[:400] + "..."
    return f"{type(err).__name__}: {message}"


def _checked(raw: Any) -> RawCount:
    macs = getattr(raw, "macs", None)
    valid = isinstance(macs, (int, float)) and not isinstance(macs, bool) and math.isfinite(macs) and macs >= 0
    if not valid:
        raise ValueError(f"counter returned an invalid MAC count: {macs!r}")
    return raw


def _run_counter(name: str, session: _Session, device: str | None, strict: bool) -> CounterResult:
    start = time.perf_counter()
    errors: list[str] = []
    try:
        counter = get_counter(name)
        if device == "meta":
            placements = ["meta"]
        elif device == "model":
            placements = ["model"]
        else:
            placements = ["meta", "model"] if counter.can_count_on_meta(session.model) else ["model"]
        failures: list[tuple[str, str]] = []  # (placement, "<Type>: <message>")
        for placement in placements:
            args, kwargs, scale = session.args, session.kwargs, 1
            one_sample = (
                session.one_sample_inputs() if placement == "model" and device is None and name == "fvcore" else None
            )
            if one_sample is not None:
                (args, kwargs), scale = one_sample, session.batch
            try:
                raw, rule_macs, where = session.count(counter, placement, args, kwargs)
                raw = _checked(raw)
            except Exception as err:
                failures.append((placement, error_text(err)))
                continue
            if name == "torch" and where == "meta" and scale == 1:
                session.torch_meta_macs = int(raw.macs)
            return _result(name, raw, rule_macs, where, scale, time.perf_counter() - start)
        if len({text for _, text in failures}) == 1:
            errors = [failures[0][1]]  # the same failure everywhere: "<Type>: <message>" once
        else:
            errors = [f"{text} (on {placement})" for placement, text in failures]
        raise RuntimeError("; ".join(errors))
    except Exception as err:
        text = "; ".join(errors) if errors else error_text(err)
        if strict:
            raise CounterError(f"counter {name!r} failed: {text}") from err
        return CounterResult(name=name, ok=False, error=text, seconds=time.perf_counter() - start)


def _result(
    name: str, raw: RawCount, rule_macs: dict[str, float], where: str, scale: int, seconds: float
) -> CounterResult:
    raw_macs = int(raw.macs) * scale
    module_operators = {m: {op: int(v) * scale for op, v in ops.items()} for m, ops in raw.module_operators.items()}
    module_operators.setdefault("", {})
    macs = raw_macs
    if rule_macs:  # the rules change the root's count by what they add minus the subtrees they replace
        raw_root = sum(module_operators[""].values())
        module_operators = apply_rules(module_operators, {m: round(v) * scale for m, v in rule_macs.items()})
        macs = raw_macs - raw_root + sum(module_operators[""].values())
    return CounterResult(
        name=name,
        ok=True,
        macs=macs,
        raw_macs=raw_macs,
        device=where,
        module_operators=module_operators,
        uncounted=tuple(raw.uncounted),
        seconds=seconds,
        sample_scale=scale,
    )


def _versions() -> dict[str, str]:
    from lightning_flops.counters.thop_hooks import thop_variant

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    variant = thop_variant()
    return {
        "torch": torch.__version__,
        "thop": variant[1] if variant else "not installed",
        "thop_variant": (
            {"mit": "thop (MIT)", "ultralytics": "ultralytics-thop (AGPL fork)"}[variant[0]] if variant else "none"
        ),
        "fvcore": version("fvcore"),
        "lightning": version("lightning"),
        "lightning_flops": version("lightning-flops"),
    }


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model class and its parameters' names, shapes and dtypes."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
    return digest.hexdigest()[:16]


def count_parameters(model: nn.Module) -> ParamCount:
    """Parameter elements of ``model`` (shared weights once) and of those with ``requires_grad``."""
    params = list(model.parameters())
    return ParamCount(total=sum(p.numel() for p in params), trainable=sum(p.numel() for p in params if p.requires_grad))


def profile_model(
    model: nn.Module,
    example_input: Any,
    counters: Sequence[str] = COUNTER_NAMES,
    limit: float = 0.01,
    flag_on: str = "core",
    mode: str = "eval",
    custom_ops: Mapping[type, Rule] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    strict: bool = False,
) -> FlopsReport:
    """Count MACs, FLOPs and parameters of ``model`` on ``example_input`` with several counters, side by side.

    Every count is in MACs (multiply-accumulates) for the whole call; FLOPs are 2 x MACs. The model is left exactly
    as it was (parameters, buffers, hooks, train/eval flags, ``requires_grad``, RNG state).

    Args:
        model: the module to profile (a ``torch.compile`` wrapper is unwrapped).
        example_input: a Tensor (``model(x)``), a tuple/list (``model(*x)``) or a dict (``model(**x)``).
        counters: names from ``("thop", "fvcore", "torch")``; ``torch`` is the exact reference.
        limit: relative gap above which a pair of counters is flagged.
        flag_on: ``"core"`` compares the MAC core only (conventions never flag); ``"total"`` the totals.
        mode: ``"eval"`` (inference cost, what papers report) or ``"train"`` (the training-mode forward).
        custom_ops: ``{module type: rule(module, inputs, output) -> MACs}`` replacing that subtree in every counter.
        device: ``None`` lets each counter count on a meta copy where it can; ``"meta"`` forces it; ``"model"``
            counts in place on the model's own device.
        batch_size: samples in ``example_input``; ``None`` takes dim 0 of its first tensor.
        strict: raise :class:`CounterError` when a counter fails instead of reporting it.

    Example::

        report = profile_model(nn.Linear(64, 128), torch.randn(2, 10, 64))
        assert report.counters["torch"].macs == 2 * 10 * 64 * 128
    """
    counters = validate_options(counters, limit, flag_on, mode, custom_ops, device, batch_size, strict)
    if not isinstance(model, nn.Module):
        raise FlopsConfigError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = split_input(example_input)
    model = unwrap_compiled(model)
    batch = batch_size if batch_size is not None else detect_batch_size(args, kwargs)
    session = _Session(model, args, kwargs, mode, custom_ops, batch)
    order = sorted(counters, key=lambda c: c != "torch")  # torch first: fvcore's batch slicing reuses its count
    with preserved_rng():
        results = {name: _run_counter(name, session, device, strict) for name in order}
    ordered = [results[name] for name in counters]
    return FlopsReport(
        model=type(model).__qualname__,
        params=count_parameters(model),
        counters={r.name: r for r in ordered},
        batch_size=batch,
        mode=mode,
        limit=float(limit),
        flag_on=flag_on,
        gaps=compute_gaps(ordered, limit, flag_on),
        inputs=tuple(
            InputSpec(name=path, shape=tuple(t.shape), dtype=str(t.dtype).removeprefix("torch."))
            for path, t in (*iter_tensors(list(args), ""), *iter_tensors(kwargs, ""))
        ),
        rules=tuple(f"{t.__name__}: {getattr(r, '__name__', type(r).__name__)}" for t, r in (custom_ops or {}).items()),
        versions=_versions(),
        fingerprint=model_fingerprint(model),
    )
