"""``FlopsMonitor``: the Lightning callback that profiles the model on the first batch and logs MACs/FLOPs/params."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lightning_flops import render, sinks
from lightning_flops._compat import callback_state_key, default_hp_metric, profiler_enabled, run_hparams
from lightning_flops.counters.base import COUNTER_NAMES
from lightning_flops.counters.tracing import on_fresh_stack
from lightning_flops.errors import (
    CounterError,
    FlopsConfigError,
    FlopsGapError,
    did_you_mean,
    error_text,
    internal_error,
)
from lightning_flops.inputs import (
    NoInput,
    PreparedInput,
    UserCodeFailed,
    batch_input,
    batch_size_of,
    prepare_input,
    split_input,
)
from lightning_flops.options import validate_options
from lightning_flops.parts import resolve_parts, validate_parts
from lightning_flops.profiling import profile_model
from lightning_flops.report import FlopsReport, Uncounted
from lightning_flops.timing import caller_profiling, check_timing
from lightning_flops.train_step import StepObserver, observation_refused

__all__ = ["FlopsMonitor"]

ON_GAP = ("warn", "raise", "ignore")


class FlopsMonitor(Callback):
    r"""Profile the model once per fit, on the first real batch, and log its MACs, FLOPs and parameters.

    On the first training batch (not the sanity check; the first batch of the loop in a run that only validates,
    tests or predicts; a resumed fit and a second fit count again, never reuse a stored report) the callback takes
    the model input from the batch, runs
    :func:`~lightning_flops.profiling.profile_model` with every counter, and sends the report to every logger as
    scalars (per sample, keys ``{prefix}/{counter}/macs``, ``.../flops``, ``{prefix}/params/*``, ``{prefix}/gap/*``,
    ``{prefix}/flagged``, ``{prefix}/train_step/flops_per_batch``, ``{prefix}/params/active``,
    ``{prefix}/{counter}/macs_per_token`` for token inputs), to the TensorBoard hparams table (the columns
    are declared in ``setup``, before Lightning's own hparams summary), to TensorBoard text, to
    ``flops_report.json`` in ``trainer.log_dir`` and to the console. The model and the training are not changed,
    except that ``pl_module.flops_per_batch`` (forward + backward FLOPs of one training batch) is set when the
    module does not define it, for Lightning's ``ThroughputMonitor``. That training-step count observes the real
    first training step (a dispatch mode that only counts, from the end of ``on_train_batch_start`` to
    ``on_after_backward``), so data-dependent models count what ran and nothing numerical changes; it does so only
    when the torch counter ran the same forward without error (else the report's ``train_step_error`` says why the
    step was not counted). After the first batch the hooks do nothing.

    Input rules: ``input_fn(batch)`` when given; else ``example_input`` when given; else a Tensor batch is the
    input, a tuple/list batch gives as many leading elements as ``forward`` has required positional parameters, a
    dict batch gives the keys that match ``forward``'s parameter names; else ``pl_module.example_input_array``.
    When none fits, one warning asks for ``input_fn`` and training goes on (``strict=True`` raises).

    Args:
        counters: counters to run, from ``("thop", "fvcore", "torch")``; ``torch`` is the exact reference.
        limit: relative gap between two counters above which the pair is flagged.
        flag_on: ``"core"`` compares only the MAC core (conv, linear, matmul, einsum, attention, RNN); ``"total"``.
        on_gap: what a flagged gap does: ``"warn"`` (one warning), ``"raise"`` (:class:`FlopsGapError`) or
            ``"ignore"``. ``{prefix}/flagged`` is logged in every case.
        mode: ``"eval"`` (inference cost, as papers report it) or ``"train"`` (the training-mode forward).
        input_fn: ``input_fn(batch)`` returns the model input (Tensor, tuple/list of positional args, or dict).
        example_input: a fixed input to profile instead of the batch (variable-length or multi-scale batches).
        batch_size_fn: ``batch_size_fn(batch)`` returns the samples in the batch (default: dim 0 of the input).
        tokens_fn: ``tokens_fn(batch)`` (``tokens_fn(example_input)`` for a fixed input) returns the tokens in it,
            for ``{prefix}/{counter}/macs_per_token``; default: the real tokens (the nonzero entries of an
            ``attention_mask`` input shaped like ``input_ids``, else ``B * T`` of an integer ``[B, T]`` input);
            ``lf.count_positions`` counts padding too.
        prefix: first component of every metric key.
        custom_ops: ``{nn.Module subclass: rule(module, inputs, output) -> MACs}`` applied on top of every counter.
        strict: raise when a counter fails or no input can be found, instead of warning.
        parts: ``{label: module name or list of names}`` (``pl_module.named_modules()`` names): MACs and params per
            part, logged as ``{prefix}/part/{label}/{macs,flops,params}``. A name that is not a module raises
            :class:`FlopsConfigError` at the first batch, before any profiling, strict or not.
        timing: ``N`` >= 1 also times ``N`` plain forwards of the model on its device and splits the time by module
            and operator (``torch.profiler``) beside the MACs: logs ``{prefix}/time/forward_seconds``,
            ``{prefix}/time/zero_mac_share``, ``{prefix}/time/achieved_flops_per_second`` and
            ``{prefix}/time/mfu`` (when the device's peak is known), adds "where the time goes" to the text report
            and, with matplotlib, an image of time share vs MAC share per module; 0 (default): no timing.

    Example::

        from lightning.pytorch import Trainer
        from lightning_flops import FlopsMonitor

        trainer = Trainer(callbacks=[FlopsMonitor()], max_steps=100)
        trainer.fit(model, datamodule)  # then: tensorboard --logdir lightning_logs
    """

    def __init__(
        self,
        counters: Sequence[str] = COUNTER_NAMES,
        limit: float = 0.01,
        flag_on: Literal["core", "total"] = "core",
        on_gap: Literal["warn", "raise", "ignore"] = "warn",
        mode: Literal["eval", "train"] = "eval",
        input_fn: Callable[[Any], Any] | None = None,
        example_input: Any = None,
        batch_size_fn: Callable[[Any], int] | None = None,
        prefix: str = "compute",
        custom_ops: Mapping[type, Callable[..., float]] | None = None,
        strict: bool = False,
        tokens_fn: Callable[[Any], int] | None = None,
        parts: Mapping[str, str | Sequence[str]] | None = None,
        timing: int = 0,
    ) -> None:
        super().__init__()
        self.counters = validate_options(counters, limit, flag_on, mode, custom_ops, strict=strict)
        if on_gap not in ON_GAP:
            raise FlopsConfigError(f"`on_gap` must be one of {ON_GAP}, got {on_gap!r}" + did_you_mean(on_gap, ON_GAP))
        for name, fn in (("input_fn", input_fn), ("batch_size_fn", batch_size_fn), ("tokens_fn", tokens_fn)):
            if fn is not None and not callable(fn):
                raise FlopsConfigError(f"`{name}` must be None or a callable taking the batch, got {fn!r}")
        if example_input is not None:
            if input_fn is not None:
                raise FlopsConfigError("`example_input` and `input_fn` exclude each other: pass one, got both")
            split_input(example_input)
        if not isinstance(prefix, str) or not prefix.strip("/ "):
            raise FlopsConfigError(f"`prefix` must be a non-empty str such as 'compute', got {prefix!r}")
        self.limit = float(limit)
        self.flag_on = flag_on
        self.on_gap = on_gap
        self.mode = mode
        self.input_fn = input_fn
        self.example_input = example_input
        self.batch_size_fn = batch_size_fn
        self.tokens_fn = tokens_fn
        self.prefix = prefix.strip("/ ")
        self.custom_ops = custom_ops
        self.strict = strict
        validate_parts(parts)
        self.parts = parts
        self.timing = check_timing(timing)
        self.report: FlopsReport | None = None
        self._pending = False
        self._publications = sinks.Publications()  # what this callback wrote where (rank zero only)
        # the module this monitor set `flops_per_batch` on, and the value it set (a later fit updates only its own)
        self._flops_attr_owner: weakref.ReferenceType[LightningModule] | None = None
        self._flops_attr_value: int | None = None
        self._declared_dirs: set[str] = set()
        self._observe_step = False  # count the next training step as it runs
        self._observer: StepObserver | None = None
        self._step_batch: Any = None
        self._step_backward = False
        self._directory: str | None = None

    @property
    @override
    def state_key(self) -> str:
        """Unique per prefix, mode and counters. The monitor keeps no state of its own any more (every fit counts
        again); the key stays as it was so that a checkpoint written by an earlier version, which holds a stored
        report under it, loads without Lightning's warning about a missing callback (the report is ignored)."""
        return callback_state_key(self, prefix=self.prefix, mode=self.mode, counters=list(self.counters))

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._pending = True
        if not trainer.is_global_zero:
            return
        params, hp_metric = run_hparams(trainer)
        keys = sinks.metric_keys(
            self.counters,
            self.prefix,
            train_step=stage == "fit",
            parts=tuple(self.parts or {}),
            timing=self.timing > 0,
        )
        for logger in trainer.loggers:
            # TensorBoard keeps a run's first hparams summary only: declare once per log dir (validate, then fit)
            if sinks.is_tensorboard(logger) and logger.log_dir not in self._declared_dirs:
                self._declared_dirs.add(logger.log_dir)
                try:
                    sinks.declare_hparams_metrics(logger, params, keys, hp_metric and default_hp_metric(logger))
                except Exception as err:  # a table without our columns must not stop training
                    rank_zero_warn(f"FlopsMonitor: could not declare the hparams metric columns: {error_text(err)}")

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending:
            self._run(trainer, pl_module, batch, training=True)
        if self._observe_step:  # last, so that none of our own work is counted
            self._observe_step = False
            self._step_batch, self._step_backward = batch, False
            observer = StepObserver()
            try:
                observer.start()
            except Exception as err:  # the count must never stop training
                self._step_not_counted(trainer, f"the counting mode could not be entered: {error_text(err)}")
                return
            self._observer = observer

    # ------------------------------------------------- training-step observation
    @override
    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._observer is not None and self._observer.running:
            self._step_backward = True
            if pl_module.automatic_optimization:  # forward + backward done, the optimizer step is not counted
                self._finish_step(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._observer is None or not self._observer.running:
            return
        if self._step_backward or not pl_module.automatic_optimization:
            self._finish_step(trainer, pl_module)  # manual optimization: the whole training_step
        else:  # training_step returned None (the batch was skipped): count the next batch instead
            self._stop_observer()
            self._observe_step = True

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop_observer()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stop_observer()
        self._observe_step = False

    def _stop_observer(self) -> tuple[int | None, tuple[Uncounted, ...], str | None]:
        """Leave the counting mode: ``(FLOPs counted, kernels without a formula, None)``, or ``(None, (), reason)``
        when the mode failed (``(None, (), None)`` when none was running). Never raises."""
        observer, self._observer = self._observer, None
        if observer is None:
            return None, (), None
        try:
            flops = observer.stop()
        except Exception as err:  # the count must never stop training
            return None, (), f"leaving the counting mode failed: {error_text(err)}"
        return flops, observer.uncounted, None

    def _finish_step(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Leave the counting mode and publish the training-step FLOPs (per batch) and that batch's size."""
        batch, self._step_batch = self._step_batch, None
        flops, uncounted, error = self._stop_observer()
        if flops is None:
            self._step_not_counted(trainer, error or "the counting mode counted nothing")
            return
        try:
            samples = batch_size_of(batch, lambda b: batch_input(pl_module, b, self.input_fn), self.batch_size_fn)
        except Exception as err:  # the count must never stop training
            self._step_not_counted(trainer, f"the batch size could not be taken: {error_text(err)}")
            return
        self._set_flops_per_batch(pl_module, flops)
        if self.report is None:
            return
        self._publish_step(
            trainer,
            dataclasses.replace(
                self.report,
                train_step_flops=flops,
                train_step_batch_size=samples,
                train_step_uncounted=uncounted,
            ),
        )

    def _step_not_counted(self, trainer: Trainer, reason: str) -> None:
        """Warn that the training step is not counted, and say why in the published report."""
        rank_zero_warn(f"FlopsMonitor: training-step FLOPs not counted: {reason}")
        if self.report is not None:
            self._publish_step(trainer, dataclasses.replace(self.report, train_step_error=reason))

    def _publish_step(self, trainer: Trainer, report: FlopsReport) -> None:
        """Keep ``report`` (the training step's outcome added) and update the published report with it."""
        self.report = report
        if trainer.is_global_zero and self._directory is not None:
            try:
                self._publish(trainer, report, self._directory)
            except Exception as err:  # an output failure must not stop training
                rank_zero_warn(f"FlopsMonitor: could not write the training-step FLOPs: {error_text(err)}")

    def _set_flops_per_batch(self, pl_module: LightningModule, flops: int) -> None:
        """``pl_module.flops_per_batch`` for ThroughputMonitor, unless the module defines its own.

        Only a module that has no such attribute, or one that holds the value this monitor set on it, gets it:
        another module's own attribute (a second fit with the same monitor) or a read-only property is left alone.
        """
        try:
            owner = self._flops_attr_owner() if self._flops_attr_owner is not None else None
            ours = owner is pl_module and getattr(pl_module, "flops_per_batch", None) is self._flops_attr_value
            if ours or not hasattr(pl_module, "flops_per_batch"):
                pl_module.flops_per_batch = flops
                self._flops_attr_owner, self._flops_attr_value = weakref.ref(pl_module), flops
        except Exception as err:  # a property that raises or refuses: the module's own business, never a dead fit
            rank_zero_warn(f"FlopsMonitor: `flops_per_batch` not set on the module: {error_text(err)}")

    @override
    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._pending and not trainer.sanity_checking and trainer.state.fn != "fit":
            self._run(trainer, pl_module, batch, training=False)

    @override
    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._pending:
            self._run(trainer, pl_module, batch, training=False)

    @override
    def on_predict_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._pending:
            self._run(trainer, pl_module, batch, training=False)

    # ---------------------------------------------------------------- the work
    def _run(self, trainer: Trainer, pl_module: LightningModule, batch: Any, training: bool) -> None:
        """Profile (every fit counts again: a stored report is never reused), agree across ranks, then publish on rank
        zero and act on gaps."""
        self._pending = False
        self._observe_step = False
        resolve_parts(pl_module, self.parts)  # a configuration error: raised strict or not, before any counting
        directory = sinks.report_directory(trainer)  # a collective under DDP: every rank asks
        self._directory = directory
        try:  # the user's input_fn, batch_size_fn and tokens_fn are called once per profile
            prepared: PreparedInput | Exception = prepare_input(
                pl_module, batch, self.input_fn, self.example_input, self.batch_size_fn, self.tokens_fn
            )
        except Exception as err:  # NoInput, UserCodeFailed, or our bug: _profile sorts them out
            prepared = err
        # counted again on every fit, resumed or not: a stored report cannot know what changed since (a stride, the
        # forward's code, data-dependent routing), and a count costs less than a third of a forward
        report: FlopsReport | None = None
        failure: Exception | None = None
        bug = False  # the failure is in lightning-flops' own code
        try:  # a profiling failure never stops training unless strict
            report = self._profile(pl_module, prepared)
        except UserCodeFailed as err:  # the user's input_fn / batch_size_fn
            failure = err.error
        except (FlopsConfigError, CounterError) as err:  # bad input, or a counter failed under strict
            failure = err
        except Exception as err:  # anything else is our bug: loud, never a quiet "profiling failed"
            failure, bug = err, True
        # a batch without samples gives 0 MACs "per sample": every rank (a collective) waits for the next batch
        if trainer.strategy.reduce_boolean_decision(report is not None and report.batch_size == 0, all=False):
            self._pending = True
            rank_zero_warn("FlopsMonitor: the batch has no samples (batch size 0); profiling the next batch instead.")
            return
        if training and report is not None:  # the real step is counted as it runs, where that is known to be safe
            refused = observation_refused(report)
            self._observe_step = refused is None
            if refused is not None:
                report = dataclasses.replace(report, train_step_error=refused)
                rank_zero_warn(f"FlopsMonitor: training-step FLOPs not counted: {refused}")
        if report is not None:
            self.report = report
            if trainer.is_global_zero:
                try:
                    self._publish(trainer, report, directory)
                except Exception as err:  # an output failure must not stop training unless strict
                    if self.strict:
                        failure = err  # raised below, after every rank has agreed to stop
                    else:
                        rank_zero_warn(f"FlopsMonitor: could not publish the report everywhere: {error_text(err)}")
            self._publications.seen(directory)
        # every rank takes part in both decisions, so a failure on one rank alone never leaves the others waiting
        local_failure = failure is not None and self.strict
        local_gap = report is not None and report.flagged and self.on_gap == "raise"
        any_failure = trainer.strategy.reduce_boolean_decision(local_failure, all=False)
        any_gap = trainer.strategy.reduce_boolean_decision(local_gap, all=False)
        if any_failure:
            if bug:
                internal_error(failure, "profiling the model", strict=True)  # raises it, noting it is our bug
            if failure is not None:
                raise failure
            raise CounterError(
                "FlopsMonitor: profiling or writing the report failed on another rank (strict=True); "
                "see that rank's error"
            )
        if bug:
            internal_error(failure, "profiling the model (training goes on without compute metrics)", strict=False)
        elif failure is not None:
            rank_zero_warn(
                f"FlopsMonitor: profiling failed, training goes on without compute metrics: {error_text(failure)}"
            )
        if report is not None and report.flagged:
            self._on_gap(report, any_gap)
        elif any_gap:
            raise FlopsGapError("FlopsMonitor: counters disagree above the limit on another rank (on_gap='raise')")

    def _profile(self, pl_module: LightningModule, prepared: PreparedInput | Exception) -> FlopsReport | None:
        """Profile the prepared input; warn (or raise under strict) when there is none."""
        if isinstance(prepared, NoInput):
            err = prepared
            message = (
                f"FlopsMonitor could not find the model input in the batch ({err}); pass "
                "`FlopsMonitor(input_fn=lambda batch: ...)` returning the input of `forward` "
                "(a Tensor, a tuple of positional arguments or a dict of keyword arguments)."
            )
            if self.strict:
                raise FlopsConfigError(message) from None
            rank_zero_warn(message + " No compute metrics are logged for this run.")
            return None
        if isinstance(prepared, Exception):
            raise prepared
        # on a thread of its own: what the profile allocates comes from another glibc arena, so the training thread's
        # heap stays as a fit without the callback has it (counted on the main thread, the fit's minor page faults
        # per step after batch 0 grew up to 5x and its steps slowed by up to 30%: benchmarks/README.md)
        # a torch.profiler on this (the training) thread must not meet one started by the timing on the other
        profiling_here = self.timing > 0 and profiler_enabled()

        def profile() -> FlopsReport:
            with caller_profiling(profiling_here):
                return profile_model(
                    pl_module,
                    prepared.example,
                    counters=self.counters,
                    limit=self.limit,
                    flag_on=self.flag_on,
                    mode=self.mode,
                    custom_ops=self.custom_ops,
                    batch_size=prepared.batch_size,
                    strict=self.strict,
                    tokens_fn=prepared.tokens_fn,
                    parts=self.parts,
                    timing=self.timing,
                )

        return on_fresh_stack(profile)

    def _publish(self, trainer: Trainer, report: FlopsReport, directory: str) -> None:
        """Publish into ``directory`` once; a later training step count (fit after validate) updates our own file."""
        self._publications.publish(report, trainer.loggers, directory, self.prefix, trainer.global_step)

    def _on_gap(self, report: FlopsReport, raise_now: bool) -> None:
        message = "FlopsMonitor: " + render.gap_message(report)
        if raise_now:
            raise FlopsGapError(message + " (on_gap='raise')")
        if self.on_gap == "warn":
            rank_zero_warn(message + " The torch counter is the reference; set on_gap='ignore' to silence this.")
