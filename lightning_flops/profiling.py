"""``profile_model``: run every counter on one example input, without changing the model, and build the report.

This module sequences; the work is elsewhere: :mod:`~lightning_flops.options` checks the arguments,
:mod:`~lightning_flops.rules` evaluates ``custom_ops``, :mod:`~lightning_flops.placement` decides where each counter
counts (meta copy or in place), :mod:`~lightning_flops.parameters` counts parameters and :mod:`~lightning_flops.errors`
holds the error policy.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import torch
from torch import nn

from lightning_flops.comparison import apply_rules, compute_gaps
from lightning_flops.counters.base import COUNTER_NAMES, RawCount, get_counter
from lightning_flops.errors import CounterError, FlopsConfigError, all_failed_message, error_text, internal_error
from lightning_flops.inputs import count_positions, count_tokens, detect_batch_size, iter_tensors, split_input
from lightning_flops.isolation import preserved_generators, preserved_rng, unwrap_compiled
from lightning_flops.moe import check_moe_routing
from lightning_flops.options import validate_options
from lightning_flops.parameters import (
    active_parameters,
    active_per_token,
    model_fingerprint,
    own_parameters,
    param_count,
    read_parameters,
)
from lightning_flops.parts import count_parts, resolve_parts
from lightning_flops.placement import CountSession, checked, placement_order
from lightning_flops.report import CounterResult, FlopsReport, InputSpec
from lightning_flops.rules import Rule, expand_custom_ops
from lightning_flops.timing import check_timing, measure_timing
from lightning_flops.vocabulary import type_label

__all__ = ["installed_version", "profile_model"]


def _changed_in_place(name: str, session: CountSession) -> list[str]:
    """Warn when counting in place changed tensors of the model (a write no dispatch mode sees, such as one through
    ``.numpy()``); the text for the counter's ``device_note`` (``[]`` when nothing changed)."""
    changed = session.changed.pop(name, None)
    if not changed:
        return []
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    text = f"counting in place changed the model's tensors {shown} (a write no dispatch mode sees)"
    warnings.warn(f"profile_model: counter {name!r}: {text}", RuntimeWarning, stacklevel=3)
    return [text]


def _run_counter(name: str, session: CountSession, device: str | None, strict: bool) -> CounterResult:
    """Run one counter; a failure of the counting library or of the user's forward becomes a failed result.

    Only the counter's own work (building the adapter, counting, the MAC count it returns) is a counter failure;
    an error in our post-processing of a good count is a lightning-flops bug: see :func:`internal_error`.
    """
    start = time.perf_counter()
    failures: list[tuple[str, BaseException]] = []  # (placement, the exception itself, traceback included)
    try:
        counter = get_counter(name)
        placements = placement_order(counter, session, device)
    except Exception as err:
        failures.append(("", err))
        placements = []
    for placement in placements:
        scale = 1
        try:
            one_sample = (
                session.one_sample_inputs() if placement == "model" and device is None and name == "fvcore" else None
            )
            if one_sample is not None:  # the count is of the whole batch, extrapolated from one or two samples
                raw, rule_macs, where, scale = session.count_sampled(counter, *one_sample)
            else:
                raw, rule_macs, where = session.count(counter, placement, session.args, session.kwargs)
            raw = checked(raw)
        except Exception as err:
            failures.append((placement, err))
            continue
        finally:
            changed = _changed_in_place(name, session)
        if name == "torch" and where == "meta" and scale == 1:
            session.torch_meta_macs = int(raw.macs)
        # why the earlier placements failed, and where (module, torch function) when a meta pass says; what an
        # in-place count changed anyway
        note = "; ".join([f"{p}: {error_text(e, where=True)}" for p, e in failures] + changed) or None
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


def _result(
    name: str,
    raw: RawCount,
    rule_macs: dict[str, float],
    where: str,
    scale: int,
    seconds: float,
    note: str | None = None,
) -> CounterResult:
    raw_macs = int(raw.macs)  # of the whole batch; ``scale``: samples per counted sample, for the rules' MACs
    module_operators = {m: {op: int(v) for op, v in ops.items()} for m, ops in raw.module_operators.items()}
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


