"""The profile of one model as data: frozen dataclasses with a JSON round-trip. No torch import.

Every count stored here is for the **whole call** (all samples of the example input), as an exact integer, in MACs
(multiply-accumulates). FLOPs are always ``2 * MACs``. Per-sample numbers are derived with ``batch_size``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from lightning_flops.counters.base import flops_from_macs
from lightning_flops.errors import ReportFormatError
from lightning_flops.schema import check_report_dict, parse_json
from lightning_flops.types import OpTime, Uncounted, is_within
from lightning_flops.vocabulary import CORE_OPERATORS

if TYPE_CHECKING:
    from lightning_flops.explain import Discrepancy

__all__ = [
    "SCHEMA_VERSION",
    "CounterResult",
    "FlopsReport",
    "Gap",
    "InputSpec",
    "OpTime",
    "ParamCount",
    "PartCount",
    "TimingReport",
    "Uncounted",
    "human_count",
]

#: Version of the JSON layout; readers refuse newer versions.
SCHEMA_VERSION = 1


def human_count(value: float | None, unit: str) -> str:
    """Format ``value`` with a k/M/G/T prefix and a unit, e.g. ``human_count(4.11e9, "MACs") == "4.11 GMACs"``."""
    if value is None:
        return "-"
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    number = f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
    return f"{number} {unit}" if unit else number


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts from ``model.parameters()`` (shared weights once, never-called modules included).

    Args:
        total: number of parameter elements, packed ones included.
        trainable: elements of parameters with ``requires_grad``.
        packed: elements of packed weights and biases (dynamic int8 ``quantize_dynamic`` Linear layers), which
            ``model.parameters()`` does not list; part of ``total``, never trainable.
        active: elements of the parameters held by the modules that ran on the profiled input (a MoE's routed
            experts; ``total`` for a dense model whose modules all run); ``None`` when unknown (older reports).
        active_per_token: elements of the parameters one token passes through: the shared parts plus, of each
            fused-experts tensor, the experts one token meets (``top_k`` per MoE layer); ``active`` for a dense model;
            ``None`` when unknown.
    """

    total: int
    trainable: int
    packed: int = 0
    active: int | None = None
    active_per_token: int | None = None


@dataclass(frozen=True)
class PartCount:
    """MACs and parameters of a named group of modules (``parts={"visual": ["backbone", "neck"]}``).

    Args:
        modules: the qualified module names in the part.
        macs: MACs of the whole call (``batch_size`` samples) per counter (``None`` where that counter failed).
        params: parameters of the part's modules (shared weights once).
        batch_size: samples in the profiled call: :meth:`macs_per_sample` divides by it.

    Example::

        part = report.parts["visual"]
        part.macs_per_sample("torch"), part.flops_per_sample("torch"), part.params.total
    """

    modules: tuple[str, ...]
    macs: dict[str, int | None]
    params: ParamCount
    batch_size: int = 1

    def macs_per_sample(self, counter: str = "torch") -> float | None:
        """MACs of one sample in this part for ``counter`` (custom rules included), as every display shows them;
        ``None`` when that counter failed or was not run."""
        macs = self.macs.get(counter)
        return None if macs is None else macs / max(self.batch_size, 1)

    def flops_per_sample(self, counter: str = "torch") -> float | None:
        """FLOPs (= 2 x MACs) of one sample in this part for ``counter``."""
        macs = self.macs.get(counter)
        return None if macs is None else flops_from_macs(macs) / max(self.batch_size, 1)


