"""``profile_model``: run every counter on one example input, without changing the model, and build the report."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import numbers
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook

from lightning_flops._compat import fast_meta_kernels
from lightning_flops.comparison import apply_rules, compute_gaps
from lightning_flops.counters.base import COUNTER_NAMES, RawCount, get_counter
from lightning_flops.errors import CounterError, FlopsConfigError
from lightning_flops.inputs import detect_batch_size, iter_tensors, map_tensors, slice_batch, split_input
from lightning_flops.isolation import (
    ALL,
    CopyRecord,
    ModelSnapshot,
    WriteWatch,
    meta_copy,
    own_global_hooks,
    preserved_rng,
    shared_copy,
    unwrap_compiled,
)
from lightning_flops.parts import count_parts, resolve_parts
from lightning_flops.report import CounterResult, FlopsReport, InputSpec, ParamCount

__all__ = [
    "DEVICES",
    "FLAG_ON",
    "MODES",
    "active_parameters",
    "detect_tokens",
    "error_text",
    "internal_error",
    "profile_model",
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
    if limit >= 1:  # a gap is at most 1 (100%): `limit=1` never flags, `limit=5` was meant as 5%
        warnings.warn(
            f"`limit={limit!r}` is a fraction, not a percentage: a relative gap is at most 1.0, so nothing is ever "
            f"flagged; for {limit:g}% pass limit={limit / 100:g}",
            UserWarning,
            stacklevel=3,
        )
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
            if not (isinstance(key, type) and issubclass(key, nn.Module)) or not (callable(rule) or _is_rate(rule)):
                raise FlopsConfigError(
                    "`custom_ops` keys must be nn.Module subclasses and values callables or numbers >= 0 "
                    f"(MACs per output element), got {key!r}: {rule!r}"
                )
    return counters


def detect_tokens(args: tuple[Any, ...], kwargs: dict[str, Any], batch: int) -> int | None:
    """Tokens in the input: ``B * T`` of the first integer tensor of shape ``[B, T]`` (``input_ids``), else ``None``.

    ``B`` must be the batch size. Padding tokens count (the model computes them); an ``attention_mask`` is not
    used to discount them. Pass ``tokens_fn`` for other layouts (packed sequences, sequence-first inputs).
    """
    for _, tensor in (*iter_tensors(list(args), ""), *iter_tensors(kwargs, "")):
        integer = not (tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool)
        if integer and tensor.dim() == 2 and tensor.shape[0] == batch:
            return int(tensor.shape[0] * tensor.shape[1])
    return None


def count_tokens(
    tokens_fn: Callable[[Any], int] | None, value: Any, args: tuple, kwargs: dict, batch: int
) -> int | None:
    """``tokens_fn(value)`` checked (an int >= 0, else :class:`FlopsConfigError`), or :func:`detect_tokens`."""
    if tokens_fn is None:
        return detect_tokens(args, kwargs, batch)
    tokens = tokens_fn(value)
    if isinstance(tokens, torch.Tensor) and tokens.numel() == 1 and not tokens.is_floating_point():
        tokens = int(tokens.item())
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise FlopsConfigError(f"`tokens_fn` must return an int >= 0 (tokens in the input), got {tokens!r}")
    return tokens


@contextlib.contextmanager
def _called_modules(model: nn.Module, sink: set[str]) -> Iterator[None]:
    """Collect the ``named_modules()`` names of the modules that run.

    One process-wide forward pre-hook filtered by module identity, not a hook per module: registering and removing
    one handle per module was a large part of the per-module cost on models of many small modules. ScriptModules
    run no Python hooks, as before (they refused per-module hooks).
    """
    names = {id(module): name for name, module in model.named_modules()}

    def seen(mod: nn.Module, args: Any) -> None:
        name = names.get(id(mod))
        if name is not None:
            sink.add(name)

    handle = register_module_forward_pre_hook(seen)
    try:
        yield
    finally:
        handle.remove()


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
            packed = getattr(module, "_packed_params", None)
            if isinstance(packed, nn.Module):
                total += packed_parameter_count(packed)
    return total


def _is_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _per_output_element(rate: float) -> Rule:
    """A ``custom_ops`` rule from a number: ``rate`` MACs per element of the module's (first tensor) output."""

    def rule(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> float:
        first = next((t for _, t in iter_tensors(output)), None)
        return rate * (first.numel() if first is not None else 0)

    rule.__name__ = rule.__qualname__ = f"{rate:g} MACs per output element"
    return rule


def expand_custom_ops(custom_ops: Mapping[type, Rule | float] | None) -> dict[type, Rule] | None:
    """``custom_ops`` with each number ``n`` turned into the rule "n MACs per output element" (named so)."""
    if not custom_ops:
        return None
    return {key: _per_output_element(rule) if _is_rate(rule) else rule for key, rule in custom_ops.items()}


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


class RuleValueError(ValueError):
    """A ``custom_ops`` rule returned something that is not a finite number of MACs >= 0."""


def _rule_value(value: Any, module: nn.Module, name: str, rule: Rule) -> float:
    """``value`` as a float when it is a finite number >= 0; else :class:`RuleValueError` naming the rule."""
    number = value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.device.type != "meta":
        number = value.item()
    if isinstance(number, numbers.Real) and not isinstance(number, bool) and math.isfinite(number) and number >= 0:
        return float(number)
    rule_name = getattr(rule, "__qualname__", type(rule).__qualname__)
    raise RuleValueError(
        f"custom_ops rule {rule_name} for {type(module).__name__} (module {name or '<root>'!r}) returned {value!r}; "
        "a rule must return a finite number of MACs >= 0"
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
                sink[name] = sink.get(name, 0) + _rule_value(rule(mod, inputs, output), mod, name, rule)

            handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _indexed(fn: Callable[[int, torch.Tensor], torch.Tensor], args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with ``fn(i, t)`` for the i-th tensor met (the same order for a batch and its slice)."""
    counter = iter(range(1 << 62))
    new_args, new_kwargs = map_tensors(lambda t: fn(next(counter), t), (args, kwargs))
    return new_args, new_kwargs


def _materialize_lazy(target: nn.Module, args: tuple, kwargs: dict) -> None:
    """Initialize the lazy modules of a copy with one plain forward, so that counters see their final types
    (``LazyLinear`` becomes ``Linear``: thop picks its rule by type)."""
    from torch.nn.modules.lazy import LazyModuleMixin

    if any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in target.modules()):
        with torch.no_grad(), own_global_hooks():
            target(*args, **kwargs)


class _Session:
    """One profile_model call: the model, the input and options shared by every counter run.

    Every counter runs on a structural copy (:mod:`lightning_flops.isolation`): a meta copy, or for counting in
    place a copy sharing the model's tensors. Before the first in-place count, a watched forward (:class:`WriteWatch`:
    on meta, else in place with copy on write) shows which tensors of the model and of the input the forward writes;
    counting in place then clones exactly those, so the model's values and the caller's batch never change.
    """

    def __init__(self, model: nn.Module, args: tuple, kwargs: dict, mode: str, custom_ops: Any, batch: int) -> None:
        self.model, self.args, self.kwargs, self.mode, self.custom_ops = model, args, kwargs, mode, custom_ops
        self.batch = batch
        self.torch_meta_macs: int | None = None
        self.called: dict[str, set[str]] = {}  # counter name -> modules that ran in its successful count
        self.written: frozenset[int] | set[int] | None = None  # ids of model tensors the forward writes; ALL
        self.written_inputs: set[int] | None = None  # indices (see _indexed) of input tensors it writes; None: all
        self.scripted = any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())
        self._meta_model: nn.Module | None = None  # the meta copy shared by the counters (see _meta_pass)

    def _prepared(self, target: nn.Module) -> None:
        if self.mode == "eval":
            target.eval()
        elif not target.training:  # "train" on an eval-mode model: train it all, as fit would (copy only)
            target.train()

    def _meta_pass(
        self,
        args: tuple,
        kwargs: dict,
        run: Callable[[nn.Module, tuple, dict], Any],
        record: CopyRecord | None = None,
        shared: bool = False,
    ) -> tuple[Any, list[torch.Tensor]]:
        """``run(copy, args, kwargs)`` on a meta copy with meta inputs; also returns the meta inputs, in order.

        ``shared``: the counters use one copy per call (deep-copying the module tree is most of the per-module cost
        of counting on meta; thop's buffers and every hook are removed after each count); a failed run drops it.
        """
        target = self._meta_model if shared else None
        if target is None:
            target = meta_copy(self.model, record)
            self._prepared(target)
            if shared:
                self._meta_model = target
        inputs: list[torch.Tensor] = []

        def to_meta(index: int, tensor: torch.Tensor) -> torch.Tensor:
            inputs.append(tensor.to("meta"))
            return inputs[-1]

        meta_args, meta_kwargs = _indexed(to_meta, args, kwargs)
        try:
            _materialize_lazy(target, meta_args, meta_kwargs)
            return run(target, meta_args, meta_kwargs), inputs
        except BaseException:
            if shared:
                self._meta_model = None  # a failed counter may have left hooks or buffers: the next gets a fresh copy
            raise

    def _learn_writes(self) -> None:
        """Find what the forward writes in place with one watched meta pass; unknown (clone all) when it fails."""
        record = CopyRecord()
        watch: WriteWatch | None = None

        def forward(target: nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
            nonlocal watch
            model_tensors = {id(real): twin for real, twin in record.pairs}
            inputs = [t for t in iter_tensors((args, kwargs))]
            watched = {**model_tensors, **{-1 - i: t for i, (_, t) in enumerate(inputs)}}
            with torch.no_grad(), own_global_hooks(), WriteWatch(watched) as watch:
                target(*args, **kwargs)
            return []

        try:
            self._meta_pass(self.args, self.kwargs, forward, record)
        except Exception:
            self._learn_writes_in_place()
            return
        assert watch is not None
        self.written = {key for key in watch.hit if key >= 0}
        self.written_inputs = {-1 - key for key in watch.hit if key < 0}

    def _learn_writes_in_place(self) -> None:
        """When no meta forward can run (``.item()``): one plain forward on a copy sharing the real tensors, each
        snapshotted just before its first write and written back after; unknown (clone all) when it fails too."""
        record = CopyRecord()
        watch: WriteWatch | None = None
        try:
            target = shared_copy(self.model, record=record)
            self._prepared(target)
            inputs = [t for _, t in iter_tensors((self.args, self.kwargs))]
            watched = {id(real): real for real, held in record.pairs if held is real}
            watched.update({-1 - i: t for i, t in enumerate(inputs)})
            with torch.no_grad(), own_global_hooks(), WriteWatch(watched, snapshot=True) as watch:
                target(*self.args, **self.kwargs)
        except Exception:
            self.written, self.written_inputs = ALL, None
            return
        finally:
            if watch is not None:
                watch.restore()
        self.written = {key for key in watch.hit if key >= 0}
        self.written_inputs = {-1 - key for key in watch.hit if key < 0}

    def parameter_model(self) -> nn.Module:
        """The model whose parameters are counted: itself, or for lazy modules a meta copy after one forward (their
        shapes come from the input); the model itself when that forward fails."""
        if not any(isinstance(p, nn.parameter.UninitializedParameter) for p in self.model.parameters()):
            return self.model

        def forward(target: nn.Module, args: tuple, kwargs: dict) -> nn.Module:
            with torch.no_grad(), own_global_hooks():
                target(*args, **kwargs)
            return target

        try:
            return self._meta_pass(self.args, self.kwargs, forward)[0]
        except Exception:
            return self.model

    def count(self, counter: Any, placement: str, args: tuple, kwargs: dict) -> tuple[RawCount, dict[str, float], str]:
        rule_macs: dict[str, float] = {}

        def run(target: nn.Module, run_args: tuple, run_kwargs: dict) -> RawCount:
            called: set[str] = set()
            rules = _rule_hooks(target, self.custom_ops, rule_macs)
            with torch.no_grad(), own_global_hooks(), rules, _called_modules(target, called):
                raw = counter.count(target, run_args, run_kwargs)
            self.called[counter.name] = called
            return raw

        if placement == "meta":
            with fast_meta_kernels():
                raw, _ = self._meta_pass(args, kwargs, run, shared=True)
            return raw, rule_macs, "meta"
        if self.written is None and not self.scripted:
            self._learn_writes()
        written_inputs = self.written_inputs
        args, kwargs = _indexed(
            lambda i, t: t if written_inputs is not None and i not in written_inputs else t.detach().clone(),
            args,
            kwargs,
        )
        requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            if self.scripted:  # no structural copy of a ScriptModule: count on it, then restore what can be
                snapshot = ModelSnapshot(self.model)
                try:
                    self._prepared(self.model)
                    raw = run(self.model, args, kwargs)
                finally:
                    snapshot.restore()
            else:
                target = shared_copy(self.model, self.written if self.written is not None else ALL)
                self._prepared(target)
                _materialize_lazy(target, args, kwargs)
                raw = run(target, args, kwargs)
        finally:
            for param, flag in requires_grad:
                if param.requires_grad != flag:
                    param.requires_grad_(flag)
        return raw, rule_macs, _model_device(self.model)

    def one_sample_inputs(self) -> tuple[tuple, dict] | None:
        """One sample of the input, when it costs exactly 1/batch of the whole batch (checked with the torch counter
        on meta); ``None`` when the model couples samples, nothing can be sliced or the check cannot run."""
        if self.batch <= 1 or _batch_coupled(self.model, self.mode):
            return None
        one_args, sliced_a = slice_batch(self.args, self.batch)
        one_kwargs, sliced_k = slice_batch(self.kwargs, self.batch)
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
    """Run one counter; a failure of the counting library or of the user's forward becomes a failed result.

    Only the counter's own work (building the adapter, counting, the MAC count it returns) is a counter failure;
    an error in our post-processing of a good count is a lightning-flops bug: see :func:`internal_error`.
    """
    start = time.perf_counter()
    failures: list[tuple[str, BaseException]] = []  # (placement, the exception itself, traceback included)
    try:
        counter = get_counter(name)
        placements = _placements(counter, session, device)
    except Exception as err:
        failures.append(("", err))
        placements = []
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
            failures.append((placement, err))
            continue
        if name == "torch" and where == "meta" and scale == 1:
            session.torch_meta_macs = int(raw.macs)
        note = "; ".join(f"{p}: {error_text(e)}" for p, e in failures) or None  # why the earlier placements failed
        try:
            return _result(name, raw, rule_macs, where, scale, time.perf_counter() - start, note)
        except Exception as err:  # the count is good: failing to read it is our bug, not the counter's
            text = internal_error(err, f"reading the result of counter {name!r}", strict)
            return CounterResult(name=name, ok=False, error=text, seconds=time.perf_counter() - start)
    texts = [error_text(err) for _, err in failures]
    if len(set(texts)) == 1:
        text = texts[0]  # the same failure everywhere: "<Type>: <message>" once
    else:
        text = "; ".join(f"{t} (on {placement})" for (placement, _), t in zip(failures, texts, strict=True))
    if strict:
        # chained from the real exception (the last placement tried: in place, the user's own forward)
        raise CounterError(f"counter {name!r} failed: {text}") from failures[-1][1]
    return CounterResult(name=name, ok=False, error=text, seconds=time.perf_counter() - start)


def _placements(counter: Any, session: _Session, device: str | None) -> list[str]:
    """Where to try counting, in order: ``device`` when forced, else meta first where the counter can count there."""
    if device == "meta":
        return ["meta"]
    if device == "model":
        return ["model"]
    return ["meta", "model"] if counter.can_count_on_meta(session.model) else ["model"]


def internal_error(err: BaseException, context: str, strict: bool) -> str:
    """Make an error in lightning-flops' own code loud: re-raise it under ``strict``, else warn with its traceback.

    Args:
        err: the exception, raised by our code (not by a counting library or the user's model).
        context: what we were doing, for the message (``"reading the result of counter 'torch'"``).
        strict: raise instead of warning.

    Returns:
        The text a report keeps for it: ``"lightning-flops bug while <context>: <Type>: <message>"``.
    """
    text = f"lightning-flops bug while {context}: {error_text(err)}"
    if strict:
        if hasattr(err, "add_note"):  # Python >= 3.11
            err.add_note(f"{text}. This is a bug in lightning-flops, not in your model; please report it.")
        raise err
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    warnings.warn(
        f"{text}. This is a bug in lightning-flops, not in your model; please report it with this traceback:\n{trace}",
        RuntimeWarning,
        stacklevel=2,
    )
    return text


def _result(
    name: str,
    raw: RawCount,
    rule_macs: dict[str, float],
    where: str,
    scale: int,
    seconds: float,
    note: str | None = None,
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
        device_note=note,
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
        lazy = isinstance(param, nn.parameter.UninitializedParameter)
        digest.update(f"{name}:{'lazy' if lazy else tuple(param.shape)}:{param.dtype}".encode())
    return digest.hexdigest()[:16]


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


def count_parameters(model: nn.Module) -> ParamCount:
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
    tokens_fn: Callable[[Any], int] | None = None,
    parts: Mapping[str, str | Sequence[str]] | None = None,
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
        custom_ops: ``{module type: rule(module, inputs, output) -> MACs}`` replacing that subtree in every counter;
            a number ``n`` instead of a rule means ``n`` MACs per output element (``{nn.LayerNorm: 4}``).
        device: ``None`` lets each counter count on a meta copy where it can; ``"meta"`` forces it; ``"model"``
            counts in place on the model's own device.
        batch_size: samples in ``example_input``; ``None`` takes dim 0 of its first tensor.
        strict: raise :class:`CounterError` when a counter fails instead of reporting it.
        tokens_fn: ``tokens_fn(example_input)`` returns the tokens in the input (``report.tokens``, per-token
            numbers); ``None`` takes ``B * T`` of an integer ``[B, T]`` tensor (``input_ids``), padding included.
        parts: ``{label: module name or list of names}``; the report gets MACs per counter and params per part.

    Example::

        report = profile_model(nn.Linear(64, 128), torch.randn(2, 10, 64))
        assert report.counters["torch"].macs == 2 * 10 * 64 * 128
    """
    counters = validate_options(counters, limit, flag_on, mode, custom_ops, device, batch_size, strict)
    if not isinstance(model, nn.Module):
        raise FlopsConfigError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if tokens_fn is not None and not callable(tokens_fn):
        raise FlopsConfigError(f"`tokens_fn` must be None or a callable taking the input, got {tokens_fn!r}")
    args, kwargs = split_input(example_input)
    model = unwrap_compiled(model)
    part_names = resolve_parts(model, parts)
    custom_ops = expand_custom_ops(custom_ops)
    batch = batch_size if batch_size is not None else detect_batch_size(args, kwargs)
    session = _Session(model, args, kwargs, mode, custom_ops, batch)
    order = sorted(counters, key=lambda c: c != "torch")  # torch first: fvcore's batch slicing reuses its count
    with preserved_rng():
        results = {name: _run_counter(name, session, device, strict) for name in order}
    ordered = [results[name] for name in counters]
    tokens = count_tokens(tokens_fn, example_input, args, kwargs, batch)
    called = next((session.called[n] for n in order if results[n].ok and n in session.called), None)
    parameter_model = session.parameter_model()
    params = count_parameters(parameter_model)
    if called is not None:
        params = dataclasses.replace(params, active=active_parameters(parameter_model, called))
    return FlopsReport(
        model=type(model).__qualname__,
        params=params,
        tokens=tokens,
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
        module_types={name: type(module).__name__ for name, module in model.named_modules()},
        module_params=own_parameters(model),
        parts=count_parts(model, part_names, ordered),
    )
