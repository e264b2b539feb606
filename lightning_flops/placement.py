"""Where a counter counts: on a meta copy, or in place on a copy sharing the model's tensors (cloning what the
forward writes), and one sample of the batch where that costs exactly 1/batch; the model itself is never changed."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_flops._compat import batch_norm_types, fast_meta_kernels
from lightning_flops.counters.base import RawCount, get_counter
from lightning_flops.counters.tracing import module_hooks_of_this_count
from lightning_flops.inputs import iter_tensors, map_tensors, slice_batch
from lightning_flops.isolation import (
    ALL,
    CopyRecord,
    ValueCheck,
    WriteWatch,
    meta_copy,
    model_device,
    restored_scripts,
    shared_copy,
)
from lightning_flops.moe import MetaRouting
from lightning_flops.on_meta import fixed_devices_on_meta, locate_failure
from lightning_flops.parameters import ParameterReads
from lightning_flops.rules import rule_hooks
from lightning_flops.vocabulary import CORE_OPERATORS

__all__ = ["CountSession", "checked", "extrapolated", "placement_order"]

_T = TypeVar("_T")


@contextlib.contextmanager
def _called_modules(model: nn.Module, sink: set[str]) -> Iterator[None]:
    """Collect the ``named_modules()`` names of the modules that run.

    One process-wide forward pre-hook filtered by module identity and by thread (only this count's calls), not a
    hook per module: registering and removing one handle per module was a large part of the per-module cost on
    models of many small modules. ScriptModules run no Python hooks, as before (they refused per-module hooks).
    """
    names = {id(module): name for name, module in model.named_modules()}

    def seen(mod: nn.Module, args: Any) -> None:
        name = names.get(id(mod))
        if name is not None:
            sink.add(name)

    with module_hooks_of_this_count(pre=seen):
        yield


def _batch_coupled(model: nn.Module, mode: str) -> bool:
    """Whether samples of a batch affect each other's compute (BatchNorm statistics in training mode)."""
    batch_norms = batch_norm_types()
    return mode == "train" and any(
        isinstance(m, batch_norms) and (m.training or not model.training) for m in model.modules()
    )


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
        with torch.no_grad():
            target(*args, **kwargs)


class CountSession:
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
        self.changed: dict[str, list[str]] = {}  # counter name -> model tensors changed by its in-place count
        self.reads: dict[str, ParameterReads] = {}  # counter name -> parameters its operators read (torch only)
        self.written: frozenset[int] | set[int] | None = None  # ids of model tensors the forward writes; ALL
        self.written_inputs: set[int] | None = None  # indices (see _indexed) of input tensors it writes; None: all
        self._meta_model: nn.Module | None = None  # the meta copy shared by the counters (see _meta_pass)
        self.moe_routing: str | None = None  # the routing assumption on meta (lightning_flops.moe)
        self.moe_assumed = False  # whether a count ran a meta _grouped_mm under it

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
            with fixed_devices_on_meta():  # a tensor the forward makes on a fixed device is made on meta too
                _materialize_lazy(target, meta_args, meta_kwargs)
                return run(target, meta_args, meta_kwargs), inputs
        except BaseException as err:
            locate_failure(err, target)  # the note then names the module and the torch function that raised
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
            with torch.no_grad(), WriteWatch(watched) as watch:
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
            with restored_scripts(self.model):
                target = shared_copy(self.model, record=record)
                self._prepared(target)
                inputs = [t for _, t in iter_tensors((self.args, self.kwargs))]
                watched = {id(real): real for real, held in record.pairs if held is real}
                watched.update({-1 - i: t for i, t in enumerate(inputs)})
                with torch.no_grad(), WriteWatch(watched, snapshot=True) as watch:
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
            with torch.no_grad():
                target(*args, **kwargs)
            return target

        try:
            return self._meta_pass(self.args, self.kwargs, forward)[0]
        except Exception:
            return self.model

    def count(
        self, counter: Any, placement: str, args: tuple, kwargs: dict, record: bool = True
    ) -> tuple[RawCount, dict[str, float], str]:
        """Count ``counter`` at ``placement`` on a copy; with ``record``, keep the modules that ran and (for the torch
        counter) the parameters its operators read, for ``params.active``."""
        rule_macs: dict[str, float] = {}

        def run(target: nn.Module, run_args: tuple, run_kwargs: dict) -> RawCount:
            called: set[str] = set()
            rules = rule_hooks(target, self.custom_ops, rule_macs)
            reads = ParameterReads(target, self.moe_routing) if record and counter.name == "torch" else None
            watch = reads if reads is not None else contextlib.nullcontext()
            routing = MetaRouting(self.moe_routing)  # beneath the reads and the counter: they see its output
            with torch.no_grad(), rules, _called_modules(target, called), routing, watch:
                raw = counter.count(target, run_args, run_kwargs)
            self.moe_assumed = self.moe_assumed or routing.assumed
            if record:
                self.called[counter.name] = called
                if reads is not None:
                    self.reads[counter.name] = reads
            return raw

        if placement == "meta":
            with fast_meta_kernels():
                raw, _ = self._meta_pass(args, kwargs, run, shared=True)
            return raw, rule_macs, "meta"
        return self.in_place(run, args, kwargs, counter.name), rule_macs, str(model_device(self.model))

    def in_place(self, run: Callable[[nn.Module, tuple, dict], _T], args: tuple, kwargs: dict, name: str) -> _T:
        """``run(copy, args, kwargs)`` on an in-place copy of the model (its real tensors shared, those the forward
        writes cloned, the mode set), with the inputs it writes cloned; tensors that changed anyway are booked in
        :attr:`changed` under ``name``.

        Args:
            run: what to do with the copy (a count, or the timed forwards of :mod:`lightning_flops.timing`).
            args: positional inputs of the forward.
            kwargs: keyword inputs of the forward.
            name: the counter (or ``"timing"``) the changes are booked to.
        """
        check = ValueCheck(self.model)  # every write should be seen and undone: check, do not trust it
        try:
            if self.written is None:
                self._learn_writes()
            written_inputs = self.written_inputs
            args, kwargs = _indexed(
                lambda i, t: t if written_inputs is not None and i not in written_inputs else t.detach().clone(),
                args,
                kwargs,
            )
            requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
            try:
                with restored_scripts(self.model):  # a ScriptModule has no structural copy: it is shared, then restored
                    target = shared_copy(self.model, self.written if self.written is not None else ALL)
                    self._prepared(target)
                    _materialize_lazy(target, args, kwargs)
                    return run(target, args, kwargs)
            finally:
                for param, flag in requires_grad:
                    if param.requires_grad != flag:
                        param.requires_grad_(flag)
        finally:
            changed = check.changed()
            if changed:
                self.changed.setdefault(name, []).extend(changed)

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
                self.torch_meta_macs = self.count(torch_counter, "meta", self.args, self.kwargs, record=False)[0].macs
            one = self.count(torch_counter, "meta", one_args, one_kwargs, record=False)[0].macs
        except Exception:
            return None
        return (one_args, one_kwargs) if one > 0 and one * self.batch == self.torch_meta_macs else None

    def count_sampled(
        self, counter: Any, one_args: tuple, one_kwargs: dict
    ) -> tuple[RawCount, dict[str, float], str, int]:
        """Count in place on one sample and extrapolate to the batch (:func:`extrapolated`, with a count of two
        samples when a convention was counted); the whole batch where that cannot be done.

        Returns:
            ``(count of the batch, rule MACs of one sample, device, samples per counted sample)``.
        """
        raw, rule_macs, where = self.count(counter, "model", one_args, one_kwargs)
        raw = checked(raw)
        two = None
        conventions = any(
            v for ops in raw.module_operators.values() for op, v in ops.items() if op not in CORE_OPERATORS
        )
        if conventions and self.batch > 2:
            two_args, _ = slice_batch(self.args, self.batch, keep=2)
            two_kwargs, _ = slice_batch(self.kwargs, self.batch, keep=2)
            two = checked(self.count(counter, "model", two_args, two_kwargs, record=False)[0])
        whole = extrapolated(raw, two, self.batch)
        if whole is None:
            raw, rule_macs, where = self.count(counter, "model", self.args, self.kwargs)
            return raw, rule_macs, where, 1
        return whole, rule_macs, where, self.batch


def checked(raw: Any) -> RawCount:
    """``raw`` when its MAC count is a finite number >= 0; else ``ValueError`` (the counter failed)."""
    macs = getattr(raw, "macs", None)
    valid = isinstance(macs, (int, float)) and not isinstance(macs, bool) and math.isfinite(macs) and macs >= 0
    if not valid:
        raise ValueError(f"counter returned an invalid MAC count: {macs!r}")
    return raw


def extrapolated(one: RawCount, two: RawCount | None, batch: int) -> RawCount | None:
    """The count of ``batch`` samples from counts of the first sample and of the first two, entry by entry.

    A core operator is scaled by ``batch``: the torch counter's probe (:meth:`CountSession.one_sample_inputs`) showed
    that the core costs exactly ``batch`` times one sample. Any other entry (a convention the probe does not see,
    such as a norm) is extrapolated from ``two``: its per-sample part (what the second sample added) times ``batch``
    plus its batch-independent part (a norm of a weight is counted once, not ``batch`` times). ``None`` (count the
    whole batch) when a convention was counted and ``two`` is missing, or an entry shrinks or only appears with two.
    """
    module_operators: dict[str, dict[str, int]] = {}
    for module, ops in one.module_operators.items():
        bucket: dict[str, int] = {}
        for op, value in ops.items():
            if op in CORE_OPERATORS:
                bucket[op] = int(value) * batch
                continue
            if two is None:
                return None
            twice = int(two.module_operators.get(module, {}).get(op, 0))
            if twice < value:
                return None
            bucket[op] = int(value) + (batch - 1) * (twice - int(value))  # fixed part + batch * per-sample part
        module_operators[module] = bucket
    if two is not None and any(
        v and op not in one.module_operators.get(m, {})
        for m, ops in two.module_operators.items()
        for op, v in ops.items()
    ):
        return None  # an operator that ran on two samples only
    root_before = sum(one.module_operators.get("", {}).values())
    macs = int(one.macs) - root_before + sum(module_operators.get("", {}).values())
    return RawCount(macs=macs, module_operators=module_operators, uncounted=one.uncounted)


def placement_order(counter: Any, session: CountSession, device: str | None) -> list[str]:
    """Where to try counting, in order: ``device`` when forced, else meta first where the counter can count there."""
    if device == "meta":
        return ["meta"]
    if device == "model":
        return ["model"]
    return ["meta", "model"] if counter.can_count_on_meta(session.model) else ["model"]