@dataclass(frozen=True)
class InputSpec:
    """Shape and dtype of one tensor of the example input; ``name`` is its position (``"0"``) or keyword."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class CounterResult:
    """What one counter measured for one forward call (all samples), in MACs.

    Args:
        name: ``"thop"``, ``"fvcore"`` or ``"torch"``.
        ok: whether the counter ran.
        macs: MACs of the whole call after ``custom_ops`` rules; ``None`` when the counter failed.
        raw_macs: MACs as the library counted them, before our rules.
        error: ``"<Type>: <message>"`` when the counter failed.
        device: where it counted: ``"meta"`` for a meta copy, else the model's own device (counted in place).
        module_operators: inclusive MACs per module name (``""`` is the root) and vocabulary operator.
        uncounted: operators or modules the counter saw and did not count, each with its module and calls.
        seconds: wall time of the counter.
        sample_scale: the counter ran on ``batch_size / sample_scale`` samples and its counts were multiplied back.
        device_note: why it did not count where it first tried (``"meta: <Type>: <message>"``), else ``None``.

    Example::

        result = report.counters["torch"]
        result.macs, result.flops, result.by_module["encoder"], result.by_operator["conv"]
    """

    name: str
    ok: bool
    macs: int | None = None
    raw_macs: int | None = None
    error: str | None = None
    device: str | None = None
    module_operators: dict[str, dict[str, int]] = field(default_factory=dict)
    uncounted: tuple[Uncounted, ...] = ()
    seconds: float = 0.0
    sample_scale: int = 1
    device_note: str | None = None

    @property
    def flops(self) -> int | None:
        """FLOPs of the whole call: ``2 * macs``."""
        return None if self.macs is None else flops_from_macs(self.macs)

    @property
    def by_module(self) -> dict[str, int]:
        """Inclusive MACs per qualified module name (``""`` is the whole model)."""
        return {name: sum(ops.values()) for name, ops in self.module_operators.items()}

    @property
    def by_operator(self) -> dict[str, int]:
        """MACs per vocabulary operator (``conv``, ``linear``, ``einsum``, ``norm``, ...) over the whole model."""
        return dict(self.module_operators.get("", {}))

    @property
    def core_macs(self) -> int | None:
        """MACs of the core operators (conv, linear, matmul, einsum, attention, rnn)."""
        if not self.ok:
            return None
        return sum(v for op, v in self.by_operator.items() if op in CORE_OPERATORS)

    @property
    def convention_macs(self) -> int | None:
        """MACs of the convention operators (norms, activations, pooling, ...): counters differ by design."""
        return None if self.macs is None else self.macs - (self.core_macs or 0)


@dataclass(frozen=True)
class Gap:
    """Relative disagreement of counters ``a`` and ``b``: ``|a - b| / max(a, b)`` (0 when both are 0).

    Args:
        a: first counter name.
        b: second counter name.
        relative: gap of the totals.
        core_relative: gap of the MAC core only.
        flagged: whether the gap used for flagging (core by default) is above the limit.
        module: the module that holds most of the gap (``named_modules()`` name, ``""`` for the root).
        operators: the operators in that module where the counters differ, largest first.
    """

    a: str
    b: str
    relative: float
    core_relative: float
    flagged: bool
    module: str | None = None
    operators: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``"{a}_vs_{b}"``, as used in metric names."""
        return f"{self.a}_vs_{self.b}"


