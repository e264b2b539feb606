"""``profile_model(..., timing=N)``: measured time beside the MACs, per module and operator.

MACs say nothing about time: operators that count no MACs (sort, topk, normalisation, gathers, layout copies) can
hold most of a forward. This module measures, on the model's own device and weights, as every in-place count does (a
structural copy sharing the model's tensors, eval, ``no_grad``, RNG restored by the caller):

1. one warm-up forward, then ``N`` timed plain forwards (no hook, no profiler; CUDA synchronised before and after
   each): :attr:`TimingReport.forward_seconds` is their median;
2. ``min(N, 3)`` more forwards, each under a ``torch.profiler`` session of its own between the timed ones (a change
   of load weighs on both alike), each module's call wrapped in a ``record_function`` scope (hooks on the copy,
   never on the model); each row holds its median over them, so that one forward preempted by another process does
   not decide the split. Each operator the profiler records directly inside a module's scope is a call that
   module's own code made (``aten::einsum``, ``aten::topk``); its time includes the kernels it ran inside
   (``aten::linear`` holds its ``addmm``), so a multiplying call is one row and a layout copy inside it is not
   mistaken for a zero-MAC operator;
3. the join: a call is booked under the label the torch counter uses for its MACs
   (:func:`~lightning_flops.vocabulary.operator_of_call`: ``einsum``, ``linear``, ``matmul``, ``conv``,
   ``attention``, ``rnn``), else under its own aten name (``sort``, ``topk``, ``linalg_vector_norm``); the torch
   counter's MACs per (module, label), made exclusive of submodules, go to the row with the same key. MACs that no
   row matches are kept as :attr:`TimingReport.unjoined_macs`, never spread over other rows.

On CUDA the rows hold device time (the kernels each call launched, :attr:`TimingReport.time_source` ``"device"``).
An already running ``torch.profiler`` (Lightning's ``PyTorchProfiler``) is left alone: the forward is still timed,
the split is skipped and :attr:`TimingReport.note` says why.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from lightning_flops._compat import DeviceType, profiler_enabled
from lightning_flops.errors import CounterError, FlopsConfigError, error_text
from lightning_flops.explain import own_counts
from lightning_flops.isolation import model_device
from lightning_flops.report import CounterResult, OpTime, TimingReport
from lightning_flops.vocabulary import CORE_OPERATORS, operator_of_call

__all__ = [
    "FORWARD_SCOPE",
    "MODULE_SCOPE",
    "PROFILED_PASSES",
    "caller_profiling",
    "check_timing",
    "measure_timing",
    "peak_flops",
    "time_forward",
]

#: Name of the profiler scope around the profiled forward.
FORWARD_SCOPE = "lightning_flops.forward"
#: Prefix of the profiler scope around each module call (the qualified name follows).
MODULE_SCOPE = "lightning_flops.module:"

#: Forwards profiled (at most; never more than the timed ones): each row holds its median over them.
PROFILED_PASSES = 3

#: (module, operator) -> [seconds, calls, packet names seen (the call's and its kernels')]
_Calls = dict[tuple[str, str], list[Any]]


_THREAD = threading.local()


@contextlib.contextmanager
def caller_profiling(active: bool) -> Iterator[None]:
    """Tell the timing on this thread that the thread that handed it the work runs a ``torch.profiler``.

    torch 2.13's profiler state is per thread, but its engine (libkineto) is one per process: a profiler started on
    one thread while another thread's runs ends that one's session, and reading it then crashes the process.
    ``FlopsMonitor`` profiles on a thread of its own: it asks the training thread (where Lightning's
    ``PyTorchProfiler`` or a user's ``with torch.profiler.profile(): trainer.fit()`` runs) and passes the answer here.

    Args:
        active: whether the calling thread had a profiler running.
    """
    previous = getattr(_THREAD, "caller_profiling", False)
    _THREAD.caller_profiling = previous or active
    try:
        yield
    finally:
        _THREAD.caller_profiling = previous


def _profiler_busy() -> bool:
    return profiler_enabled() or getattr(_THREAD, "caller_profiling", False)


def check_timing(timing: Any) -> int:
    """``timing`` as an int >= 0 (forwards to time; 0: no timing), else :class:`FlopsConfigError`."""
    if isinstance(timing, bool) or not isinstance(timing, int) or timing < 0:
        raise FlopsConfigError(
            f"`timing` must be an int >= 0 (plain forwards to time; 0 turns timing off), got {timing!r}"
        )
    return timing


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s for ``dtype`` from Lightning's table (``get_available_flops``); ``None`` when unknown.

    CPUs are not in the table: ``None`` without importing Lightning.
    """
    if device.type not in ("cuda", "xla"):
        return None
    try:
        from lightning.fabric.utilities.throughput import get_available_flops

        value = get_available_flops(device, dtype)
    except Exception:  # a device Lightning cannot name: no peak, no MFU
        return None
    return float(value) if value else None


def _packet(name: str) -> str:
    """``aten::sort`` -> ``sort``; other namespaces keep theirs (``quantized::linear``)."""
    return name.removeprefix("aten::")


def _is_scope(event: Any) -> bool:
    return bool(getattr(event, "is_user_annotation", False)) or event.name.startswith((MODULE_SCOPE, FORWARD_SCOPE))


def _is_operator(event: Any) -> bool:
    return "::" in event.name and not _is_scope(event)


def _time_of(event: Any, source: str) -> float:
    """Inclusive time of a profiler event in seconds (CPU time, or the device time of the kernels it launched)."""
    micros = event.device_time_total if source == "device" else event.cpu_time_total
    return float(micros) / 1e6


def _split(event: Any, module: str, source: str, calls: _Calls) -> None:
    """Book every operator called directly inside the scope ``event`` of ``module`` (recursing into module scopes)."""
    for child in event.cpu_children:
        if _is_scope(child):
            inner = child.name[len(MODULE_SCOPE) :] if child.name.startswith(MODULE_SCOPE) else module
            _split(child, inner, source, calls)
        elif _is_operator(child):
            _book_call(child, module, source, calls)


def _book_call(event: Any, module: str, source: str, calls: _Calls) -> None:
    """Book one operator call (its kernels included) under ``module``; module scopes inside it book themselves."""
    kernels: list[str] = []
    scopes: list[Any] = []
    stack = list(reversed(event.cpu_children))
    while stack:
        inner = stack.pop()
        if inner.name.startswith(MODULE_SCOPE):
            scopes.append(inner)
            continue
        if _is_operator(inner):
            kernels.append(_packet(inner.name))
        stack.extend(reversed(inner.cpu_children))
    name = _packet(event.name)
    operator = operator_of_call(name, tuple(kernels)) or name
    seconds = _time_of(event, source) - sum(_time_of(scope, source) for scope in scopes)
    entry = calls.setdefault((module, operator), [0.0, 0, set()])
    entry[0] += max(seconds, 0.0)
    entry[1] += 1
    entry[2].update((name, *kernels))
    for scope in scopes:
        _split(scope, scope.name[len(MODULE_SCOPE) :], source, calls)


@contextlib.contextmanager
def _module_scopes(target: nn.Module) -> Iterator[None]:
    """Wrap each module call of ``target`` (a private copy) in a profiler scope named after it; hooks removed after.

    ScriptModules take no Python hooks: their operators are booked to the innermost module that takes them.
    """
    names = {id(module): name for name, module in target.named_modules()}
    open_scopes: list[Any] = []

    def enter(module: nn.Module, args: Any) -> None:
        scope = record_function(MODULE_SCOPE + names[id(module)])
        scope.__enter__()
        open_scopes.append(scope)

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        if open_scopes:
            open_scopes.pop().__exit__(None, None, None)

    handles = []
    try:
        for module in target.modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue
            handles.append(module.register_forward_pre_hook(enter, prepend=True))
            handles.append(module.register_forward_hook(leave, always_call=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _synchronizer(device: torch.device) -> Any:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _profiled_pass(target: nn.Module, args: tuple, kwargs: dict, device: torch.device, source: str) -> _Calls | None:
    """One forward under its own ``torch.profiler`` session: seconds and calls per (module, operator); ``None`` when
    the profiler recorded nothing of it."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync = _synchronizer(device)
    with _module_scopes(target), profile(activities=activities) as prof:
        with record_function(FORWARD_SCOPE):
            target(*args, **kwargs)
        sync()
    # CPU events only: on CUDA each scope also has a device-side twin of the same name (a GPU user annotation)
    root = next(
        (
            e
            for e in prof.events()
            if e.name == FORWARD_SCOPE and e.cpu_parent is None and e.device_type == DeviceType.CPU
        ),
        None,
    )
    if root is None:
        return None
    calls: _Calls = {}
    _split(root, "", source, calls)
    return calls


def _median_calls(passes: list[_Calls]) -> _Calls:
    """Per (module, operator) the median seconds over the profiled passes (a pass preempted by another process does
    not decide a row; a row missing from a pass counts 0 there), the calls of one forward, every packet name seen."""
    merged: _Calls = {}
    for key in dict.fromkeys(k for calls in passes for k in calls):
        entries = [calls.get(key) for calls in passes]
        seconds = statistics.median(entry[0] if entry else 0.0 for entry in entries)
        first = next(entry for entry in entries if entry)
        names = set().union(*(entry[2] for entry in entries if entry))
        merged[key] = [seconds, first[1], names]
    return merged


def _join(calls: _Calls, torch_result: CounterResult | None) -> tuple[tuple[OpTime, ...], int]:
    """Rows with the torch counter's own MACs per (module, label) beside them, and the MACs no row matched."""
    ok = torch_result is not None and torch_result.ok
    own = own_counts(torch_result.module_operators) if ok else {}
    uncounted = {(u.module, u.operator) for u in torch_result.uncounted} if ok else set()
    rows = []
    for (module, operator), (seconds, count, names) in calls.items():
        macs = own.get(module, {}).pop(operator, 0) if operator in CORE_OPERATORS else 0
        flagged = any((module, name) in uncounted for name in names)
        rows.append(OpTime(module, operator, seconds, count, int(macs), flagged))
    rows.sort(key=lambda row: (-row.seconds, row.module, row.operator))
    unjoined = sum(v for ops in own.values() for v in ops.values() if v > 0)
    return tuple(rows), int(unjoined)


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer; float32 for a model without one."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def time_forward(
    target: nn.Module, args: tuple, kwargs: dict, repeats: int, torch_result: CounterResult | None
) -> TimingReport:
    """Time ``target(*args, **kwargs)`` ``repeats`` times, profile it once, and join the MACs (see the module doc).

    The caller has made ``target`` a private copy on the model's own device, set its mode and entered ``no_grad``.
    """
    device, dtype = model_device(target), _model_dtype(target)
    if device.type == "meta":
        raise ValueError("the model is on the meta device: it has no weights to time")
    sync = _synchronizer(device)
    sync()
    target(*args, **kwargs)  # warm-up: first-call costs (allocator, oneDNN primitives, CUDA context) are not timed
    source = "device" if device.type == "cuda" else "cpu"
    note = None
    profiled = min(repeats, PROFILED_PASSES)
    if _profiler_busy():
        profiled, note = 0, "another torch.profiler was running: the split by operator was skipped, not to disturb it"
    runs: list[float] = []
    passes: list[_Calls] = []
    for index in range(repeats):  # profiled passes between the timed ones: a change of load weighs on both alike
        sync()
        start = time.perf_counter()
        target(*args, **kwargs)
        sync()
        runs.append(time.perf_counter() - start)
        if index < profiled:
            calls = _profiled_pass(target, args, kwargs, device, source)
            if calls is not None:
                passes.append(calls)
    if profiled and not passes:
        note = "torch.profiler recorded no operator of the forward"
    rows, unjoined = _join(_median_calls(passes), torch_result)
    ok = torch_result is not None and torch_result.ok
    if not ok:
        note = "; ".join(filter(None, [note, "the torch counter did not run: no MACs beside the times"]))
    return TimingReport(
        forward_seconds=statistics.median(runs),
        forward_runs=tuple(runs),
        operators=rows,
        macs=torch_result.macs if ok else None,
        unjoined_macs=unjoined,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        peak_flops_per_second=peak_flops(device, dtype),
        time_source=source,
        note=note,
    )


def measure_timing(session: Any, repeats: int, torch_result: CounterResult | None, strict: bool) -> TimingReport | None:
    """The timing of a ``profile_model`` call, on the session's in-place copy of the model.

    Only the copy's forward is timed: none of the counters' hooks or dispatch modes is active around it.

    Args:
        session: the ``profile_model`` session (its ``in_place`` makes the copy and clones what the forward writes).
        repeats: plain forwards to time (>= 1).
        torch_result: the torch counter's result, for the MACs (``None`` when it was not run).
        strict: raise :class:`CounterError` when the timed forward fails, instead of warning.

    Returns:
        The :class:`TimingReport`, or ``None`` when the forward could not be timed (a warning says why).
    """

    def timed(target: nn.Module, args: tuple, kwargs: dict) -> TimingReport:
        with torch.no_grad():
            return time_forward(target, args, kwargs, repeats, torch_result)

    try:
        report = session.in_place(timed, session.args, session.kwargs, "timing")
    except Exception as err:
        message = f"timing failed: {error_text(err)}"
        if strict:
            raise CounterError(message) from err
        warnings.warn(f"lightning-flops: {message}; the report has no timing", RuntimeWarning, stacklevel=3)
        return None
    return report
