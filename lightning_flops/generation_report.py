"""The cost of one ``generate()`` call as data: prefill and per-step decode MACs, JSON, Markdown, a statement.

No torch import: ``GenerationReport.from_json`` and ``lightning-flops compare`` read a generation report without it.
Every count is for the **whole batch**, as an exact integer, in MACs (multiply-accumulates); FLOPs are always
``2 * MACs``. Per-sample and per-token numbers are derived with ``batch_size``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lightning_flops.counters.base import flops_from_macs
from lightning_flops.errors import ReportFormatError
from lightning_flops.report import human_count
from lightning_flops.schema import MAX_COUNT, parse_json
from lightning_flops.types import Uncounted

__all__ = ["GENERATION_SCHEMA_VERSION", "REPORT_TYPE", "GenerationReport", "is_generation_report"]

#: Version of the generation report's JSON layout; readers refuse newer versions.
GENERATION_SCHEMA_VERSION = 1
#: Value of the ``report_type`` field that tells a generation report from a :class:`~lightning_flops.FlopsReport`.
REPORT_TYPE = "generation"


def is_generation_report(data: Any) -> bool:
    """Whether a parsed JSON object is a generation report (its ``report_type`` says so)."""
    return isinstance(data, dict) and data.get("report_type") == REPORT_TYPE


@dataclass(frozen=True)
class GenerationReport:
    """MACs of one greedy ``generate()`` call, split at every call of the model's own forward.

    Args:
        model: class name of the model.
        batch_size: sequences generated at once.
        prompt_tokens: prompt length per sample (padded length: the positions the model computes).
        new_tokens: tokens generated per sample (one per forward of the model).
        prefill_macs: the first forward, whole batch (the prompt; for encoder-decoders the encoder too).
        decode_macs: one entry per later forward, whole batch (``new_tokens - 1`` of them); attention grows with the
            KV cache, one position per step.
        tokens: real prompt tokens of the whole batch (``attention_mask.sum()`` when a mask was passed, else
            ``batch_size * prompt_tokens``; or ``tokens_fn``); padding is computed but is not a real token.
        encoder_decoder: the model has an encoder that ran once in the prefill.
        attention: the attention implementation the model ran (``"sdpa"``, ``"eager"``, ...), ``""`` if unknown.
        params: parameter elements of the model (shared weights once).
        uncounted: kernels that ran without a formula and are not on the reviewed zero-MAC list, with their module.
        generate_kwargs: the extra keyword arguments of ``generate``, as ``repr`` text.
        versions: versions of torch, transformers and lightning-flops.
        report_type: always ``"generation"``.
        schema_version: JSON layout version.

    Example::

        gen = lf.profile_generate(model, {"input_ids": ids}, max_new_tokens=8)
        print(gen.statement())
        same = lf.GenerationReport.from_json(gen.to_json())
    """

    model: str
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    prefill_macs: int
    decode_macs: tuple[int, ...]
    tokens: int | None = None
    encoder_decoder: bool = False
    attention: str = ""
    params: int | None = None
    uncounted: tuple[Uncounted, ...] = ()
    generate_kwargs: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    report_type: str = REPORT_TYPE
    schema_version: int = GENERATION_SCHEMA_VERSION

    # ---------------------------------------------------------------- counts
    @property
    def total_macs(self) -> int:
        """Prefill plus every decode step, whole batch."""
        return self.prefill_macs + sum(self.decode_macs)

    @property
    def prefill_flops(self) -> int:
        """FLOPs (= 2 x MACs) of the prefill, whole batch."""
        return flops_from_macs(self.prefill_macs)

    @property
    def decode_flops(self) -> tuple[int, ...]:
        """FLOPs (= 2 x MACs) of each decode step, whole batch."""
        return tuple(flops_from_macs(m) for m in self.decode_macs)

    @property
    def total_flops(self) -> int:
        """FLOPs (= 2 x MACs) of the whole call, whole batch."""
        return flops_from_macs(self.total_macs)

    def macs_per_new_token(self) -> float | None:
        """The steady decode cost of one token: ``sum(decode_macs) / (batch_size * (new_tokens - 1))``; ``None``
        when there is no decode step (``new_tokens == 1``)."""
        steps = self.batch_size * len(self.decode_macs)
        return sum(self.decode_macs) / steps if steps else None

    def flops_per_new_token(self) -> float | None:
        """FLOPs (= 2 x MACs) of :meth:`macs_per_new_token`."""
        macs = self.macs_per_new_token()
        return None if macs is None else flops_from_macs(macs)

    def prefill_macs_per_sample(self) -> float:
        """Prefill MACs of one sample."""
        return self.prefill_macs / max(self.batch_size, 1)

    def prefill_macs_per_token(self) -> float | None:
        """Prefill MACs per real prompt token (:attr:`tokens`); ``None`` when unknown or 0."""
        return self.prefill_macs / self.tokens if self.tokens else None

    def total_macs_per_sample(self) -> float:
        """MACs of the whole call for one sample."""
        return self.total_macs / max(self.batch_size, 1)

    def contexts(self) -> tuple[int, ...]:
        """Positions each decode step attends over: ``prompt_tokens + i`` for step ``i`` (1-based) of a decoder-only
        model; ``i + 1`` decoder positions (beside the encoder's ``prompt_tokens``) for an encoder-decoder."""
        first = 2 if self.encoder_decoder else self.prompt_tokens + 1
        return tuple(first + i for i in range(len(self.decode_macs)))

    # ------------------------------------------------------------- rendering
    def to_markdown(self) -> str:
        """A Markdown table: prefill, each decode step and the total, MACs whole batch and per sample, FLOPs."""
        per = max(self.batch_size, 1)
        context = "decoder positions" if self.encoder_decoder else "positions attended"
        lines = [
            f"### Generation cost of {self.model}",
            "",
            f"batch {self.batch_size}, prompt {self.prompt_tokens} tokens, {self.new_tokens} new tokens per sample "
            f"(greedy); counts by the torch reference; FLOPs = 2 x MACs",
            "",
            f"| step | {context} | MACs (batch) | MACs per sample | FLOPs per sample |",
            "|---|---:|---:|---:|---:|",
            f"| prefill{' (encoder + decoder)' if self.encoder_decoder else ''} | "
            f"{1 if self.encoder_decoder else self.prompt_tokens} | {self.prefill_macs:,} | "
            f"{self.prefill_macs_per_sample():,.0f} | {self.prefill_flops / per:,.0f} |",
        ]
        for index, (macs, positions) in enumerate(zip(self.decode_macs, self.contexts(), strict=True), start=1):
            lines.append(
                f"| decode {index} | {positions} | {macs:,} | {macs / per:,.0f} | {flops_from_macs(macs) / per:,.0f} |"
            )
        lines.append(
            f"| **total** | | {self.total_macs:,} | {self.total_macs_per_sample():,.0f} | "
            f"{self.total_flops / per:,.0f} |"
        )
        per_token = self.macs_per_new_token()
        if per_token is not None:
            lines += ["", f"Decode per new token: {per_token:,.1f} MACs ({flops_from_macs(per_token):,.1f} FLOPs)."]
        if self.uncounted:
            listed = ", ".join(f"{u.operator} in {u.module or '<root>'} ({u.calls}x)" for u in self.uncounted)
            lines += ["", f"Uncounted (no formula): {listed}."]
        return "\n".join(lines)

    def statement(self) -> str:
        """A paste-ready sentence for a paper: prefill and per-token decode MACs and FLOPs per sample, the context
        range, what was counted and the tool."""
        per = max(self.batch_size, 1)
        prefill = self.prefill_macs_per_sample()
        encoder = " (encoder and first decoder step)" if self.encoder_decoder else ""
        text = (
            f"Generating {self.new_tokens} new tokens per sample greedily with {self.model} (batch {self.batch_size}"
            f"{', ' + self.attention + ' attention' if self.attention else ''}) costs, per sample: prefill "
            f"{human_count(prefill, 'MACs')} ({human_count(2 * prefill, 'FLOPs')}; {round(prefill):,} MACs){encoder} "
            f"for a {self.prompt_tokens}-token prompt"
        )
        per_token = self.macs_per_new_token()
        if per_token is not None:
            contexts = self.contexts()
            low, high = min(self.decode_macs) / per, max(self.decode_macs) / per
            where = "decoder positions" if self.encoder_decoder else "positions"
            text += (
                f"; decode {human_count(per_token, 'MACs')} ({human_count(flops_from_macs(per_token), 'FLOPs')}) "
                "per new token "
                f"at context {contexts[0]}..{contexts[-1]} {where} ({round(low):,} to {round(high):,} MACs a step)"
            )
        total = self.total_macs_per_sample()
        text += f"; {human_count(total, 'MACs')} ({human_count(2 * total, 'FLOPs')}) in all."
        if self.tokens is not None and self.tokens != self.batch_size * self.prompt_tokens:
            text += (
                f" The batch holds {self.tokens:,} real prompt tokens of {self.batch_size * self.prompt_tokens:,} "
                "positions (padding is computed and counted)."
            )
        torch_version = self.versions.get("torch", "?")
        text += (
            f" Counted with lightning-flops {self.versions.get('lightning_flops', '?')} (torch {torch_version}'s "
            "FlopCounterMode plus its formulas for fused kernels, FLOPs = 2 x MACs), split at every forward of the "
            "model; norms, activations and softmax count 0."
        )
        if self.uncounted:
            names = sorted({u.operator for u in self.uncounted})
            text += f" Not counted (no formula): {', '.join(names)}."
        return text

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with derived FLOPs and per-token values for readers without lightning-flops."""
        data = asdict(self)
        data["decode_macs"] = list(self.decode_macs)
        data["uncounted"] = [asdict(u) for u in self.uncounted]
        data["total_macs"] = self.total_macs
        data["prefill_flops"] = self.prefill_flops
        data["decode_flops"] = list(self.decode_flops)
        data["total_flops"] = self.total_flops
        data["macs_per_new_token"] = self.macs_per_new_token()
        data["units"] = "counts are per whole batch (batch_size samples); macs = multiply-accumulates; flops = 2 * macs"
        return data

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise to JSON text (exact integers)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> GenerationReport:
        """Build a report from :meth:`to_dict` output; :class:`ReportFormatError` names the first bad field."""
        if not is_generation_report(data):
            raise ReportFormatError('not a generation report: `report_type` must be "generation"')
        version = data.get("schema_version")
        if not _is_int(version):
            raise ReportFormatError("`schema_version` is missing or not an integer: not a lightning-flops report")
        if version > GENERATION_SCHEMA_VERSION:
            raise ReportFormatError(
                f"generation report schema_version {version} is newer than this lightning-flops reads "
                f"({GENERATION_SCHEMA_VERSION}): upgrade lightning-flops"
            )
        limit = f"an int from 0 to 1e{round(math.log10(MAX_COUNT))}"  # per-sample means are floats: no overflow
        for name in ("batch_size", "prompt_tokens", "new_tokens", "prefill_macs"):
            if not _is_count(data.get(name)):
                raise ReportFormatError(f"malformed generation report: `{name}` must be {limit}")
        for name in ("tokens", "params"):
            if data.get(name) is not None and not _is_count(data[name]):
                raise ReportFormatError(f"malformed generation report: `{name}` must be null or {limit}")
        decode = data.get("decode_macs")
        if not isinstance(decode, list) or not all(_is_count(m) for m in decode):
            raise ReportFormatError(f"malformed generation report: `decode_macs` must be a list, each {limit}")
        if not isinstance(data.get("model"), str) or not isinstance(data.get("attention", ""), str):
            raise ReportFormatError("malformed generation report: `model` and `attention` must be strings")
        if not isinstance(data.get("encoder_decoder", False), bool):
            raise ReportFormatError("malformed generation report: `encoder_decoder` must be true or false")
        try:
            known = {f.name for f in fields(cls)}
            kwargs = {k: v for k, v in data.items() if k in known}
            kwargs.update(
                decode_macs=tuple(int(m) for m in decode),
                uncounted=tuple(Uncounted.from_data(u) for u in data.get("uncounted", ())),
                generate_kwargs={str(k): str(v) for k, v in data.get("generate_kwargs", {}).items()},
                versions={str(k): str(v) for k, v in data.get("versions", {}).items()},
            )
            return cls(**kwargs)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ReportFormatError(f"malformed generation report: {type(err).__name__}: {err}") from err

    @classmethod
    def from_json(cls, text: str) -> GenerationReport:
        """Parse :meth:`to_json` output."""
        return cls.from_dict(parse_json(text))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_int(value) and 0 <= value <= MAX_COUNT