@dataclass(frozen=True)
class TimingReport:
    """Where the time of one forward goes: median wall time of plain forwards, and a split by (module, operator).

    The split comes from up to 3 more forwards under ``torch.profiler`` (each row the median over them); shares are
    of the operators' summed time.

    Args:
        forward_seconds: median wall time of one plain forward (the whole call, ``batch_size`` samples).
        forward_runs: wall time of each timed forward, in the order they ran.
        operators: one :class:`OpTime` per (module, operator), the largest time first.
        macs: the torch counter's MACs of the whole call (``None`` when it did not run or failed).
        unjoined_macs: MACs the torch counter booked under a (module, label) that no profiled call matched (a
            ``custom_ops`` rule, or a function the profiler sees as other kernels); 0 when the join is complete.
        device: the model's device (``"cpu"``, ``"cuda:0"``).
        dtype: the dtype of the model's floating-point parameters (for the peak).
        peak_flops_per_second: the device's peak for ``dtype`` (Lightning's ``get_available_flops``), else ``None``.
        time_source: ``"cpu"`` (operator CPU time) or ``"device"`` (CUDA kernel time).
        note: why the operator split is missing or partial, else ``None``.

    Example::

        report = lf.profile_model(model, x, timing=5)
        report.timing.forward_seconds, report.timing.share(operator="sort"), report.timing.zero_mac_share
    """

    forward_seconds: float
    forward_runs: tuple[float, ...] = ()
    operators: tuple[OpTime, ...] = ()
    macs: int | None = None
    unjoined_macs: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    peak_flops_per_second: float | None = None
    time_source: str = "cpu"
    note: str | None = None

    @property
    def operator_seconds(self) -> float:
        """Summed time of every profiled operator call."""
        return sum(op.seconds for op in self.operators)

    def share(self, operator: str | None = None, module: str | None = None) -> float:
        """Fraction of the operators' summed time spent in ``operator`` within ``module``'s subtree.

        Args:
            operator: a label or aten name as in :attr:`OpTime.operator` (``"matmul"``, ``"sort"``); ``None``: all.
            module: a qualified module name: its own calls and its submodules' (``""`` or ``None``: the whole model).
        """
        total = self.operator_seconds
        if total <= 0:
            return 0.0
        matching = sum(
            op.seconds
            for op in self.operators
            if (operator is None or op.operator == operator) and (module is None or is_within(op.module, module))
        )
        return matching / total

    @property
    def zero_mac_share(self) -> float:
        """Fraction of the operators' summed time spent in operators that count no MACs (sort, topk, norms, ...)."""
        total = self.operator_seconds
        return sum(op.seconds for op in self.operators if op.zero_mac) / total if total > 0 else 0.0

    @property
    def achieved_flops_per_second(self) -> float | None:
        """``2 * macs / forward_seconds``: the FLOP rate of the whole forward; ``None`` without MACs or time."""
        if self.macs is None or not self.forward_seconds > 0:
            return None
        return flops_from_macs(self.macs) / self.forward_seconds

    @property
    def mfu(self) -> float | None:
        """Achieved FLOP/s over the device's peak for the model's dtype; ``None`` where the peak is unknown."""
        achieved = self.achieved_flops_per_second
        if achieved is None or not self.peak_flops_per_second:
            return None
        return achieved / self.peak_flops_per_second

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimingReport:
        """Build from :func:`dataclasses.asdict` output (the ``timing`` field of a report's JSON)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["forward_runs"] = tuple(float(v) for v in data.get("forward_runs", ()))
        op_fields = {f.name for f in fields(OpTime)}
        kwargs["operators"] = tuple(
            OpTime(**{k: v for k, v in op.items() if k in op_fields}) for op in data.get("operators", ())
        )
        return cls(**kwargs)


@dataclass(frozen=True)
class FlopsReport:
    """The profile of one model on one example input, with every counter side by side.

    Args:
        model: class name of the profiled model.
        params: parameter counts.
        counters: one :class:`CounterResult` per requested counter, in the order requested.
        batch_size: samples in the example input; per-sample numbers divide by it.
        mode: ``"eval"`` or ``"train"``.
        limit: relative gap above which a pair is flagged.
        flag_on: ``"core"`` or ``"total"``.
        gaps: one :class:`Gap` per pair of successful counters.
        inputs: shapes and dtypes of the example input's tensors.
        rules: ``custom_ops`` rules applied, as ``"Type: rule"``.
        versions: versions of torch, thop (and which thop), fvcore, lightning, lightning-flops.
        fingerprint: hash of parameter names, shapes and dtypes (to tell models apart; ``FlopsMonitor`` counts every
            fit again rather than reuse a report by it: equal shapes can count differently, e.g. another stride).
        train_step_flops: FLOPs of forward + backward of one training batch (torch counter), per batch.
        train_step_batch_size: samples in that training batch (it can differ from ``batch_size`` when a fixed
            ``example_input`` was profiled).
        train_step_uncounted: kernels of that training step (forward or backward) that ran without a formula and
            are not on the reviewed zero-MAC list, each with its module (``""`` when the step was observed without
            module hooks) and calls: the training-step count never counts zero in silence.
        train_step_error: why the training step was not counted (``train_step_flops`` is then ``None``), e.g. the
            torch counter failed on the forward, so the real step was not observed.
        tokens: real tokens in the example input (the nonzero entries of an ``attention_mask`` keyword shaped like
            ``input_ids``, else ``B * T`` of an integer ``[B, T]`` input; or ``tokens_fn``); ``None`` when the input
            has no token dimension. The MACs include padding positions; the tokens do not.
        logger: ``{"name": ..., "version": ...}`` of the run that wrote the report.
        module_types: class name per qualified module name (``""`` the root), for explanations and diffs.
        module_params: parameter elements each module holds itself (``recurse=False``; shared weights at their first
            name), for modules that hold any.
        parts: MACs and params of named groups of modules (``parts=`` of ``profile_model``).
        timing: measured time beside the MACs (``profile_model(..., timing=N)``), else ``None``.
        moe_routing: the routing assumption a meta count of mixture-of-experts layers ran under (``"balanced"``:
            each expert got ``tokens * top_k / num_experts`` rows), ``None`` when routing ran as it is.
        schema_version: JSON layout version.

    Example::

        report = lf.profile_model(model, torch.randn(8, 3, 224, 224))
        print(report.to_markdown())
        same = lf.FlopsReport.from_json(report.to_json())
    """

    model: str
    params: ParamCount
    counters: dict[str, CounterResult]
    batch_size: int
    mode: str = "eval"
    limit: float = 0.01
    flag_on: str = "core"
    gaps: tuple[Gap, ...] = ()
    inputs: tuple[InputSpec, ...] = ()
    rules: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    train_step_flops: int | None = None
    train_step_batch_size: int | None = None
    train_step_uncounted: tuple[Uncounted, ...] = ()
    train_step_error: str | None = None
    logger: dict[str, str] | None = None
    tokens: int | None = None
    module_types: dict[str, str] = field(default_factory=dict)
    module_params: dict[str, int] = field(default_factory=dict)
    parts: dict[str, PartCount] = field(default_factory=dict)
    timing: TimingReport | None = None
    moe_routing: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def flagged(self) -> bool:
        """Whether any gap is flagged."""
        return any(gap.flagged for gap in self.gaps)

    def macs_per_sample(self, counter: str) -> float | None:
        """MACs of one sample for ``counter``, always a float (also for batch 1 and a report read back from JSON);
        ``None`` when it failed or was not run."""
        result = self.counters.get(counter)
        if result is None or result.macs is None:
            return None
        return float(result.macs) / max(self.batch_size, 1)

    def flops_per_sample(self, counter: str) -> float | None:
        """FLOPs (= 2 x MACs) of one sample for ``counter``."""
        result = self.counters.get(counter)
        if result is None or result.flops is None:
            return None
        return result.flops / max(self.batch_size, 1)

    def macs_per_token(self, counter: str) -> float | None:
        """MACs per token for ``counter``; ``None`` when it failed or the input has no token dimension."""
        result = self.counters.get(counter)
        if result is None or result.macs is None or not self.tokens:
            return None
        return result.macs / self.tokens

    def flops_per_token(self, counter: str) -> float | None:
        """FLOPs (= 2 x MACs) per token for ``counter``; ``None`` as for :meth:`macs_per_token`."""
        result = self.counters.get(counter)
        if result is None or result.flops is None or not self.tokens:
            return None
        return result.flops / self.tokens

    def largest_gap(self) -> Gap | None:
        """The gap that decides flagging (core or total, per ``flag_on``) with the largest value."""
        if not self.gaps:
            return None
        return max(self.gaps, key=lambda gap: gap.core_relative if self.flag_on == "core" else gap.relative)

    def explain(self, counter: str, reference: str = "torch") -> tuple[Discrepancy, ...]:
        """Every (module, operator) where ``counter`` and ``reference`` disagree, with a cause; rows sum to the total
        difference. See :func:`lightning_flops.explain.explain`."""
        from lightning_flops.explain import explain  # lazy: explain imports this module's types

        return explain(self, counter, reference)

    def statement(self, counter: str = "torch") -> str:
        """A paste-ready paragraph for a paper: per-sample MACs and FLOPs, inputs, mode, conventions, tools."""
        from lightning_flops.render import statement  # lazy: render imports this module

        return statement(self, counter)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; counters also carry derived ``flops`` and per-sample values for readers without us."""
        data = asdict(self)
        if not self.params.packed:
            del data["params"]["packed"]  # only models with packed (quantized) weights carry the field
        for name, result in self.counters.items():
            entry = data["counters"][name]
            entry["uncounted"] = [asdict(u) for u in result.uncounted]
            entry["flops"] = result.flops
            entry["macs_per_sample"] = self.macs_per_sample(name)
            entry["flops_per_sample"] = self.flops_per_sample(name)
            entry["macs_per_token"] = self.macs_per_token(name)
            entry["flops_per_token"] = self.flops_per_token(name)
            entry["core_macs"] = result.core_macs
        if self.timing is not None:  # derived values too, for readers without us
            data["timing"].update(
                achieved_flops_per_second=self.timing.achieved_flops_per_second,
                mfu=self.timing.mfu,
                zero_mac_share=self.timing.zero_mac_share,
            )
        data["gaps"] = [dict(asdict(gap), key=gap.key) for gap in self.gaps]
        data["flagged"] = self.flagged
        data["units"] = "counts are per whole call (batch_size samples); macs = multiply-accumulates; flops = 2 * macs"
        return data

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise to JSON text (exact integers)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlopsReport:
        """Build a report from :meth:`to_dict` output; raises :class:`ReportFormatError` on a bad or newer layout."""
        if not isinstance(data, dict):
            raise ReportFormatError(f"a report must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise ReportFormatError("`schema_version` is missing or not an integer: not a lightning-flops report")
        if version > SCHEMA_VERSION:
            raise ReportFormatError(
                f"report schema_version {version} is newer than this lightning-flops reads ({SCHEMA_VERSION}):"
                " upgrade lightning-flops"
            )
        check_report_dict(data)
        try:
            counters = {name: _counter_from_dict(entry) for name, entry in data["counters"].items()}
            known = {f.name for f in fields(cls)}
            kwargs = {k: v for k, v in data.items() if k in known}
            kwargs.update(
                params=ParamCount(**data["params"]),
                counters=counters,
                gaps=tuple(_gap_from_dict(g) for g in data.get("gaps", ())),
                inputs=tuple(
                    InputSpec(name=str(i["name"]), shape=tuple(i["shape"]), dtype=str(i["dtype"]))
                    for i in data.get("inputs", ())
                ),
                rules=tuple(data.get("rules", ())),
                train_step_uncounted=tuple(Uncounted.from_data(u) for u in data.get("train_step_uncounted", ())),
                module_types={str(k): str(v) for k, v in data.get("module_types", {}).items()},
                module_params={str(k): int(v) for k, v in data.get("module_params", {}).items()},
                parts={
                    str(label): PartCount(
                        modules=tuple(p["modules"]),
                        macs={str(c): (None if v is None else int(v)) for c, v in p["macs"].items()},
                        params=ParamCount(**p["params"]),
                        batch_size=int(p.get("batch_size", data["batch_size"])),
                    )
                    for label, p in data.get("parts", {}).items()
                },
                timing=TimingReport.from_dict(data["timing"]) if data.get("timing") is not None else None,
            )
            return cls(**kwargs)
        except (KeyError, TypeError, AttributeError) as err:
            raise ReportFormatError(f"malformed report: {type(err).__name__}: {err}") from err

    @classmethod
    def from_json(cls, text: str) -> FlopsReport:
        """Parse :meth:`to_json` output."""
        return cls.from_dict(parse_json(text))

    # -------------------------------------------------------------- Markdown
    def to_markdown(self, top_modules: int = 8) -> str:
        """A Markdown summary (see :func:`lightning_flops.render.report_markdown`)."""
        from lightning_flops.render import report_markdown  # lazy: render imports this module

        return report_markdown(self, top_modules=top_modules)


def _counter_from_dict(entry: dict[str, Any]) -> CounterResult:
    known = {f.name for f in fields(CounterResult)}
    kwargs = {k: v for k, v in entry.items() if k in known}
    kwargs["uncounted"] = tuple(Uncounted.from_data(u) for u in entry.get("uncounted", ()))
    kwargs["module_operators"] = {m: dict(ops) for m, ops in entry.get("module_operators", {}).items()}
    return CounterResult(**kwargs)


def _gap_from_dict(entry: dict[str, Any]) -> Gap:
    known = {f.name for f in fields(Gap)}
    kwargs = {k: v for k, v in entry.items() if k in known}
    kwargs["operators"] = tuple(entry.get("operators", ()))
    return Gap(**kwargs)