def installed_version(dist: str) -> str:
    """The installed version of the distribution ``dist`` (``"not installed"`` without it), for a report's
    ``versions``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _versions() -> dict[str, str]:
    from lightning_flops.counters.thop_hooks import thop_variant

    variant = thop_variant()
    return {
        "torch": torch.__version__,
        "thop": variant[1] if variant else "not installed",
        "thop_variant": (
            {"mit": "thop (MIT)", "ultralytics": "ultralytics-thop (AGPL fork)"}[variant[0]] if variant else "none"
        ),
        "fvcore": installed_version("fvcore"),
        "lightning": installed_version("lightning"),
        "lightning_flops": installed_version("lightning-flops"),
    }


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
    timing: int = 0,
    moe_routing: str | None = None,
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
            numbers); ``None`` counts the real tokens: the nonzero entries of an ``attention_mask`` keyword shaped
            like the integer ``[B, T]`` tensor (``input_ids``), else ``B * T``; :func:`~lightning_flops.count_positions`
            keeps ``B * T`` (padding included).
        parts: ``{label: module name or list of names}``; the report gets MACs per counter and params per part.
        timing: ``N`` >= 1 times ``N`` plain forwards on the model's own device and weights and splits up to 3 more
            by module and operator under ``torch.profiler``, beside the torch counter's MACs (``report.timing``);
            0 (the default) measures nothing. See :mod:`lightning_flops.timing`.
        moe_routing: ``"balanced"``: on meta, where a router's choice cannot run, each expert of a fused-experts
            ``_grouped_mm`` gets ``tokens * top_k / num_experts`` rows (the total is exact for top-k routing; only
            the split over experts is assumed), stated in ``report.moe_routing`` and the statement; ``None``
            (default): routing as it runs. See :mod:`lightning_flops.moe`.

    Example::

        report = profile_model(nn.Linear(64, 128), torch.randn(2, 10, 64))
        assert report.counters["torch"].macs == 2 * 10 * 64 * 128
    """
    counters = validate_options(counters, limit, flag_on, mode, custom_ops, device, batch_size, strict)
    if not isinstance(model, nn.Module):
        raise FlopsConfigError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    timing = check_timing(timing)
    moe_routing = check_moe_routing(moe_routing)
    if tokens_fn is not None and not callable(tokens_fn):
        raise FlopsConfigError(f"`tokens_fn` must be None or a callable taking the input, got {tokens_fn!r}")
    args, kwargs = split_input(example_input)
    model = unwrap_compiled(model)
    part_names = resolve_parts(model, parts)
    custom_ops = expand_custom_ops(custom_ops)
    batch = batch_size if batch_size is not None else detect_batch_size(args, kwargs)
    session = CountSession(model, args, kwargs, mode, custom_ops, batch)
    session.moe_routing = moe_routing
    order = sorted(counters, key=lambda c: c != "torch")  # torch first: fvcore's batch slicing reuses its count
    with preserved_rng(), preserved_generators(model):
        results = {name: _run_counter(name, session, device, strict) for name in order}
        timed = measure_timing(session, timing, results.get("torch"), strict) if timing else None
    ordered = [results[name] for name in counters]
    if not any(result.ok for result in ordered):  # not strict (strict raised): a report of failures, said out loud
        kind = "dict" if kwargs and not args else "sequence" if isinstance(example_input, (tuple, list)) else "tensor"
        errors = {result.name: result.error or "failed" for result in ordered}
        warnings.warn(all_failed_message(type(model).__qualname__, errors, kind), UserWarning, stacklevel=2)
    tokens = count_tokens(tokens_fn, example_input, args, kwargs, batch)
    called = next((session.called[n] for n in order if results[n].ok and n in session.called), None)
    parameter_model = session.parameter_model()
    params = param_count(parameter_model)
    if called is not None:  # active: the parameters the torch counter's operators read, else those of called modules
        recorded = {n: session.reads[n] for n in order if results[n].ok and n in session.reads}
        reads, recorder = read_parameters(recorded), next(iter(recorded.values()), None)
        params = dataclasses.replace(
            params,
            active=active_parameters(parameter_model, called, reads),
            active_per_token=active_per_token(parameter_model, recorder, count_positions(example_input)),
        )
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
        rules=tuple(
            f"{type_label(t)}: {getattr(r, '__name__', type(r).__name__)}" for t, r in (custom_ops or {}).items()
        ),
        versions=_versions(),
        fingerprint=model_fingerprint(model),
        module_types={name: type_label(type(module)) for name, module in model.named_modules()},
        module_params=own_parameters(model),
        parts=count_parts(model, part_names, ordered, batch),
        timing=timed,
        moe_routing=moe_routing if session.moe_assumed else None,
    )
